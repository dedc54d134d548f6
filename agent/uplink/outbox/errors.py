"""Why the outbox refuses or degrades: the errors callers see and the two the writer handles itself."""

from __future__ import annotations

from typing import Literal

StorageState = Literal["ok", "disk_full", "read_only", "unavailable"]


class OutboxError(RuntimeError):
    """The outbox cannot do what was asked; the text says why. Nothing that was accepted is lost."""


class OutboxClosed(OutboxError):
    """The outbox was closed; nothing more can be put into it."""


class _StorageError(Exception):
    """The disk cannot be written (full, read-only, I/O error): the outbox degrades to memory."""

    def __init__(self, state: StorageState, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.detail = detail


class _Damaged(Exception):
    """The database file is not a sound SQLite database."""
