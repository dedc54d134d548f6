"""Log lines for people at a terminal and for machines everywhere else.

A server under systemd or in a container writes to a pipe that a log shipper parses, so there each
record is one JSON object; a developer running it by hand gets short readable lines. Structured
fields go through the standard `extra=` argument (`log.warning("rejected", extra={"reason": r})`)
and come out as JSON keys or as `key=value` suffixes, so call sites never format them by hand.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """`12:00:01 WARNING polewatch.fleet_server.ingest: rejected message reason=not_json ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            suffix = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in extras.items())
            head, sep, tail = line.partition("\n")
            line = f"{head} {suffix}{sep}{tail}"
        return line


def setup_logging(level: str | int = "INFO", *, stream: TextIO | None = None, json_lines: bool | None = None) -> None:
    """Send every logger (ours, uvicorn's, alembic's) through one handler on stderr.

    `json_lines=None` decides by whether the stream is a terminal.
    """
    stream = stream if stream is not None else sys.stderr
    if json_lines is None:
        json_lines = not (hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn installs its own handlers unless told not to; make its loggers defer to ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # paho logs every packet at DEBUG through aiomqtt's logger; keep that out of INFO runs.
    logging.getLogger("mqtt").setLevel(max(root.level, logging.INFO))
