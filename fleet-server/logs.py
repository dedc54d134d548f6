"""Logging for the fleet server: one handler for our loggers, uvicorn's, alembic's and aiomqtt's.

The record format is the one every Polewatch process uses (polewatch.logs): one JSON object per
line when stderr is not a terminal (systemd, containers, CI: a log shipper reads it), short human
lines when it is. Structured fields go through `extra=` (`log.warning("rejected message",
extra={"reason": r})`) and become JSON keys, so a collector can count rejections by reason.

What this module adds for the server: uvicorn's loggers are routed into the same handler (uvicorn
would otherwise install its own, unstructured ones), and uvicorn's ANSI-coloured duplicate of each
message is dropped from the structured fields.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from polewatch.logs import HumanFormatter, JsonFormatter

QUIET = ("uvicorn.access", "httpx", "mqtt", "alembic.runtime.migration")


class _DropUvicornColour(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def setup_logging(
    level: str | int = "INFO", *, stream: TextIO | None = None, json_lines: bool | None = None
) -> logging.Handler:
    """Route every logger to one handler on `stream` (stderr); JSON unless it is a terminal.

    Returns the handler, so an embedding process (or a test) can remove it again.
    """
    stream = stream if stream is not None else sys.stderr
    if json_lines is None:
        json_lines = not (hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else HumanFormatter())
    handler.addFilter(_DropUvicornColour())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    # Per-request and per-packet lines drown the ones an operator needs; DEBUG still shows them.
    if root.level > logging.DEBUG:
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
    return handler
