"""The outbox's hard disk cap: what is given up, in which order, and that it is counted and reported."""

from __future__ import annotations

import asyncio
from pathlib import Path

from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.priority import EVICTION_ORDER, Priority
from support.outbox import alert, body_of, open_outbox, telemetry

CAP = 512 * 1024


def _stored(box: Outbox) -> dict[Priority, list[int]]:
    """Sequence numbers waiting in the outbox, per class, oldest first."""
    by_class: dict[Priority, list[int]] = {p: [] for p in Priority}
    for pending in box.take(1_000_000):
        by_class[pending.priority].append(pending.seq)
    return by_class


def _files(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


async def test_eviction_order_is_telemetry_snapshots_health_events_then_oldest_alerts(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    box = open_outbox(db, max_bytes=CAP)
    put: dict[Priority, list[int]] = {p: [] for p in Priority}

    # 40 rounds of every class, interleaved: well under the cap.
    for n in range(40):
        for p in EVICTION_ORDER:
            accepted = await box.put(body_of(p, n), priority=p)
            assert accepted.status == "stored"
            put[p].append(accepted.seq)
    assert box.status().evicted.model_dump() == dict.fromkeys(("telemetry", "snapshot", "health_event", "alert"), 0)

    # Then alerts only, about twice the cap of them.
    samples = []
    for n in range(100):
        accepted_many = await box.put_many([alert(1000 + 20 * n + i) for i in range(20)])
        put[Priority.ALERT] += [a.seq for a in accepted_many]
        status = box.status()
        stored = _stored(box)
        samples.append((status.evicted, {p: len(s) for p, s in stored.items()}))
        assert status.disk_bytes <= CAP, "the outbox files never exceed max_bytes"
        assert _files(db) <= CAP
        for p in Priority:
            # Within a class, what is left is always the newest: the oldest went first.
            assert stored[p] == put[p][len(put[p]) - len(stored[p]) :], p.label
        evicted = status.evicted
        # A class is touched only once every less important class is gone.
        if evicted.snapshot:
            assert not stored[Priority.TELEMETRY]
        if evicted.health_event:
            assert not stored[Priority.SNAPSHOT]
        if evicted.alert:
            assert not stored[Priority.HEALTH_EVENT]

    final = box.status()
    stored = _stored(box)
    assert final.evicted.telemetry == 40 and final.evicted.snapshot == 40 and final.evicted.health_event == 40
    assert final.evicted.alert == len(put[Priority.ALERT]) - len(stored[Priority.ALERT]) > 0
    assert final.pending.alert == len(stored[Priority.ALERT])
    kept = sum(p.cost for p in box.take(100_000))
    assert kept >= 0.8 * box.limits.data_budget, "eviction gives up what it must, not much more"
    # The walk went through every stage, in order, with samples inside each.
    assert any(0 < e.telemetry < 40 for e, _ in samples), "telemetry was given up a few at a time"
    assert any(e.telemetry == 40 and 0 < e.snapshot < 40 for e, _ in samples)
    box.close()

    # The counts are on disk: the first report after a restart still carries them.
    box = open_outbox(db, max_bytes=CAP)
    assert box.status().evicted == final.evicted
    assert box.pending_count() == len(stored[Priority.ALERT])
    box.close()


async def test_alerts_survive_a_flood_of_telemetry(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "outbox.db", max_bytes=CAP)
    alerts = [(await box.put(alert(n))).seq for n in range(100)]
    telemetry_seqs: list[int] = []
    for n in range(150):
        accepted = await box.put_many([telemetry(20 * n + i) for i in range(20)])
        telemetry_seqs += [a.seq for a in accepted]
        assert box.disk_bytes() <= CAP
    stored = _stored(box)
    assert stored[Priority.ALERT] == alerts, "every alert is still there"
    assert stored[Priority.TELEMETRY] == telemetry_seqs[-len(stored[Priority.TELEMETRY]) :]
    status = box.status()
    assert status.evicted.telemetry == 3000 - len(stored[Priority.TELEMETRY]) > 2000
    assert status.evicted.alert == 0
    box.close()


async def test_a_new_message_less_important_than_everything_stored_is_the_one_given_up(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "outbox.db", max_bytes=CAP)
    for n in range(60):
        await box.put_many([alert(20 * n + i) for i in range(20)])
    alerts_before = _stored(box)[Priority.ALERT]
    assert box.status().evicted.alert > 0, "the outbox is full of alerts"

    accepted = await box.put(telemetry(1))
    assert accepted.status == "evicted" and not accepted.durable
    assert _stored(box)[Priority.ALERT] == alerts_before, "no alert made room for telemetry"
    assert box.status().evicted.telemetry == 1

    newer = await box.put(alert(5000))
    assert newer.status == "stored", "a new alert displaces the oldest alert"
    after = _stored(box)[Priority.ALERT]
    assert after[-1] == newer.seq and after[0] > alerts_before[0]
    box.close()


async def test_time_to_live_per_class(tmp_path: Path) -> None:
    now = [1_000_000.0]
    from polewatch.agent.config import OutboxConfig

    box = Outbox(
        tmp_path / "outbox.db",
        "pole-a",
        config=OutboxConfig(group_commit_ms=2, ttl_s={"telemetry": 3600, "snapshot": 7200}),
        clock=lambda: now[0],
    )
    old = [await box.put(body_of(p, 1), priority=p) for p in EVICTION_ORDER]
    now[0] += 3000
    newer = [await box.put(body_of(p, 2), priority=p) for p in EVICTION_ORDER]
    assert box.purge_expired() == 0, "nothing is older than its time-to-live yet"

    now[0] += 1000  # the first telemetry is 4000 s old: past its 3600 s
    assert box.purge_expired() == 1
    now[0] += 4000  # 8000 s: the first snapshot too, and the second telemetry (5000 s)
    assert box.purge_expired() == 2
    left = {p.seq for p in box.take(100)}
    assert left == {a.seq for a in old[2:]} | {a.seq for a in newer[1:]}
    expired = box.status().expired
    assert (expired.telemetry, expired.snapshot, expired.health_event, expired.alert) == (2, 1, 0, 0)
    box.close()


async def test_compaction_gives_the_space_of_a_drained_backlog_back(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    box = open_outbox(db, max_bytes=CAP)
    for n in range(50):
        await box.put_many([alert(20 * n + i) for i in range(20)])
    box.checkpoint()
    full = box.disk_bytes()
    assert full > CAP // 2
    assert not box.compact(), "nothing to give back while the backlog is there"
    box.remove(box.take(100_000))
    assert box.pending_count() == 0
    assert box.compact()
    assert box.disk_bytes() < full // 8
    assert (await box.put(alert(1))).status == "stored", "still works after compaction"
    box.close()


async def test_group_commit_answers_many_producers_with_few_fsyncs(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    box = open_outbox(db, group_commit_ms=20)
    results = await asyncio.gather(*(box.put(alert(n)) for n in range(2000)))
    assert all(r.status == "stored" for r in results)
    assert [r.seq for r in results] == list(range(2000)), "sequence numbers follow the order of the calls"
    assert box.commits <= 60, f"{box.commits} commits for 2000 messages: not grouped"
    box.close()
    assert open_outbox(db).pending_count() == 2000


async def test_bytes_written_are_counted_and_reported(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "outbox.db")
    assert box.status().write_bytes_per_hour is None, "no rate from a single sample"
    before = box.bytes_written()
    results = []
    for n in range(50):
        results += await box.put_many([alert(20 * n + i) for i in range(20)])
    box.remove(box.take(10_000))
    box.checkpoint()
    payload = sum(len(r.message.model_dump_json()) for r in results)
    written = box.bytes_written() - before
    # Every payload reaches the disk at least once (log) and once more at the checkpoint; rows are
    # never rewritten, so the total stays within a small multiple.
    assert payload <= written <= 8 * payload, (payload, written)
    await asyncio.sleep(1.0)
    status = box.status()
    assert status.write_bytes_total == box.bytes_written()
    # Everything was written within the last ~1.2 s: the hourly rate extrapolates it.
    assert status.write_bytes_per_hour is not None
    assert status.write_bytes_per_hour >= written * 3600 / 2.5
    box.close()


async def test_delivered_messages_make_room_before_anything_is_evicted(tmp_path: Path) -> None:
    """Acknowledged rows are deleted lazily (in batches); when room runs short they go first, and
    are not reported as evicted: the server must not be told of losses that did not happen."""
    box = open_outbox(tmp_path / "outbox.db", max_bytes=CAP)
    for n in range(20):  # 400 health reports of ~670 bytes (one camera's connection state each)
        await box.put_many([telemetry(20 * n + i) for i in range(20)])
    assert box.status().evicted.telemetry == 0, "the telemetry alone fits"
    box.discard(box.take(100_000))  # the broker acknowledged everything; no commit asked for
    for n in range(30):
        await box.put_many([alert(20 * n + i) for i in range(20)])
    status = box.status()
    assert status.evicted.telemetry == 0 and status.evicted.alert == 0
    assert status.pending.alert == 600 and status.pending.telemetry == 0
    box.close()
