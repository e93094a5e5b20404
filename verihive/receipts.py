"""Receipt files: proto3 JSON of ``verihive.v1.Receipt``, canonically serialised. [RECEIPT.3]

Canonical form is ``json.dumps(obj, sort_keys=True, separators=(",", ":"))`` plus a newline.
A file that is not byte-identical to the re-serialisation of what it parses to is rejected, so
no byte of a receipt can change without failing the check.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from bft.errors import Malformed
from proto import verihive_pb2 as pb

MAX_RECEIPT_BYTES = 16 << 20


def receipt_to_obj(receipt: pb.Receipt) -> dict[str, Any]:
    """Return the proto3 JSON object of ``receipt``."""
    obj: dict[str, Any] = json_format.MessageToDict(receipt, preserving_proto_field_name=True)
    return obj


def receipt_to_json(receipt: pb.Receipt) -> str:
    """Return the canonical JSON text of ``receipt``."""
    return json.dumps(receipt_to_obj(receipt), sort_keys=True, separators=(",", ":")) + "\n"


def receipt_from_json(data: bytes) -> pb.Receipt:
    """Return the receipt in ``data``; raise :class:`Malformed` unless canonical."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise Malformed(f"receipt larger than {MAX_RECEIPT_BYTES} bytes")
    try:
        obj = json.loads(data.decode("utf-8"))
        receipt = json_format.ParseDict(obj, pb.Receipt())
    except (UnicodeDecodeError, ValueError, json_format.ParseError) as exc:
        raise Malformed(f"receipt is not valid receipt JSON: {exc}") from exc
    if receipt_to_json(receipt).encode() != data:
        raise Malformed("receipt is not in canonical form (bytes differ from re-serialisation)")
    return receipt
