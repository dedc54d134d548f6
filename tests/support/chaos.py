"""The fault-injection tests' bookkeeping: what the agent promised, what the server has, what is lost.

Two independent ledgers are compared, so that neither side is trusted on its own word:

- the agent's log: every detection it took ("detection accepted" after the commit, or "detection
  not on disk" while the disk is full), with its message id and sequence number;
- the server's database: stored rows, the sequence-number runs it received and the ranges the
  agent reported as given up; and the agent's outbox file, read after the agent stopped.

A detection is lost when it is neither stored, nor waiting in the outbox, nor given up by policy
(evicted, expired, dropped: in the server's given-up ranges or still in the outbox's ledger). A
duplicate is a second row for one message id, or for one (device, sequence number).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stack import http_json, log_records

MESSAGE_TABLES = ("events", "health_samples", "presence_changes", "camera_health_events", "given_up_reports")
POLICY = ("evicted", "expired", "dropped")


def agent_accepted(log: Path) -> dict[str, int]:
    """message id -> sequence number of every detection the agent took, across its restarts."""
    out: dict[str, int] = {}
    for record in log_records(log):
        if record.get("message") in ("detection accepted", "detection not on disk"):
            out[str(record["message_id"])] = int(record["seq"])
    return out


@dataclass
class Ranges:
    """A set of sequence numbers kept as (first, last) runs."""

    runs: list[tuple[int, int]] = field(default_factory=list)

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and any(first <= seq <= last for first, last in self.runs)


def server_given_up(db: Path, device: str, reasons: tuple[str, ...] = POLICY) -> Ranges:
    con = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(reasons))
        rows = con.execute(
            f"SELECT first, last FROM given_up_ranges WHERE device_id = ? AND reason IN ({marks})", (device, *reasons)
        ).fetchall()
    finally:
        con.close()
    return Ranges([(int(a), int(b)) for a, b in rows])


def stored_ids(db: Path, device: str) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT message_id FROM events WHERE device_id = ?", (device,))}
    finally:
        con.close()


def duplicates(db: Path) -> int:
    """Rows beyond the first for any message id, and for any (device, seq), over every message table."""
    con = sqlite3.connect(db)
    try:
        extra = 0
        for table in MESSAGE_TABLES:
            (by_id,) = con.execute(f"SELECT COUNT(*) - COUNT(DISTINCT message_id) FROM {table}").fetchone()
            extra += int(by_id)
        union = " UNION ALL ".join(f"SELECT device_id, seq FROM {t}" for t in MESSAGE_TABLES)
        (by_seq,) = con.execute(
            f"SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM ({union}) GROUP BY device_id, seq)"
        ).fetchone()
        return extra + int(by_seq)
    finally:
        con.close()


@dataclass
class OutboxLeft:
    """What the stopped agent's outbox still holds: messages waiting, and its ledger."""

    waiting_ids: set[str]
    waiting_seqs: set[int]
    given_up: Ranges
    given_up_all: Ranges


def outbox_left(state_dir: Path) -> OutboxLeft:
    con = sqlite3.connect(state_dir / "outbox.db")
    try:
        waiting = con.execute("SELECT message_id, seq FROM outbox").fetchall()
        ledger = con.execute("SELECT first, last, reason FROM given_up").fetchall()
    finally:
        con.close()
    return OutboxLeft(
        waiting_ids={str(r[0]) for r in waiting},
        waiting_seqs={int(r[1]) for r in waiting},
        given_up=Ranges([(int(a), int(b)) for a, b, reason in ledger if reason in POLICY]),
        given_up_all=Ranges([(int(a), int(b)) for a, b, _ in ledger]),
    )


@dataclass
class Tally:
    scenario: str
    sent: int
    stored: int
    evicted: int
    waiting: int
    lost: list[str]
    dup: int
    unexplained_gaps: list[tuple[int, int]]
    delivery: dict[str, Any]

    def line(self) -> str:
        d = self.delivery
        return (
            f"CHAOS {self.scenario} sent={self.sent} stored={self.stored} evicted={self.evicted} "
            f"waiting={self.waiting} lost={len(self.lost)} dup={self.dup} seqs_received={d.get('received')} "
            f"seqs_given_up={d.get('given_up')} seqs_in_flight={d.get('in_flight')} "
            f"unexplained_gaps={len(self.unexplained_gaps)} given_up_by_class={_compact(d.get('given_up_by_class'))}"
        )


def _minus(first: int, last: int, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """first..last without the numbers in `runs`."""
    parts = [(first, last)]
    for a, b in runs:
        parts = [p for lo, hi in parts for p in ((lo, min(hi, a - 1)), (max(lo, b + 1), hi)) if p[0] <= p[1]]
    return parts


def _compact(by_class: Any) -> str:
    if not by_class:
        return "-"
    return ",".join(f"{c}.{r}:{n}" for c, reasons in sorted(by_class.items()) for r, n in sorted(reasons.items()))


def settled(accepted: dict[str, int], db: Path, device: str) -> bool:
    """Every detection in `accepted` is stored or reported given up by policy."""
    stored = stored_ids(db, device)
    given = server_given_up(db, device)
    return all(mid in stored or seq in given for mid, seq in accepted.items())


def tally(
    scenario: str, *, log: Path, db: Path, state_dir: Path, base: str, token: str, device: str = "pole-a",
    grace_s: float = 15.0,
) -> Tally:
    """Count after the agent has stopped (its outbox is closed) and while the server still runs.

    What the broker acknowledged just before the stop has left the outbox but may not be in the
    server's database yet (its ingest commits in batches): a shortfall is counted again for up to
    `grace_s` before it is reported, so only what stays missing is called lost.
    """
    deadline = time.monotonic() + grace_s
    while True:
        result = _count(scenario, log=log, db=db, state_dir=state_dir, base=base, token=token, device=device)
        if (not result.lost and not result.unexplained_gaps) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def _count(scenario: str, *, log: Path, db: Path, state_dir: Path, base: str, token: str, device: str) -> Tally:
    accepted = agent_accepted(log)
    stored = stored_ids(db, device)
    given = server_given_up(db, device)
    left = outbox_left(state_dir)
    evicted = waiting = 0
    lost: list[str] = []
    n_stored = 0
    for mid, seq in accepted.items():
        if mid in stored:
            n_stored += 1
        elif seq in given or seq in left.given_up:
            evicted += 1
        elif mid in left.waiting_ids:
            waiting += 1
        else:
            lost.append(f"{mid} (seq {seq})")
    delivery = http_json(f"{base}/api/devices/{device}/delivery?limit=5000", token) or {}
    # Every number the server still waits for must be explained by the outbox: waiting there, or in
    # its ledger (given up, or a presence not queued) but not reported yet because the agent stopped.
    unexplained: list[tuple[int, int]] = []
    for gap in delivery.get("gaps", []):
        if gap["status"] != "in_flight":
            continue
        for first, last in _minus(gap["first"], gap["last"], left.given_up_all.runs):
            if last - first > 10_000:  # a jump, not messages: do not walk it number by number
                unexplained.append((first, last))
                continue
            unexplained += [(seq, seq) for seq in range(first, last + 1) if seq not in left.waiting_seqs]
    return Tally(scenario, len(accepted), n_stored, evicted, waiting, lost, duplicates(db), unexplained, delivery)
