"""Fault injection on the whole stack: a real Mosquitto, a real fleet server, a real agent process
detecting on the sample clip. Each test breaks one thing while events flow, then checks that every
detection the agent took is stored exactly once, still waiting in its outbox, or given up by its
stated policy (and reported as such), and that every gap the server sees in the sequence numbers is
explained. Each prints one line: `CHAOS <scenario> sent=.. stored=.. evicted=.. lost=.. dup=..`.

Random timings come from a seeded generator; the seed is printed, so a failure can be replayed with
POLEWATCH_CHAOS_SEED.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from polewatch.agent.uplink.outbox import Outbox
from polewatch.demo import Child
from support.blackhole import blackhole_proxy
from support.brokers import BrokerProcess
from support.chaos import Tally, agent_accepted, settled, stored_ids, tally
from support.filesystems import fill, small_tmpfs
from support.outbox import alert, open_outbox, telemetry
from support.stack import http_json, log_records, start_agent, start_server, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.slow]

DEVICE = "pole-a"
FPS = 10  # detections per second through the model: a steady stream of track starts and ends
HEALTH_S = 1  # a health report (and a given-up report, when there is news) every second
LINK_LOST = "broker connection lost or refused; retrying"


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("POLEWATCH_CHAOS_SEED", time.time_ns() % 1_000_000))
    print(f"chaos seed {seed}")
    return random.Random(seed)


class Stack:
    def __init__(self, broker: BrokerProcess, root: Path) -> None:
        self.broker = broker
        self.root = root
        self.server, self.base, self.db, self.token = start_server(broker, root / "server")
        self.agent: Child | None = None
        self.log = root / "agent" / f"{DEVICE}.log"
        self.state = root / "agent" / "state"

    def start_agent(self, **kwargs: object) -> Child:
        self.agent = start_agent(self.broker, self.root / "agent", DEVICE, fps=FPS, health_s=HEALTH_S,
                                 log_level="DEBUG", **kwargs)  # type: ignore[arg-type]
        return self.agent

    def accepted(self) -> dict[str, int]:
        return agent_accepted(self.log)

    def children(self) -> list[Child]:
        return [self.server] + ([self.agent] if self.agent is not None else [])

    def wait_flowing(self, at_least: int = 3) -> None:
        wait_until(lambda: len(self.accepted()) >= at_least, 90, "detections accepted", self.children())
        wait_until(lambda: stored_ids(self.db, DEVICE), 60, "a detection stored", self.children())

    def wait_settled(self, timeout: float = 120) -> dict[str, int]:
        """Until every detection taken so far is stored or reported given up; returns them."""
        snapshot = self.accepted()
        wait_until(lambda: settled(snapshot, self.db, DEVICE), timeout,
                   f"{len(snapshot)} detections stored or given up", self.children())
        return snapshot

    def finish(self, scenario: str, state_dir: Path | None = None) -> Tally:
        """Stop the agent cleanly, count, print the CHAOS line, stop the server."""
        if self.agent is not None:
            self.agent.stop(timeout=20)
        result = tally(scenario, log=self.log, db=self.db, state_dir=state_dir or self.state, base=self.base,
                       token=self.token,
                       device=DEVICE)
        print(result.line())
        return result

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.server.stop()


@pytest.fixture
def stack(tls_mosquitto_broker: BrokerProcess, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tls_mosquitto_broker, tmp_path)
    try:
        yield s
    finally:
        s.close()


def _assert_nothing_lost(result: Tally, *, min_sent: int = 10) -> None:
    assert result.sent >= min_sent, "the test must have had a stream to lose"
    assert not result.lost, f"lost detections: {result.lost[:10]}"
    assert result.dup == 0, "duplicate rows in the database"
    assert not result.unexplained_gaps, f"sequence numbers neither received, waiting nor given up: " \
                                        f"{result.unexplained_gaps[:10]}"


def test_broker_killed_and_restarted_many_times(stack: Stack, rng: random.Random) -> None:
    stack.start_agent()
    stack.wait_flowing()
    kills = 6
    for _ in range(kills):
        time.sleep(rng.uniform(1.0, 3.0))
        stack.broker.kill()  # SIGKILL: no clean shutdown
        time.sleep(rng.uniform(0.3, 2.0))
        stack.broker.start()
    stack.wait_settled()
    result = stack.finish("broker_restarts")
    _assert_nothing_lost(result)
    lost_links = [r for r in log_records(stack.log) if r.get("message") == LINK_LOST]
    assert len(lost_links) >= kills, "the agent noticed every broker death"


def _kill_and_restart(stack: Stack, agent: Child) -> None:
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    agent.stop()  # closes its log handle
    agent.start()


def _wait_for_more(stack: Stack, before: int) -> None:
    wait_until(lambda: len(stack.accepted()) > before, 90, "detections after the restart", stack.children())


def test_agent_killed_with_sigkill_at_random_points(stack: Stack, rng: random.Random) -> None:
    # A slow replay (5 messages/s) so that one kill lands in the middle of replaying a backlog.
    agent = stack.start_agent(outbox={"replay_rate": 5})
    stack.wait_flowing()
    kills = 4
    for _ in range(kills):
        # At a random moment: often mid-batch (a frame's detections are one commit) or mid-publish.
        time.sleep(rng.uniform(0.5, 3.0))
        _kill_and_restart(stack, agent)
        _wait_for_more(stack, len(stack.accepted()))
    # A backlog, then a kill while it is being replayed: acknowledged but not yet deleted messages
    # are sent again, and must not become second rows.
    stack.broker.kill()
    time.sleep(8)
    connects = len([r for r in log_records(stack.log) if r.get("message") == "connected to broker"])
    stack.broker.start()
    wait_until(lambda: len([r for r in log_records(stack.log) if r.get("message") == "connected to broker"])
               > connects, 60, "the agent back on the broker", stack.children())
    time.sleep(rng.uniform(0.5, 2.0))
    _kill_and_restart(stack, agent)
    records = [r.get("message") for r in log_records(stack.log)]
    last_connect = max(i for i, m in enumerate(records) if m == "connected to broker")
    last_start = max(i for i, m in enumerate(records) if m == "agent started")
    replaying = "backlog replayed" not in records[last_connect:last_start]
    stack.wait_settled()
    result = stack.finish("agent_sigkill")
    _assert_nothing_lost(result)
    starts = [r for r in log_records(stack.log) if r.get("message") == "agent started"]
    assert len(starts) == kills + 2
    print(f"killed while replaying the backlog: {replaying}")


def test_network_blackholed_for_longer_than_the_keepalive(stack: Stack, rng: random.Random) -> None:
    with blackhole_proxy(stack.broker.host, stack.broker.port) as proxy:
        stack.start_agent(port=proxy.port)
        stack.wait_flowing()
        time.sleep(rng.uniform(0.5, 2.0))
        proxy.cut()
        cut_at = time.time()
        # keepalive_s is 5: the agent gives up on its connection after 1.5 keepalives without an
        # answer, and the broker on the agent's after the same; stay cut well past both.
        time.sleep(12)
        during = [mid for mid, _ in stack.accepted().items()]
        proxy.resume()
        wait_until(lambda: len(stack.accepted()) > len(during) + 3, 90, "detections after the cut", stack.children())
        stack.wait_settled()
        result = stack.finish("blackhole")
    _assert_nothing_lost(result)
    records = log_records(stack.log)
    lost = [r for r in records if r.get("message") == LINK_LOST and _ts(r) >= cut_at]
    assert lost, "the agent found out from its keepalive, without any close"
    assert proxy.connections >= 2, "and reconnected"
    presence = http_json(f"{stack.base}/api/devices/{DEVICE}", stack.token) or {}
    assert presence.get("presence_reason") in ("shutdown", "connection lost")


def test_disk_full_then_space_freed(stack: Stack, rng: random.Random, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", 6 * 1024 * 1024) as disk:
        state = disk / "state"
        stack.start_agent(state_dir=state, outbox={"max_bytes": "2MiB", "memory_alerts": 200})
        stack.wait_flowing()
        filler = fill(disk)
        full_at = time.time()
        # A full disk while the link is up, then the broker gone too: alerts wait in memory.
        time.sleep(rng.uniform(3.0, 5.0))
        stack.broker.kill()
        time.sleep(rng.uniform(3.0, 5.0))
        filler.unlink()
        stack.broker.start()
        wait_until(lambda: any(r.get("message") == "outbox storage writable again" for r in log_records(stack.log)),
                   60, "the outbox writing again", stack.children())
        stack.wait_settled()
        result = stack.finish("disk_full", state_dir=state)
    _assert_nothing_lost(result)
    records = log_records(stack.log)
    assert any(r.get("message") == "detection not on disk" and _ts(r) >= full_at for r in records), \
        "detections were taken while the disk was full"
    assert any(r.get("message", "").startswith("outbox cannot write to disk") for r in records)


def test_agent_killed_while_the_disk_is_full(stack: Stack, tmp_path: Path) -> None:
    """Messages held in memory die with the process (a stated limit); their sequence numbers must
    not be handed out again after the restart, or two messages share a number at the server."""
    with small_tmpfs(tmp_path / "disk", 6 * 1024 * 1024) as disk:
        state = disk / "state"
        agent = stack.start_agent(state_dir=state, outbox={"max_bytes": "2MiB"})
        stack.wait_flowing()
        filler = fill(disk)
        full_at = time.time()
        wait_until(lambda: sum(1 for r in log_records(stack.log) if r.get("message") == "detection not on disk"
                               and _ts(r) >= full_at) >= 5, 60, "detections held in memory", stack.children())
        # The broker is up: the held detections reach the server before the kill (most of them).
        time.sleep(1.0)
        before = len(stack.accepted())
        _kill_and_restart_after(agent, filler.unlink)
        wait_until(lambda: len(stack.accepted()) >= before + 8, 90, "detections after the restart", stack.children())
        # Only detections taken while the disk was full may be missing: held in memory, they died
        # with the process. Everything that was on disk must arrive.
        held = {str(r["message_id"]) for r in log_records(stack.log) if r.get("message") == "detection not on disk"}
        durable = {mid: seq for mid, seq in stack.accepted().items() if mid not in held}
        wait_until(lambda: settled(durable, stack.db, DEVICE), 120, "every durable detection stored", stack.children())
        result = stack.finish("disk_full_sigkill", state_dir=state)
    assert result.dup == 0, "no sequence number was used twice"
    assert not result.unexplained_gaps, result.unexplained_gaps[:10]
    assert {m.split(" ")[0] for m in result.lost} <= held, "only messages held in memory can die with the process"


def _kill_and_restart_after(agent: Child, between: Callable[[], object]) -> None:
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    agent.stop()
    between()
    agent.start()


def test_outbox_cap_reached_during_a_long_outage(stack: Stack, rng: random.Random) -> None:
    cap = 256 * 1024  # the smallest cap the config allows
    # Days of outage already behind this pole: its outbox nearly full of health reports and alerts.
    box: Outbox = open_outbox(stack.state / "outbox.db", DEVICE, max_bytes=cap)
    old_alerts = []
    for n in range(90):
        box.add(telemetry(n))
        if n % 3 == 0:
            old_alerts.append(box.add(alert(n)))
    box.close()
    stack.broker.kill()  # the link is still down when the agent starts
    stack.start_agent(outbox={"max_bytes": cap})
    wait_until(lambda: len(stack.accepted()) >= 40, 120, "detections during the outage", stack.children())
    time.sleep(rng.uniform(0.0, 2.0))
    stack.broker.start()
    stack.wait_settled()
    result = stack.finish("outbox_cap")
    _assert_nothing_lost(result)
    delivery = result.delivery
    given_up = delivery["given_up_by_class"]
    assert given_up.get("telemetry", {}).get("evicted", 0) > 0, "health reports were given up to make room"
    assert "alert" not in given_up, "no alert was given up"
    assert result.evicted == 0 and result.stored + result.waiting == result.sent
    stored = stored_ids(stack.db, DEVICE)
    assert {a.id for a in old_alerts} <= stored, "the alerts from before the agent started are all stored"
    status = (http_json(f"{stack.base}/api/devices/{DEVICE}/delivery", stack.token) or {}).get("outbox") or {}
    assert status.get("evicted", {}).get("telemetry", 0) > 0 and status.get("evicted", {}).get("alert") == 0


def _ts(record: dict[str, object]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(record["time"])).timestamp()
