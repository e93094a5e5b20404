"""Protocol errors.

Two kinds of rejection (house style): :class:`Reject` is provable misbehaviour that feeds
evidence, trust and slashing; :class:`Ignore` is late, duplicate, unknown or harmless input
that carries no penalty. Input that cannot even be parsed is :class:`Malformed`.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised on peer input."""


class Malformed(ProtocolError):
    """The message cannot be parsed or violates a structural bound (size, shape, range)."""


class BadSignature(ProtocolError):
    """A signature does not verify under the key the message names."""


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
