"""Message ids that sort by creation time.

The server deduplicates by message id and operators read ids in logs, so ids must be unique across
boxes without coordination and must sort in the order they were made. UUIDv7 (RFC 9562) gives both;
Python's own `uuid.uuid7` only arrives in 3.14 and the agent must run on 3.10, hence this helper.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_message_id() -> str:
    """Return a new UUIDv7 string, strictly increasing within this process.

    Within one millisecond a 12-bit counter (seeded randomly) keeps ids ordered; if it overflows
    we borrow the next millisecond rather than break the ordering.
    """
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return str(uuid.UUID(int=value))


def message_id_time_ms(message_id: str) -> int:
    """The Unix time in milliseconds that a UUIDv7 id was made at."""
    return uuid.UUID(message_id).int >> 80
