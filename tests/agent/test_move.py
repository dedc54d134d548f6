"""Moving the command centre: the real agent runtime between two real Mosquittos (A, the old centre,
and B, the new one), driven by signed `move_server` directives published the way the fleet server
does (support/fleet.py plays the server on each broker)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from polewatch.agent.config import AgentConfig, parse_config
from polewatch.agent.endpoint import EndpointStore
from polewatch.agent.runtime import Agent
from polewatch.protocol import Box, CommandAckMessage, MoveServer, PresenceMessage, RuleEvent
from polewatch.protocol.move import MoveDirective, MoveEndpoint, sign_directive
from polewatch.protocol.signing import public_pem
from support.agent_run import running
from support.brokers import USERS, BrokerProcess
from support.fleet import Fleet, eventually, fleet
from support.footage import SAMPLE_CLIP
from support.ports import free_port

pytestmark = [pytest.mark.mqtt]

KEY = Ed25519PrivateKey.generate()
BOX = Box(x1=0.1, y1=0.1, x2=0.2, y2=0.3)


def agent_config(broker: BrokerProcess, tmp_path: Path, *, fallback_after_s: float = 60) -> AgentConfig:
    key_file = tmp_path / "command-key.pem"
    key_file.write_text(public_pem(KEY.public_key()))
    return parse_config({
        "device_id": "pole-a", "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "username": "pole-a", "password": USERS["pole-a"],
                 "keepalive_s": 5, "reconnect_max_s": 0.5},
        "cameras": [{"id": "cam1", "url": str(SAMPLE_CLIP), "loop": True}],
        "detect": {"fps": 1}, "health_interval_s": 1, "outbox": {"replay_rate": None},  # unpaced: a fast test
        "trust": {"command_key": str(key_file)}, "move": {"fallback_after_s": fallback_after_s},
    })  # fmt: skip


def move_to(broker_port: int, *, serial: int, key: Ed25519PrivateKey = KEY, command_id: str | None = None,
            **changes: Any) -> MoveServer:  # fmt: skip
    now = datetime.now(timezone.utc)
    fields: dict[str, Any] = {
        "serial": serial, "target": "*", "mqtt": MoveEndpoint(host="127.0.0.1", port=broker_port, tls=False),
        "issued_at": now, "not_before": now, "expires_at": now + timedelta(days=1),
    }  # fmt: skip
    fields.update(changes)
    document, signature, kid = sign_directive(MoveDirective(**fields), key)
    return MoveServer(command_id=command_id or f"move-{serial}-pole-a", directive=document, signature=signature,
                      key_id=kid)  # fmt: skip


async def ack_of(f: Fleet, command_id: str, status: str) -> CommandAckMessage:
    return await f.wait_for(CommandAckMessage, lambda m: m.body.command_id == command_id and m.body.status == status)


def on(agent: Agent, broker: BrokerProcess) -> bool:
    return agent.uplink.connected and agent.uplink.config.port == broker.port


def ids_from(*fleets: Fleet) -> list[str]:
    return [m.id for f in fleets for m in f.received if not isinstance(m, PresenceMessage)]


async def produce(agent: Agent, accepted: list[str], count: int, batch: int = 10,
                  until: asyncio.Event | None = None, pause_s: float = 0.0) -> None:  # fmt: skip
    """Events keep coming (a commit of `batch` at a time, `pause_s` apart), `count` of them or, with
    `until`, until it is set: each one the outbox accepted is remembered."""
    start = 0
    while (until is not None and not until.is_set()) or (until is None and start < count):
        bodies = [
            RuleEvent(camera_id="cam1", rule_id="gate", rule_type="zone", event="enter", event_id=str(i),
                      label="person", box=BOX, frame_time=datetime.now(timezone.utc), frame_width=640,
                      frame_height=480)
            for i in range(start, start + batch if until is not None else min(count, start + batch))
        ]  # fmt: skip
        accepted.extend(a.message.id for a in await agent.outbox.put_many(bodies))
        start += batch
        await asyncio.sleep(pause_s)


async def test_move_acks_on_the_old_broker_then_delivers_everything_exactly_once(
    two_brokers: tuple[BrokerProcess, BrokerProcess], tmp_path: Path
) -> None:
    a, b = two_brokers
    config = agent_config(a, tmp_path)
    accepted: list[str] = []
    async with fleet(a) as on_a, fleet(b) as on_b, running(config) as agent:
        enough = asyncio.Event()
        producer = asyncio.create_task(produce(agent, accepted, 0, until=enough, pause_s=0.05))
        await eventually(lambda: len(accepted) >= 100, 20, "events to flow")
        directive = await on_a.send(move_to(b.port, serial=1), retain=True)
        ack = await ack_of(on_a, "move-1-pole-a", "done")
        assert ack.body.result == {"serial": 1, "from": f"127.0.0.1:{a.port}", "to": f"127.0.0.1:{b.port}",
                                   "server_url": None}  # fmt: skip
        await eventually(lambda: on(agent, b), 20, "the agent on broker B")
        moved_at = len(accepted)
        await eventually(lambda: len(accepted) >= moved_at + 100, 20, "events made on B")
        enough.set()
        await producer
        await eventually(lambda: agent.outbox.pending_count() == 0, 20, "the outbox to drain on B")
        await eventually(lambda: set(accepted) <= set(ids_from(on_a, on_b)), 20, "every event at A or B")
        left = await on_a.wait_for(PresenceMessage, lambda m: m.body.state == "offline")
        assert left.body.reason == f"moved to 127.0.0.1:{b.port}"
        await eventually(lambda: agent.endpoints.state.active and agent.endpoints.state.active.confirmed, 10,
                         "the move to be confirmed")  # fmt: skip
        assert directive.kind == "move_server"
    got_a, got_b = ids_from(on_a), ids_from(on_b)
    both = got_a + got_b
    assert len(both) == len(set(both)), "no message reached the brokers twice"
    assert sorted(i for i in both if i in set(accepted)) == sorted(accepted), "every accepted event, exactly once"
    assert set(accepted) & set(got_a) and set(accepted) & set(got_b), "the move happened while events flowed"
    print(f"MOVE events={len(accepted)} at_a={len(set(accepted) & set(got_a))} "
          f"at_b={len(set(accepted) & set(got_b))} lost=0 duplicated=0")
    # The move survives a restart: the state folder, not the config file, says where to connect.
    assert EndpointStore(config.state_dir).effective(config.mqtt).port == b.port


async def test_a_box_offline_at_issue_time_moves_on_reconnect_and_stays_moved(
    two_brokers: tuple[BrokerProcess, BrokerProcess], tmp_path: Path
) -> None:
    a, b = two_brokers
    config = agent_config(a, tmp_path)
    async with fleet(a) as on_a, fleet(b) as on_b:
        await on_a.send(move_to(b.port, serial=3), retain=True)  # the box is off: only the broker keeps it
        async with running(config) as agent:
            await ack_of(on_a, "move-3-pole-a", "done")
            await eventually(lambda: on(agent, b), 20, "the agent on broker B")
            await on_b.wait_for(PresenceMessage, lambda m: m.body.state == "online")
        async with running(config) as agent:  # restarted: straight to B, the retained directive on A unseen
            assert on(agent, b)
            await eventually(lambda: agent.endpoints.state.active and agent.endpoints.state.active.confirmed, 10,
                             "the move to stay confirmed")  # fmt: skip
    assert len([m for m in on_a.of(CommandAckMessage) if m.body.command_id == "move-3-pole-a"]) == 1


async def test_refused_directives_leave_the_box_on_its_broker_delivering(
    two_brokers: tuple[BrokerProcess, BrokerProcess], tmp_path: Path
) -> None:
    a, b = two_brokers
    config = agent_config(a, tmp_path)
    config.state_dir.mkdir(parents=True)
    # This box moved before, to serial 5 (and came back): a serial up to 5 is a replay.
    (config.state_dir / "endpoint.json").write_text(json.dumps({"last_serial": 5}))
    tampered = move_to(b.port, serial=9, command_id="tampered")
    forged = dict(tampered.directive, mqtt={**tampered.directive["mqtt"], "port": b.port + 1})
    cases = {
        "tampered": tampered.model_copy(update={"directive": forged}),
        "unknown_key": move_to(b.port, serial=10, key=Ed25519PrivateKey.generate(), command_id="unknown_key"),
        "expired": move_to(b.port, serial=11, command_id="expired",
                           expires_at=datetime.now(timezone.utc) - timedelta(hours=1)),
        "replayed": move_to(b.port, serial=5, command_id="replayed"),
    }  # fmt: skip
    accepted: list[str] = []
    async with fleet(a) as on_a, fleet(b) as on_b, running(config) as agent:
        for body in cases.values():
            await on_a.send(body, retain=True)
        for reason in cases:
            ack = await ack_of(on_a, reason, "refused")
            assert ack.body.result == {"refusal": reason}
            assert ack.body.reason is not None and ack.body.reason.startswith(f"{reason}: ")
        await produce(agent, accepted, 20)
        await eventually(lambda: set(accepted) <= set(ids_from(on_a)), 20, "events still delivered to A")
        assert on(agent, a) and agent.mover.moves == 0
    assert ids_from(on_b) == [], "nothing went to B"
    assert EndpointStore(config.state_dir).state.active is None


async def test_an_unreachable_new_broker_sends_the_box_back_and_says_so(
    two_brokers: tuple[BrokerProcess, BrokerProcess], tmp_path: Path
) -> None:
    a, _ = two_brokers
    config = agent_config(a, tmp_path, fallback_after_s=1.5)
    nowhere = free_port()  # nothing listens there: a mistyped port
    accepted: list[str] = []
    async with fleet(a) as on_a, running(config) as agent:
        await on_a.send(move_to(nowhere, serial=2), retain=True)
        await ack_of(on_a, "move-2-pole-a", "done")
        await eventually(lambda: agent.uplink.config.port == nowhere, 10, "the agent to try the new broker")
        await produce(agent, accepted, 20)  # made while it is cut off: kept in the outbox
        failed = await ack_of(on_a, "move-2-pole-a", "failed")
        assert failed.body.reason is not None and failed.body.reason.startswith(
            f"fallback: the new broker 127.0.0.1:{nowhere} accepted no connection within 1.5 s; "
            f"back on 127.0.0.1:{a.port}")  # fmt: skip
        await eventually(lambda: set(accepted) <= set(ids_from(on_a)), 20, "what waited delivered on A")
        assert on(agent, a) and agent.mover.fallbacks == 1
        # The retained directive comes again on the reconnect to A: not followed a second time.
        await asyncio.sleep(0)
        assert agent.mover.moves == 1
    state = EndpointStore(config.state_dir).state
    assert state.active is None and state.last_serial == 2
