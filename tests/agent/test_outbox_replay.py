"""Replay after a reconnect, against real brokers: alerts first, oldest first, paced, live not starved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.priority import Priority
from polewatch.agent.uplink.session import Uplink
from support.brokers import BrokerProcess
from support.outbox import alert, body_of, listening, mqtt_config, open_outbox, running, telemetry

pytestmark = pytest.mark.mqtt


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.slow  # paced on purpose: about 2 s per broker
async def test_backlog_replays_alerts_first_oldest_first_at_the_configured_rate(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    box = open_outbox(tmp_path / "outbox.db")
    made: dict[Priority, list[str]] = {p: [] for p in Priority}
    for n in range(30):
        for p in (Priority.TELEMETRY, Priority.HEALTH_EVENT, Priority.ALERT):  # least important first
            made[p].append((await box.put(body_of(p, n), priority=p)).id)
    rate = 40.0
    uplink = Uplink(mqtt_config(broker), box, device_id="pole-a", agent_version="test", replay_rate=rate)
    backlog = made[Priority.ALERT] + made[Priority.HEALTH_EVENT] + made[Priority.TELEMETRY]

    async with listening(broker) as arrivals, running(uplink):
        await _until(lambda: set(backlog) <= set(arrivals.ids()), 30, "the whole backlog")
        await _until(lambda: box.pending_count() == 0, 10, "the acknowledgements")

    replayed = [i for i in arrivals.ids() if i in set(backlog)]
    assert replayed == backlog, "alerts first, then health events, then telemetry; oldest first in each"
    first, last = arrivals.at(backlog[0]), arrivals.at(backlog[-1])
    measured = (len(backlog) - 1) / (last - first)
    print(f"broker={broker.kind} replay rate measured={measured:.1f}/s bound={rate}/s")
    # The bucket starts with a burst of rate/10 messages; past that the pace is the bound.
    assert measured <= rate * 1.15, "the replay rate bound holds"
    assert measured >= rate * 0.6, "and the replay is not much slower than it"
    assert uplink.replayed == len(backlog)
    box.close()


@pytest.mark.slow  # paced on purpose: about 3 s per broker
async def test_live_messages_go_out_during_a_long_replay(broker: BrokerProcess, tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "outbox.db")
    backlog = [a.id for a in await box.put_many([telemetry(n) for n in range(150)])]
    uplink = Uplink(mqtt_config(broker), box, device_id="pole-a", agent_version="test", replay_rate=50.0)
    live: list[tuple[float, str]] = []

    async with listening(broker) as arrivals, running(uplink):
        await _until(lambda: backlog[0] in arrivals.ids(), 20, "the replay to start")
        for n in range(5):
            await asyncio.sleep(0.25)
            accepted = await box.put(alert(n))
            live.append((time.monotonic(), accepted.id))
        await _until(lambda: set(backlog) <= set(arrivals.ids()), 30, "the whole backlog")
        await _until(lambda: {i for _, i in live} <= set(arrivals.ids()), 10, "the live alerts")

    order = arrivals.ids()
    end_of_replay = order.index(backlog[-1])
    for put_at, message_id in live:
        latency = arrivals.at(message_id) - put_at
        assert order.index(message_id) < end_of_replay, "a live alert does not wait for the backlog"
        assert latency < 1.0, f"live alert took {latency:.2f} s"
    assert [i for i in order if i in set(backlog)] == backlog, "the backlog stays in order around them"
    box.close()


async def test_acknowledged_messages_are_not_replayed_after_a_reconnect(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    box: Outbox = open_outbox(tmp_path / "outbox.db")
    first = [a.id for a in await box.put_many([alert(n) for n in range(20)])]
    uplink = Uplink(mqtt_config(mosquitto_broker), box, device_id="pole-a", agent_version="test")
    async with listening(mosquitto_broker) as arrivals, running(uplink):
        await _until(lambda: set(first) <= set(arrivals.ids()), 15, "the first batch")
        await _until(lambda: box.pending_count() == 0, 10, "the acknowledgements")
        mosquitto_broker.kill()
        await _until(lambda: not uplink.connected, 15, "the disconnect")
        second = [a.id for a in await box.put_many([alert(100 + n) for n in range(5)])]
        mosquitto_broker.start()
    async with listening(mosquitto_broker) as arrivals, running(uplink):
        await _until(lambda: set(second) <= set(arrivals.ids()), 30, "the second batch")
        await asyncio.sleep(0.5)
    again = [i for i in arrivals.ids() if i in set(first)]
    assert not again, f"{len(again)} acknowledged messages were sent again"
    box.close()
