"""The outbox's ledger of given-up sequence numbers, and the `given_up` reports that carry it.

Every number the outbox gives up (evicted, expired, dropped on a full disk, a presence stamp that is
never queued, a damaged file replaced) must end up in a report the broker acknowledged, exactly
once per reason, so the server can tell a gap that stays from messages still on their way.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

from polewatch.agent.config import OutboxConfig
from polewatch.agent.uplink.outbox import SEQ_RESERVE, Accepted, Outbox, ledger_ranges
from polewatch.agent.uplink.priority import Priority
from polewatch.protocol import GivenUpMessage, Presence, encode
from support.filesystems import fill, small_tmpfs
from support.outbox import alert, open_outbox, telemetry

CAP = 256 * 1024


def _seqs(ranges: list[tuple[int, int, str | None, str, int | None]], reason: str, cls: str | None) -> set[int]:
    return {s for first, last, c, r, _ in ranges if r == reason and c == cls for s in range(first, last + 1)}


def test_ledger_ranges_join_runs_per_class_and_reason() -> None:
    entries = [(5, Priority.ALERT, "evicted"), (3, Priority.ALERT, "evicted"), (4, Priority.ALERT, "evicted"),
               (4, Priority.TELEMETRY, "evicted"), (9, Priority.ALERT, "evicted"), (7, None, "outbox_replaced")]
    assert ledger_ranges(entries) == [
        (3, 5, Priority.ALERT, "evicted"),
        (4, 4, Priority.TELEMETRY, "evicted"),
        (7, 7, None, "outbox_replaced"),
        (9, 9, Priority.ALERT, "evicted"),
    ]


async def test_evicted_numbers_are_in_the_ledger_reported_once_and_forgotten_after_the_ack(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "outbox.db", max_bytes=CAP)
    put: dict[Priority, list[int]] = {Priority.TELEMETRY: [], Priority.ALERT: []}
    for n in range(400):  # interleaved, well past the cap: telemetry goes first, then the oldest alerts
        put[Priority.TELEMETRY].append((await box.put(telemetry(n))).seq)
        put[Priority.ALERT] += [a.seq for a in await box.put_many([alert(3 * n + i) for i in range(3)])]
    waiting = {p.seq for p in box.take(1_000_000)}
    status = box.status()
    assert status.evicted.telemetry > 0 and status.evicted.alert > 0
    ledger = box.ledger()
    for cls in (Priority.TELEMETRY, Priority.ALERT):
        gone = set(put[cls]) - waiting
        assert _seqs(ledger, "evicted", cls.label) == gone, cls.label
    assert len(_seqs(ledger, "evicted", "telemetry")) == status.evicted.telemetry
    assert len(_seqs(ledger, "evicted", "alert")) == status.evicted.alert
    # Runs of numbers are one row each (here telemetry splits the alerts' runs of three).
    assert len(ledger) <= 2 * status.evicted.telemetry + 2 < status.evicted.telemetry + status.evicted.alert

    # As many reports as the outbox's largest message allows (a 256 KiB outbox takes 36 KiB messages).
    before = {(f, la, c, r) for f, la, c, r, _ in ledger}
    reports: list[Accepted] = []
    carried: set[tuple[int, int, str | None, str]] = set()
    while not before <= carried:
        report = box.report_given_up(limit=1000)
        assert report is not None and report.status == "stored"
        assert isinstance(report.message, GivenUpMessage)
        assert len(encode(report.message)) <= box.limits.max_message
        ranges = {(r.first, r.last, r.priority, r.reason) for r in report.message.body.ranges}
        assert not ranges & carried, "a range is carried by one report"
        marked = {(f, la, c, r) for f, la, c, r, rs in box.ledger() if rs == report.seq}
        assert marked == ranges, "every range carried is marked as carried"
        carried |= ranges
        reports.append(report)
    assert len(reports) > 1
    # Storing the reports at the cap gave up a few more: those wait for the next report.
    fresh = [row for row in box.ledger() if row[4] is None]
    assert all(row[3] == "evicted" for row in fresh)
    assert {r.seq for r in reports} <= {p.seq for p in box.take(1_000_000) if p.kind == "given_up"}
    second = box.report_given_up(limit=1000)
    assert (second is None) == (not fresh)

    box.remove([r.seq for r in reports])  # the broker acknowledged them: their ranges are done
    assert not any(rs in {r.seq for r in reports} for *_, rs in box.ledger())
    if second is not None:
        box.remove([second.seq])
    assert all(rs is None for *_, rs in box.ledger())
    box.close()


async def test_a_report_given_up_itself_puts_its_ranges_back_and_is_in_the_next_report(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    box = open_outbox(db, max_bytes=CAP)
    await box.put_many([alert(n) for n in range(2000)])  # past the cap: the oldest alerts go
    first = box.report_given_up()
    assert first is not None and first.status == "stored"
    before = box.ledger()
    for n in range(40):  # the report is an alert too: more alerts push it out
        await box.put_many([alert(10_000 + 50 * n + i) for i in range(50)])
    assert first.seq not in {p.seq for p in box.take(1_000_000)}
    after = box.ledger()
    assert all(rs is None for *_, rs in after), "the ranges it carried wait for the next report"
    assert first.seq in _seqs(after, "evicted", "alert"), "the lost report is itself given up"
    assert _seqs(before, "evicted", "alert") <= _seqs(after, "evicted", "alert")
    box.close()
    box = open_outbox(db, max_bytes=CAP)  # the ledger is on disk
    assert box.ledger() == after
    second = box.report_given_up()
    assert second is not None and second.status == "stored"
    box.close()


async def test_presence_stamps_expiry_and_a_replaced_file_are_accounted(tmp_path: Path) -> None:
    now = [1_000_000.0]
    db = tmp_path / "outbox.db"
    box = Outbox(db, "pole-a", config=OutboxConfig(group_commit_ms=2, ttl_s={"telemetry": 60}),
                 clock=lambda: now[0])
    will = box.stamp(Presence(state="offline", reason="connection lost"))
    old = await box.put(telemetry(1))
    now[0] += 120
    assert box.purge_expired() == 1
    ledger = box.ledger()
    assert _seqs(ledger, "not_queued", "health_event") == {will.seq}
    assert _seqs(ledger, "expired", "telemetry") == {old.seq}
    box.close()

    db.write_bytes(b"this is not a database" * 100)  # damaged: moved aside, numbers jump past it
    box = open_outbox(db)
    replaced = [r for r in box.ledger() if r[3] == "outbox_replaced"]
    assert len(replaced) == 1 and replaced[0][0] == 0 and replaced[0][2] is None
    nxt = (await box.put(alert(1))).seq
    assert replaced[0][1] == nxt - 1, "every number below the new start is accounted for"
    box.close()


def _crash_after_puts(db: Path, n: int) -> None:
    """A child process puts `n` alerts and dies without closing the outbox (a power cut)."""
    script = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from pathlib import Path\n"
        "from support.outbox import alert, open_outbox\n"
        "box = open_outbox(Path(sys.argv[1]))\n"
        "for i in range(int(sys.argv[3])):\n"
        "    box.add(alert(i))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db), str(Path(__file__).parents[1]), str(n)], check=True,
                   timeout=60)


def test_after_an_unclean_stop_numbers_restart_past_the_reservation_and_say_so(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    _crash_after_puts(db, 5)
    box = open_outbox(db)
    after = box.add(alert(99))
    nxt = after.seq
    assert nxt >= SEQ_RESERVE, "numbers a crashed run may have sent from memory are not handed out again"
    skipped = [row for row in box.ledger() if row[3] == "skipped"]
    assert skipped == [(5, nxt - 1, None, "skipped", None)]
    assert after.status == "stored"
    box.close()
    # A clean close reserves nothing beyond what was used: the next run carries straight on.
    box = open_outbox(db)
    assert box.add(alert(100)).seq == nxt + 1
    assert [row for row in box.ledger() if row[3] == "skipped"] == skipped
    box.close()


async def test_held_messages_past_the_reservation_wait_for_the_disk(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", 2 * 1024 * 1024) as disk:
        box = open_outbox(disk / "outbox.db", memory_alerts=5000, max_bytes="1MiB")
        first = await box.put(alert(0))
        filler = fill(disk)
        held = await box.put_many([alert(n) for n in range(1, SEQ_RESERVE + 200)])
        assert {a.status for a in held} == {"held"}
        sendable = {p.seq for p in box.take(100_000)}
        assert first.seq in sendable
        assert max(sendable) < first.seq + SEQ_RESERVE, "numbers not reserved on disk are not sent from memory"
        assert len(sendable) > SEQ_RESERVE // 2, "what is reserved still goes out"
        filler.unlink()
        await _writable_again(box)
        assert {p.seq for p in box.take(100_000)} == {first.seq} | {a.seq for a in held}, "on disk: all go out"
        box.close()


async def _writable_again(box: Outbox, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while box.storage_state != "ok":
        assert time.monotonic() < deadline, "the outbox did not write again"
        await asyncio.sleep(0.05)


def test_a_report_never_overtakes_a_message_queued_before_it(tmp_path: Path) -> None:
    """The uplink reads new messages with a cursor per class (everything above the highest number it
    has seen), so within a class a number must never reach the disk after a higher one: a message
    committed behind a report that overtook it would wait for the next session."""
    box = open_outbox(tmp_path / "outbox.db")
    stop = threading.Event()

    def produce(k: int) -> None:
        n = 0
        while not stop.is_set():
            box.add(alert(1000 * k + n))
            n += 1

    def report() -> None:
        while not stop.is_set():
            box.stamp(Presence(state="online", agent_version="test", reason="connected"))  # a ledger entry
            box.report_given_up()

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(3)] + [threading.Thread(target=report)]
    for t in threads:
        t.start()
    cursor, seen, missed = -1, set(), set()
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            fresh = box.take(10_000, after={Priority.ALERT: cursor})
            if fresh:
                seen |= {p.seq for p in fresh}
                cursor = max(cursor, *(p.seq for p in fresh))
            stored = {p.seq for p in box.take(1_000_000) if p.priority == Priority.ALERT}
            missed |= {s for s in stored if s < cursor and s not in seen}
    finally:
        stop.set()
        for t in threads:
            t.join()
    reports = [p for p in box.take(1_000_000) if p.kind == "given_up"]
    box.close()
    assert len(reports) > 10 and len(seen) > 100, "the race must have had a chance"
    assert not missed, f"{len(missed)} committed behind a higher number of their class, e.g. {sorted(missed)[:5]}"
