"""The outbox keeps messages on disk until the broker acknowledged them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from polewatch.agent.uplink.outbox import Outbox
from polewatch.protocol import Presence, decode, topics


def test_messages_survive_a_reopen_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", "pole-1")
    made = [box.add(Presence(state="online", reason=str(i))) for i in range(5)]
    box.close()

    box = Outbox(tmp_path / "outbox.db", "pole-1")
    pending = box.peek(10)
    assert [p.message_id for p in pending] == [m.id for m in made]
    assert all(p.topic == topics.up("pole-1", "presence") for p in pending)
    assert [decode(p.payload).seq for p in pending] == [0, 1, 2, 3, 4]


def test_removed_rows_are_gone_and_sequence_continues_after_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", "pole-1")
    for _ in range(3):
        box.add(Presence(state="online"))
    box.remove([p.row_id for p in box.peek(2)])
    assert box.pending_count() == 1
    stamped = box.stamp(Presence(state="offline"))
    box.close()

    box = Outbox(tmp_path / "outbox.db", "pole-1")
    assert box.pending_count() == 1
    assert stamped.seq == 3
    assert box.add(Presence(state="online")).seq == 4, "sequence numbers never repeat across restarts"


def test_a_message_is_on_disk_when_add_returns(tmp_path: Path) -> None:
    """A child process adds one message and is SIGKILLed at once: the message must still be there."""
    db = tmp_path / "outbox.db"
    code = (
        "import os, signal\n"
        "from polewatch.agent.uplink.outbox import Outbox\n"
        "from polewatch.protocol import Presence\n"
        f"m = Outbox(__import__('pathlib').Path({str(db)!r}), 'pole-1').add(Presence(state='online'))\n"
        "print(m.id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == -9
    message_id = result.stdout.strip()
    assert [p.message_id for p in Outbox(db, "pole-1").peek(5)] == [message_id]
