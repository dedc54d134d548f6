"""What goes through the outbox: a waiting row, the answer to a producer, a number given up.

Kept apart from the machinery: every part of the outbox, the uplink and the tests speak in these.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from polewatch.protocol import V1Message

from ..priority import Priority

AcceptStatus = Literal["stored", "held", "dropped", "evicted"]


# Per-row bytes beside payload, id and kind: SQLite's cell header, the seq key, the other columns.
ROW_OVERHEAD = 24


class Pending(NamedTuple):
    """One message waiting for the broker. `seq` is its sequence number and its key in the outbox.

    (A named tuple, not a dataclass: tens of thousands are made per second at the accept rate goal.)
    """

    seq: int
    priority: Priority
    message_id: str
    kind: str
    topic: str
    payload: bytes
    retain: bool
    created: int  # Unix seconds, for the time-to-live
    cost: int  # roughly the bytes this row takes in the database (see `row_cost`)

    @property
    def row_id(self) -> int:
        """The key to pass to `remove` (the sequence number; kept under this name for callers)."""
        return self.seq


def row_cost(payload: bytes, message_id: str, kind: str) -> int:
    return len(payload) + len(message_id) + len(kind) + ROW_OVERHEAD


class Accepted(NamedTuple):
    """What became of one message handed to `put`/`add`.

    stored: committed to disk (durable). held: kept in memory only, because the disk cannot be written
    right now (it goes to disk once it can). evicted: given up at once because the outbox is full of
    more important messages. dropped: given up because the disk cannot be written and the memory
    allowance is used up (or the class is not kept in memory).
    """

    message: V1Message
    status: AcceptStatus

    @property
    def durable(self) -> bool:
        return self.status == "stored"

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def seq(self) -> int:
        return self.message.seq


# (sequence number, class or None when unknown, reason) of one message given up.
_GivenUp = tuple[int, "Priority | None", str]
