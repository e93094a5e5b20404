"""What a node believes about the others: today the tombstones, the penalties and the next
validator set they imply (:mod:`trust.tombstones`, [SLASH.3]-[SLASH.5]).

It consumes the records of :mod:`slashing`, which anyone re-checks; the reputation ledger, the
trust function, probation and routing come with issue [ledger].
"""
