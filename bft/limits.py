"""Structural bounds on peer input, each defined once. [LIMIT.1], [LIMIT.2]

The core's ``validate()`` methods and :mod:`proto.convert` both check against these names; a
violation is :class:`Malformed`. Counts are items, text lengths are code points, and the
network id is measured in UTF-8 bytes ([LIMIT.1]).
"""

from __future__ import annotations

from bft.errors import Malformed

MAX_TOKENS = 8192
"""Tokens in a request (prompt + ``max_new_tokens``) or a commitment; also sampler checks and
the chunks of one layer check."""
MAX_LAYERS = 1024
"""``num_layers``, ``layers_per_verifier`` and layer checks in a vote; tile boundaries."""
MAX_HIDDEN = 65536
"""``hidden_size`` of a commitment."""
MAX_VOCAB = 1 << 24
"""Token ids are below this."""
MAX_LEAVES = 1 << 20
"""Leaves (tiles) of a commitment; tile chunk indices."""
MAX_F = 32
"""Faults a request may tolerate (committee ``3f+1``)."""
PPM = 1_000_000
"""Parts per million: the bound of ``sequence_check_ppm``."""
MAX_EPOCH = (1 << 63) - 1
"""Largest epoch of a request or a validator set."""
MAX_STRING = 256
"""Code points of a short text field (``dtype``, ``backend``, ``settings``)."""
MAX_TEXT = 4 * MAX_STRING
"""Code points of a free text (vote ``reason``, evidence and confirmation ``detail``)."""
MAX_NETWORK_ID_BYTES = 256
"""UTF-8 bytes of a ``network_id`` (at least 1)."""
MAX_VALIDATORS = 1024
"""Members of a validator set; also bounds endorsements, receipt votes and slash confirmations."""
MAX_TRUST = 1_000_000
"""Trust weight of a validator (at least 1)."""
MAX_OPENINGS = 1 << 16
"""Tiles in one ``OpenRequest`` and openings in one ``OpenResponse``."""


def is_valid_network_id(network_id: str) -> bool:
    """Return whether ``network_id`` is 1..``MAX_NETWORK_ID_BYTES`` bytes of UTF-8. [LIMIT.1]"""
    try:
        size = len(network_id.encode())
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        return False
    return 1 <= size <= MAX_NETWORK_ID_BYTES


def check_network_id(network_id: str, what: str = "network_id") -> None:
    """Raise :class:`Malformed` unless ``network_id`` is valid; ``what`` names it. [LIMIT.1]"""
    if not is_valid_network_id(network_id):
        raise Malformed(f"{what} must be 1..{MAX_NETWORK_ID_BYTES} bytes of UTF-8")
