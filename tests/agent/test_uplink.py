"""The agent's MQTT session against real brokers: drain, reconnect, presence."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from pydantic import SecretStr

from polewatch.agent.config import MqttConfig
from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.session import Uplink
from polewatch.protocol import Presence, PresenceMessage, decode, topics
from support.blackhole import blackhole_proxy
from support.brokers import USERS, BrokerProcess

pytestmark = pytest.mark.mqtt


def _config(broker: BrokerProcess, device: str = "pole-a") -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, username=device, password=SecretStr(USERS[device]),
                      keepalive_s=5, reconnect_max_s=1.0)


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[None]:
    task = asyncio.create_task(uplink.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _collect(broker: BrokerProcess, topic: str, count: int, timeout: float = 20) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client(broker.host, broker.port, username="tester", password=USERS["tester"]) as client:
        await client.subscribe(topic, qos=1)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_gather(client, got, count), timeout)
    return got


async def _gather(client: aiomqtt.Client, got: list[aiomqtt.Message], count: int) -> None:
    async for message in client.messages:
        got.append(message)
        if len(got) >= count:
            return


async def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_outbox_is_drained_in_order_and_emptied(broker: BrokerProcess, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    uplink = Uplink(_config(broker), outbox, device_id="pole-a", agent_version="test")
    added = [outbox.add(Presence(state="online", reason=f"n{i}")) for i in range(60)]
    receiver = asyncio.create_task(_collect(broker, topics.up("pole-a", "presence"), 61))
    await asyncio.sleep(0.5)
    async with running(uplink):
        got = await receiver
        assert await _wait_for(lambda: outbox.pending_count() == 0, 10)
    ids = [decode(m.payload).id for m in got if not m.retain]
    queued = [m.id for m in added]
    assert [i for i in ids if i in set(queued)] == queued, "every queued message arrives, oldest first"


async def test_messages_wait_on_disk_while_the_broker_is_down(broker: BrokerProcess, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    uplink = Uplink(_config(broker), outbox, device_id="pole-a", agent_version="test")
    async with running(uplink):
        assert await _wait_for(lambda: uplink.connected, 10)
        broker.kill()
        assert await _wait_for(lambda: not uplink.connected, 15)
        during = [outbox.add(Presence(state="online", reason=f"outage {i}")) for i in range(10)]
        uplink.notify()
        await asyncio.sleep(1.0)
        assert outbox.pending_count() == 10, "nothing leaves the outbox while nobody acknowledges it"
        broker.start()
        receiver = asyncio.create_task(_collect(broker, topics.up("pole-a", "presence"), 12, timeout=30))
        assert await _wait_for(lambda: outbox.pending_count() == 0, 30), "reconnected and drained"
        got = await receiver
    received = {decode(m.payload).id for m in got}
    assert uplink.reconnects >= 1
    assert {m.id for m in during} <= received or outbox.pending_count() == 0


async def test_a_link_lost_while_the_session_is_being_set_up_ends_it_at_once(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """The broker answers CONNECT, then dies before it acknowledges the `online` presence. aiomqtt
    does not fail a publish whose connection drops, so a session that awaited it alone stayed
    `connected` (and did not reconnect) until the publish timed out, 15 s later (seen in CI, when
    a test killed the broker the moment the box was connected)."""
    with blackhole_proxy(broker.host, broker.port) as proxy:
        proxy.reply_limit = 4  # the CONNACK, nothing after it: the presence stays unacknowledged
        config = _config(broker).model_copy(update={"host": proxy.host, "port": proxy.port})
        outbox = Outbox(tmp_path / "outbox.db", "pole-a")
        uplink = Uplink(config, outbox, device_id="pole-a", agent_version="test")
        async with running(uplink):
            assert await _wait_for(lambda: uplink.connected, 10)
            await asyncio.sleep(0.5)  # well into the wait for the presence's PUBACK
            assert (uplink.connected, uplink.reconnects, uplink.subscriptions) == (True, 0, 0), "set-up not done"
            proxy.reply_limit = None  # later connections get every reply; the PUBACK held back stays lost
            proxy.drop_all()
            lost = asyncio.get_running_loop().time()
            # Counted as the session ends (polling `connected` could miss a reconnect that quick).
            assert await _wait_for(lambda: uplink.reconnects >= 1, 20)
            assert asyncio.get_running_loop().time() - lost < 2.0, "the loss is seen at once, not at a timeout"
            assert await _wait_for(lambda: uplink.connected and uplink.subscriptions >= 1, 15), "set up again"


async def test_online_presence_is_retained(broker: BrokerProcess, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    uplink = Uplink(_config(broker), outbox, device_id="pole-a", agent_version="9.9")
    async with running(uplink):
        assert await _wait_for(lambda: uplink.connected, 10)
        await asyncio.sleep(0.3)
        got = await _collect(broker, topics.up("pole-a", "presence"), 1, timeout=5)
    assert got and got[0].retain
    message = decode(got[0].payload)
    assert isinstance(message, PresenceMessage)
    assert message.body.state == "online" and message.body.agent_version == "9.9"


async def test_wrong_password_keeps_retrying_without_crashing(broker: BrokerProcess, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    config = _config(broker).model_copy(update={"password": SecretStr("wrong")})
    uplink = Uplink(config, outbox, device_id="pole-a", agent_version="test")
    outbox.add(Presence(state="online"))
    async with running(uplink):
        assert await _wait_for(lambda: uplink.reconnects >= 2, 10)
        assert not uplink.connected
    assert outbox.pending_count() == 1, "a refused login loses nothing"


async def test_the_session_stops_when_cancelled_as_its_wake_up_arrives(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    # A commit wakes the drain at any moment, and a stop can come at that same moment. asyncio.wait_for
    # before Python 3.12 then returns instead of raising the cancellation, and a session that carries
    # on hangs the agent's shutdown (CI: a test stuck for 10 minutes). Both loops of the session are
    # hit: the drain waiting for news (connected) and the wait between reconnects (broker gone).
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    uplink = Uplink(_config(mosquitto_broker), outbox, device_id="pole-a", agent_version="test")

    async def cancel_as_it_wakes(task: asyncio.Task[None], wake: asyncio.Event, where: str) -> None:
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, f"the session did not stop when cancelled ({where})"

    task = asyncio.create_task(uplink.run())
    assert await _wait_for(lambda: uplink.connected, 10)
    await asyncio.sleep(0.3)  # drained: every worker waits for news
    await cancel_as_it_wakes(task, uplink._wake, "connected, waiting for news")

    mosquitto_broker.kill()
    task = asyncio.create_task(uplink.run())
    assert await _wait_for(lambda: uplink.reconnects >= 1, 15)
    await asyncio.sleep(0.1)  # between two attempts, waiting out the backoff
    await cancel_as_it_wakes(task, uplink._switch_now, "waiting to reconnect")
    outbox.close()
