"""The outbox keeps messages on disk until the broker acknowledged them, and refuses bad input clearly."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from polewatch.agent.config import ConfigError, OutboxConfig, parse_config
from polewatch.agent.uplink.outbox import Outbox, OutboxClosed, OutboxError
from polewatch.agent.uplink.priority import Priority, by_label, priority_of
from polewatch.protocol import Presence, build, decode, encode, topics
from support.outbox import alert


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


def test_every_put_answered_before_a_sigkill_is_on_disk(tmp_path: Path) -> None:
    """Many producers put through group commit while the process is SIGKILLed at a random moment:
    every message whose put had returned (its id printed) must be in the outbox afterwards."""
    db = tmp_path / "outbox.db"
    code = (
        "import asyncio, os, random, signal, threading, time\n"
        "from pathlib import Path\n"
        "from polewatch.agent.config import OutboxConfig\n"
        "from polewatch.agent.uplink.outbox import Outbox\n"
        "from polewatch.protocol import Presence\n"
        f"box = Outbox(Path({str(db)!r}), 'pole-1', config=OutboxConfig(group_commit_ms=5))\n"
        "async def producer(n):\n"
        "    for i in range(100000):\n"
        "        accepted = await box.put(Presence(state='online', reason=f'{n}-{i}'))\n"
        "        assert accepted.durable\n"
        "        os.write(1, (accepted.id + '\\n').encode())\n"
        "def blocking_producer():\n"
        "    for i in range(100000):\n"
        "        os.write(1, (box.add(Presence(state='offline', reason=f's-{i}')).id + '\\n').encode())\n"
        "threading.Thread(target=blocking_producer, daemon=True).start()\n"
        "def kill():\n"
        "    time.sleep(0.4 + random.random() * 0.4)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "threading.Thread(target=kill, daemon=True).start()\n"
        "async def main():\n"
        "    await asyncio.gather(*(producer(n) for n in range(32)))\n"
        "asyncio.run(main())\n"
    )
    answered: list[str] = []
    for _ in range(3):  # three kills, each at another moment of the commit cycle
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=60
        )
        assert result.returncode == -9, result.stderr
        this_run = [line for line in result.stdout.splitlines() if line]
        assert len(this_run) > 100, "the producers got going before the kill"
        answered += this_run
    box = Outbox(db, "pole-1")
    on_disk = {p.message_id for p in box.peek(10_000_000)}
    missing = [m for m in answered if m not in on_disk]
    assert not missing, f"{len(missing)} of {len(answered)} acknowledged messages lost"
    box.close()


def test_bad_input_is_refused_clearly_and_uses_up_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", "pole-1", config=OutboxConfig(max_bytes=256 * 1024))
    first = box.add(Presence(state="online"))
    with pytest.raises(OutboxError, match="larger than the outbox takes"):
        box.add(Presence(state="online", reason="x" * 200_000))
    with pytest.raises(TypeError, match="not a message body"):
        box.add("hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing to put"):
        asyncio.run(box.put_many([]))
    second = box.add(Presence(state="online"))
    assert second.seq == first.seq + 1, "a refused message takes no sequence number"
    assert box.pending_count() == 2
    box.close()
    with pytest.raises(OutboxClosed):
        box.add(Presence(state="online"))


def test_unknown_priority_class_and_kind_are_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"'snapshots'.*telemetry, snapshot, health_event, alert"):
        by_label("snapshots")
    with pytest.raises(ValueError, match="'snapshot_jpeg' has no outbox priority class"):
        priority_of("snapshot_jpeg")
    assert priority_of("camera_health").label == "health_event" and priority_of("rule_event").label == "alert"
    with pytest.raises(ConfigError, match=r"outbox\.ttl_s\.alerts"):
        parse_config({"device_id": "pole-1", "state_dir": "/tmp/x", "mqtt": {"host": "h"},
                      "cameras": [{"id": "c", "url": "rtsp://h/"}], "outbox": {"ttl_s": {"alerts": 60}}})


def test_a_second_agent_on_the_same_outbox_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", "pole-1")
    box.add(Presence(state="online"))
    with pytest.raises(OutboxError, match="in use by another process"):
        Outbox(tmp_path / "outbox.db", "pole-1")
    assert box.add(Presence(state="online")).durable, "the first one is unaffected"
    box.close()


def test_an_outbox_of_the_first_schema_is_migrated_with_its_messages(tmp_path: Path) -> None:
    """Boxes in the field have the single-table outbox of the first release; nothing in it may be lost."""
    db = tmp_path / "outbox.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(
        "CREATE TABLE outbox (row_id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,"
        " topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO meta (key, value) VALUES ('next_seq', 7);"
    )
    old = [build(Presence(state="online", reason="old"), device_id="pole-1", seq=5),
           build(alert(1), device_id="pole-1", seq=6)]
    for message in old:
        conn.execute("INSERT INTO outbox (message_id, topic, payload) VALUES (?, ?, ?)",
                     (message.id, topics.up("pole-1", message.kind), encode(message)))
    conn.close()

    box = Outbox(db, "pole-1")
    pending = box.peek(10)
    assert [(p.seq, p.priority, p.message_id) for p in pending] == [
        (6, Priority.ALERT, old[1].id), (5, Priority.HEALTH_EVENT, old[0].id)
    ], "alerts first"
    assert [p.payload for p in pending] == [encode(old[1]), encode(old[0])]
    assert box.add(Presence(state="online")).seq == 7, "the sequence carries on"
    box.close()
