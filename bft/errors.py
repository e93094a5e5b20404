"""Protocol errors.

Two kinds of rejection (house style): :class:`Reject` is provable misbehaviour that feeds
evidence, trust and slashing; :class:`Ignore` is late, duplicate, unknown or harmless input
that carries no penalty. Input that cannot even be parsed is :class:`Malformed`. A claim this
node has no means to judge is :class:`CannotJudge`: an abstention, never a finding.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised on peer input."""


class Malformed(ProtocolError):
    """The message cannot be parsed or violates a structural bound (size, shape, range)."""


class BadSignature(ProtocolError):
    """A signature does not verify under the key the message names."""


class NotAdmitted(ProtocolError):
    """The caller is not one this node works for (not an admitted assembler). [ADMIT.1]"""


class Reject(ProtocolError):
    """Provable misbehaviour by the sender (wrong root, wrong computation, equivocation)."""


class Ignore(ProtocolError):
    """Late, duplicate, unknown or irrelevant input; dropped without penalty."""


class NotFound(Ignore):
    """The message refers to something this node does not hold (unknown request)."""


class Unavailable(ProtocolError):
    """This node cannot serve the call right now (not ready, overloaded, peer unreachable)."""


class DeadlineExceeded(ProtocolError):
    """The call arrived after its deadline or a peer did not answer in time."""


class CannotJudge(ProtocolError):
    """This node cannot judge the claim: it holds no model the claim names, or no calibrated
    bands for the executor profile it names. [EVID.3], [CONFIRM.2]

    Neither the peer's fault nor a bug: the node abstains (no confirmation, ``cannot audit``).
    Any other error on the audit path is not an abstention.
    """
