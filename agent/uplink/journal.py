"""Which commands this box has seen, and what came of each, kept across restarts.

A command is delivered at least once (QoS 1, and the server may retry), but must run at most once:
"restart camera 2" arriving twice after a reconnect must not restart it twice, and the server must
get the same answer both times. So each command id is written down as `running` before the command
runs and with its outcome after; a command found `running` after a restart was cut short by the
restart and is answered `failed`, never run again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from polewatch.protocol import CommandAck

from ..state_files import move_aside, read_json, write_json

JOURNAL_FILE = "commands.json"
# Ids remembered: far more than a server retries within a broker session's lifetime.
KEEP = 1000


class CommandJournal:
    def __init__(self, state_dir: Path, keep: int = KEEP) -> None:
        self.path = state_dir / JOURNAL_FILE
        self.keep = keep
        self._entries: dict[str, dict[str, Any]] = {}
        raw = read_json(self.path)
        if isinstance(raw, dict) and all(isinstance(v, dict) for v in raw.values()):
            self._entries = raw
        elif raw is not None:
            move_aside(self.path, "not a command journal")

    def outcome(self, command_id: str) -> CommandAck | None:
        """The recorded outcome of a command seen before; a run cut short by a restart is a failure."""
        entry = self._entries.get(command_id)
        if entry is None:
            return None
        if entry.get("status") == "running":
            return CommandAck(
                command_id=command_id,
                name=entry.get("name"),
                status="failed",
                reason="the agent stopped while this command ran; it is not run again",
            )
        try:
            return CommandAck.model_validate({**entry["ack"], "command_id": command_id})
        except (KeyError, TypeError, ValueError):
            return CommandAck(
                command_id=command_id, status="failed", reason="seen before, but its recorded outcome is unreadable"
            )

    def running(self, command_id: str, name: str) -> None:
        self._entries[command_id] = {"status": "running", "name": name, "at": time.time()}
        self._save()

    def finished(self, ack: CommandAck) -> None:
        self._entries[ack.command_id] = {
            "status": ack.status,
            "at": time.time(),
            "ack": ack.model_dump(mode="json", exclude={"command_id", "repeated"}),
        }
        self._save()

    def _save(self) -> None:
        if len(self._entries) > self.keep:
            newest = sorted(self._entries.items(), key=lambda kv: float(kv[1].get("at", 0)))[-self.keep :]
            self._entries = dict(newest)
        write_json(self.path, self._entries)

    def __len__(self) -> int:
        return len(self._entries)
