"""Small JSON state files the agent must never find half-written (applied config, command journal).

A power cut can come at any moment on a pole: a file is written beside its final name, fsync'd and
renamed over it (atomic on POSIX), and the folder is fsync'd so the rename itself survives. A file
that still cannot be read (a damaged card) is moved aside with a log line, never trusted and never
fatal: the agent then starts from its local config file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("polewatch.agent.state")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader, or a reboot, sees either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True, default=str).encode())


def read_json(path: Path) -> Any | None:
    """The file's JSON value; None when it does not exist or is damaged (then moved aside, logged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("state file cannot be read; starting without it", extra={"path": str(path), "error": str(exc)})
        return None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        move_aside(path, f"not JSON: {exc}")
        return None


def move_aside(path: Path, why: str) -> None:
    aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
    try:
        os.replace(path, aside)
    except OSError:
        aside = path
    log.error("state file is damaged; moved aside and ignored", extra={"path": str(aside), "problem": why})
