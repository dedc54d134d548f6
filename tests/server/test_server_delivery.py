"""Delivery accounting over a real Mosquitto: sequence numbers received in any order and twice, ranges
the device gave up, gaps still in flight, clock skew from a live presence, and the API that shows it."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from polewatch.fleet_server.delivery import GapOut, missing_runs, split_gaps
from polewatch.protocol import (
    Box,
    GivenUp,
    GivenUpRange,
    OutboxStatus,
    Presence,
    Snapshot,
    V1Message,
    build,
    encode,
)
from support.brokers import BrokerProcess
from support.server import add_token, bearer, health, live_server, pole, settings_for, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.server]

DEVICE = "pole-c"


def _detection(seq: int) -> V1Message:
    from support.server import detection

    message = detection(DEVICE, event_id=f"trk-{seq}")
    return message.model_copy(update={"seq": seq})


def _given_up(seq: int, *ranges: tuple[int, int, str | None, str]) -> V1Message:
    body = GivenUp(
        ranges=[
            GivenUpRange.model_validate({"first": f, "last": la, "priority": p, "reason": r}) for f, la, p, r in ranges
        ]
    )
    return build(body, device_id=DEVICE, seq=seq)


def _presence(seq: int, *, skew_s: float = 0.0, state: str = "online", reason: str = "connected") -> V1Message:
    message = build(Presence(state=state, reason=reason, agent_version="0.1.0"), device_id=DEVICE, seq=seq)
    return message.model_copy(update={"sent_at": message.sent_at - timedelta(seconds=skew_s)})


def test_gaps_are_split_into_given_up_and_in_flight() -> None:
    missing = missing_runs([(0, 1), (3, 3), (9, 12)], 0, 15)
    assert missing == [(2, 2), (4, 8), (13, 15)]
    gaps = split_gaps(missing, [(5, 6, "alert", "evicted"), (6, 7, "telemetry", "expired"), (14, 20, None, "dropped")])
    assert gaps == [
        GapOut(first=2, last=2, status="in_flight"),
        GapOut(first=4, last=4, status="in_flight"),
        GapOut(first=5, last=6, status="given_up", priority="alert", reason="evicted"),
        GapOut(first=7, last=7, status="given_up", priority="telemetry", reason="expired"),
        GapOut(first=8, last=8, status="in_flight"),
        GapOut(first=13, last=13, status="in_flight"),
        GapOut(first=14, last=15, status="given_up", priority=None, reason="dropped"),
    ]


async def test_delivery_accounting_out_of_order_duplicates_reports_and_clock(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    db = tmp_path / "fleet.db"
    status = OutboxStatus(evicted={"telemetry": 1, "alert": 2})
    report = health(DEVICE).model_copy(update={"seq": 9})
    report = report.model_copy(update={"body": report.body.model_copy(update={"outbox": status})})
    messages = {s: _detection(s) for s in (1, 3, 4, 5, 8)}
    first_report = _given_up(
        10, (2, 2, "telemetry", "evicted"), (6, 7, "alert", "evicted"), (8, 8, "health_event", "not_queued")
    )
    async with (
        live_server(settings_for(mosquitto_broker, db)) as base,
        pole(mosquitto_broker, DEVICE) as pc,
        httpx.AsyncClient(base_url=base, headers=bearer(add_token(db, "ops"))) as http,
    ):

        async def delivery() -> dict[str, Any]:
            response = await http.get(f"api/devices/{DEVICE}/delivery")
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result

        # Out of order, one duplicate, 4 held back, 2/6/7 never sent.
        for message in (
            messages[5],
            messages[3],
            report,
            messages[3],
            _presence(0, skew_s=30),
            messages[1],
            messages[8],
            first_report,
        ):
            await pc.send(message)
        await wait_for(lambda: _count(db, "given_up_reports") == 1, what="the report stored")
        got = await delivery()
        assert got["received"] == 7  # 0 1 3 5 8 9 10
        assert got["first_seq"] == 0 and got["highest_seq"] == 10
        assert got["in_flight"] == 1 and got["given_up"] == 3
        assert got["given_up_by_class"] == {"telemetry": {"evicted": 1}, "alert": {"evicted": 2}}
        assert [(g["first"], g["last"], g["status"]) for g in got["gaps"]] == [
            (2, 2, "given_up"),
            (4, 4, "in_flight"),
            (6, 7, "given_up"),
        ]
        assert got["outbox"]["evicted"]["alert"] == 2
        assert got["clock"]["flagged"] is True and 29 < got["clock"]["skew_s"] < 35

        # The missing one arrives late; the same report comes twice (a lost ack), and a later one
        # repeats a range; a malformed report is refused and harms nothing.
        await pc.send(messages[4])
        await pc.send(first_report)
        await pc.send(_given_up(11, (6, 7, "alert", "evicted")))
        await pc.raw(
            "given_up",
            json.dumps(
                {
                    **json.loads(encode(_given_up(12, (1, 1, None, "dropped")))),
                    "body": {"ranges": [{"first": 5, "last": 2, "reason": "evicted"}]},
                }
            ).encode(),
        )
        await pc.send(_presence(13, skew_s=0))  # the clock was set right
        await pc.send(_presence(14, state="offline", reason="shutdown", skew_s=600))  # not a measurement
        await wait_for(lambda: _count(db, "given_up_reports") == 2, what="the second report stored")
        await wait_for(lambda: _max_seq(db) >= 14, what="the last presence stored")
        got = await delivery()
        assert got["in_flight"] == 1, "12 (the malformed report) never arrived"
        assert got["given_up"] == 3 and got["reports"] == 2
        assert [(g["first"], g["last"], g["status"]) for g in got["gaps"]] == [
            (2, 2, "given_up"),
            (6, 7, "given_up"),
            (12, 12, "in_flight"),
        ]
        assert got["clock"]["flagged"] is False and abs(got["clock"]["skew_s"]) < 5
        stats = (await http.get("api/ingest/stats")).json()
        assert stats["rejected_by_reason"] == {"invalid_given_up": 1}
        assert stats["duplicates"] == 2

        missing = await http.get("api/devices/pole-z/delivery")
        assert missing.status_code == 404 and "pole-z" in missing.json()["detail"]

    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM events").fetchone() == (5, 5)
    assert con.execute("SELECT first, last FROM received_seq_ranges ORDER BY first").fetchall() == [
        (0, 1),
        (3, 5),
        (8, 11),
        (13, 14),
    ], "runs merged whatever the order of arrival"
    assert con.execute("SELECT COUNT(*) FROM given_up_ranges").fetchone() == (3,), "each range stored once"


async def test_a_snapshot_between_detections_counts_as_received(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    db = tmp_path / "fleet.db"
    # Every v1 up kind is stored now (snapshots as alert evidence); the accounting counts them all alike.
    rule = Snapshot(
        camera_id="cam1", event_id="t1", phase="start", label="person", score=0.9,
        box=Box(x1=0.1, y1=0.1, x2=0.2, y2=0.2), frame_time=datetime.now(timezone.utc), width=64, height=48,
        jpeg=base64.b64encode(b"\xff\xd8\xff\xd9").decode(),
    )  # fmt: skip
    async with live_server(settings_for(mosquitto_broker, db)) as base, pole(mosquitto_broker, DEVICE) as pc:
        await pc.send(_detection(0))
        await pc.send(build(rule, device_id=DEVICE, seq=1))
        await pc.send(_detection(2))
        await wait_for(lambda: _max_seq(db) >= 2, what="both detections")
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=base, headers=bearer(add_token(db, "ops"))) as http:
            got = (await http.get(f"api/devices/{DEVICE}/delivery")).json()
            stats = (await http.get("api/ingest/stats")).json()
    assert (got["received"], got["in_flight"], got["gaps"]) == (3, 0, [])
    assert stats["rejected_by_reason"] == {} and stats["accepted_by_kind"]["snapshot"] == 1


def _count(db: Path, table: str) -> int:
    try:
        return int(sqlite3.connect(db).execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return 0


def _max_seq(db: Path) -> int:
    try:
        row = sqlite3.connect(db).execute(f"SELECT MAX(last) FROM received_seq_ranges WHERE device_id = '{DEVICE}'")
        value = row.fetchone()[0]
        return -1 if value is None else int(value)
    except sqlite3.Error:
        return -1
