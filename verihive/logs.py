"""A node's log: one JSON object per line, or plain text when a terminal is attached. [NODE.5]

Each JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``node`` (role and short node id),
``logger``, ``event`` (the message) and, where the call site names them, ``request_id`` and
``peer``; ``error`` holds the traceback of a logged exception.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import TextIO

FIELDS = ("request_id", "peer")
"""Extra fields a call site may pass (``log.info(..., extra={"request_id": ...})``)."""


class JsonLines(logging.Formatter):
    """Format each record as one JSON object naming ``node``."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as one line of JSON."""
        obj: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                obj[name] = value.hex() if isinstance(value, bytes) else value
        if record.exc_info:
            obj["error"] = self.formatException(record.exc_info)
        return json.dumps(obj, sort_keys=False)


def configure_logging(
    node: str, verbose: bool = False, stream: TextIO | None = None, as_json: bool | None = None
) -> None:
    """Send this process's log to ``stream`` (stderr): JSON lines unless it is a terminal."""
    stream = stream or sys.stderr
    if as_json is None:
        as_json = not stream.isatty()
    handler = logging.StreamHandler(stream)
    if as_json:
        handler.setFormatter(JsonLines(node))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
