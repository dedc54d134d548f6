"""The outbox when the disk fails: full, read-only, or a damaged file. The agent keeps working.

Disk full is a real tmpfs of 2 MiB filled to the last byte (ENOSPC from the kernel); read-only is a
real read-only bind mount; damage is garbage or a truncated file. See support/filesystems.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from polewatch.agent.health import HealthProbe
from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.priority import Priority
from polewatch.agent.uplink.session import Uplink
from polewatch.protocol import HealthMessage, build, decode, encode
from support.brokers import BrokerProcess
from support.filesystems import bind_mount, fill, set_read_only, small_tmpfs
from support.outbox import alert, listening, mqtt_config, open_outbox, running, telemetry


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", 2 * 1024 * 1024) as mount:
        yield mount


async def _until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_disk_full_holds_alerts_in_memory_reports_it_and_recovers_by_itself(tiny_disk: Path) -> None:
    db = tiny_disk / "outbox.db"
    box = open_outbox(db, memory_alerts=5, max_bytes="1MiB")
    stored = [await box.put(alert(n)) for n in range(3)]
    assert all(a.durable for a in stored)

    filler = fill(tiny_disk)
    during = [await box.put(alert(100 + n)) for n in range(8)]
    reports = [await box.put(telemetry(n)) for n in range(3)]

    # The producers were answered, honestly: in memory, not on disk.
    assert [a.status for a in during] == ["held"] * 8
    assert [a.status for a in reports] == ["held"] * 3
    status = box.status()
    assert status.storage == "disk_full"
    assert "full" in (status.last_error or "")
    assert status.held_in_memory == 5 + 1, "the newest 5 alerts and the latest health report"
    assert (status.dropped.alert, status.dropped.telemetry) == (3, 2)
    # What is on disk still reads, so it keeps going out; the held messages go out beside it.
    waiting = box.take(100)
    assert [p.seq for p in waiting if p.priority == Priority.ALERT] == [a.seq for a in stored + during[3:]]
    assert [p.seq for p in waiting if p.priority == Priority.TELEMETRY] == [reports[-1].seq]

    filler.unlink()
    await _until(lambda: box.storage_state == "ok")
    status = box.status()
    assert status.held_in_memory == 0 and status.pending.alert == 8 and status.pending.telemetry == 1
    assert (await box.put(alert(999))).status == "stored"
    box.close()

    box = open_outbox(db)
    on_disk = {p.seq for p in box.take(100)}
    assert {a.seq for a in stored + during[3:] + reports[-1:]} <= on_disk, "held messages reached the disk"
    status = box.status()
    assert (status.dropped.alert, status.dropped.telemetry) == (3, 2), "the losses are on record"
    box.close()


@pytest.mark.mqtt
async def test_alerts_held_in_memory_still_reach_the_broker(tiny_disk: Path, mosquitto_broker: BrokerProcess) -> None:
    box = open_outbox(tiny_disk / "outbox.db", max_bytes="1MiB")
    filler = fill(tiny_disk)
    held = [await box.put(alert(n)) for n in range(5)]
    assert [a.status for a in held] == ["held"] * 5
    uplink = Uplink(mqtt_config(mosquitto_broker), box, device_id="pole-a", agent_version="test")
    async with listening(mosquitto_broker) as arrivals, running(uplink):
        await _until(lambda: {a.id for a in held} <= set(arrivals.ids()), 15)
        await _until(lambda: box.pending_count() == 0)
        assert box.storage_state == "disk_full", "delivered although the disk never came back"
    filler.unlink()
    box.close()


async def test_a_read_only_disk_at_start_keeps_the_agent_going_until_it_is_writable(tmp_path: Path) -> None:
    real = tmp_path / "state"
    box = open_outbox(real / "outbox.db")
    before = [box.add(alert(n)) for n in range(3)]
    box.close()

    with bind_mount(real, tmp_path / "view") as view:
        set_read_only(view, True)
        box = open_outbox(view / "outbox.db")
        assert box.status().storage == "read_only", "found out at start, not at the first event"
        held = [await box.put(alert(10 + n)) for n in range(4)]
        assert [a.status for a in held] == ["held"] * 4
        assert held[0].seq == before[-1].seq + 1, "sequence numbers carry on from the read-only file"
        assert [p.seq for p in box.take(100)] == [a.seq for a in held]

        set_read_only(view, False)
        await _until(lambda: box.storage_state == "ok")
        assert (await box.put(alert(99))).durable
        box.close()

    box = open_outbox(real / "outbox.db")
    assert sorted(p.seq for p in box.take(100)) == list(range(8)), "nothing lost, nothing numbered twice"
    box.close()


def test_garbage_instead_of_a_database_is_moved_aside_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    garbage = os.urandom(64 * 1024)
    db.write_bytes(garbage)
    now = time.time()

    with caplog.at_level(logging.ERROR, logger="polewatch.agent.outbox"):
        box = open_outbox(db)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == garbage, "the damaged file is kept for a post-mortem"
    assert any("damaged" in r.getMessage() for r in caplog.records)
    accepted = box.add(alert(1))
    assert accepted.durable
    # Nothing readable said where the sequence was: it jumps past any number the old file can have had.
    assert accepted.seq >= int(now * 1000)
    status = box.status()
    assert status.corrupt_files == 1

    # The health report carries it to the server.
    health = HealthProbe("test", tmp_path).snapshot([], inference_ms=None, detect_fps=None, outbox=status)
    wire = decode(encode(build(health, device_id="pole-a", seq=1)))
    assert isinstance(wire, HealthMessage)
    assert wire.body.outbox is not None and wire.body.outbox.corrupt_files == 1
    box.close()


def test_a_truncated_database_is_detected_at_start(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    box = open_outbox(db)
    for n in range(10):
        asyncio.run(box.put_many([alert(50 * n + i) for i in range(50)]))
    box.close()
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.truncate(size // 2)

    box = Outbox(db, "pole-a")
    assert any(p.name.startswith("outbox.db.corrupt-") for p in tmp_path.iterdir())
    assert box.pending_count() == 0
    assert box.add(alert(1)).seq >= 500, "no sequence number of the lost file is handed out again"
    assert box.status().corrupt_files == 1
    box.close()
