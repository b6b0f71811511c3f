"""Logging set-up for the daemons: plain text or one JSON object per line.

Messages follow ``"<event> key=value key=value"`` with ``%s`` arguments, so the JSON
formatter can split them into an ``event`` name and fields that machines can filter.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_FIELD = re.compile(r"(\w+)=(\S+)")


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, event and fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, _, rest = message.partition(" ")
        document: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        document.update(dict(_FIELD.findall(rest)))
        document["message"] = message
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, sort_keys=False)


def configure(level: int = logging.INFO, *, json_format: bool = False) -> None:
    """Send the package's logs to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ztfm_chain").setLevel(level)
