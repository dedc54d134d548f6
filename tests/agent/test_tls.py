"""The agent's MQTT session over TLS against a real Mosquitto TLS listener, with a throwaway CA."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from polewatch.agent.config import MqttConfig, TlsConfig
from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.session import Uplink
from polewatch.protocol import Presence
from support import brokers
from support.brokers import USERS, BrokerProcess, BrokerTls
from support.fleet import eventually
from support.tls import Authority, authority

pytestmark = pytest.mark.mqtt


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return authority(tmp_path / "pki", "fleet-ca")


def tls_broker(tmp_path: Path, ca: Authority, *, require_certificate: bool) -> BrokerProcess:
    server = ca.issue(tmp_path / "pki", "broker", server=True)
    tls = BrokerTls(ca.cert_file, server.cert_file, server.key_file, require_certificate=require_certificate)
    return brokers.mosquitto(tmp_path / "mosquitto", tls=tls)


def session_config(broker: BrokerProcess, tls: TlsConfig) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, username="pole-a", password=SecretStr(USERS["pole-a"]),
                      keepalive_s=5, reconnect_max_s=1.0, tls=tls)


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_agent_delivers_over_tls_with_its_client_certificate(tmp_path: Path, ca: Authority) -> None:
    broker = tls_broker(tmp_path, ca, require_certificate=True)
    client = ca.issue(tmp_path / "pki", "pole-a", server=False)
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    tls = TlsConfig(ca_file=ca.cert_file, cert_file=client.cert_file, key_file=client.key_file)
    uplink = Uplink(session_config(broker, tls), outbox, device_id="pole-a", agent_version="test")
    try:
        for i in range(5):
            outbox.add(Presence(state="online", reason=f"over tls {i}"))
        async with running(uplink):
            await eventually(lambda: uplink.connected, 20, "a TLS session")
            await eventually(lambda: outbox.pending_count() == 0, 20, "the outbox to drain over TLS")
        assert uplink.published >= 5 and uplink.reconnects == 0
    finally:
        outbox.close()
        broker.stop()


async def test_a_broker_certificate_from_another_ca_is_refused_and_the_agent_keeps_trying(
    tmp_path: Path, ca: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    broker = tls_broker(tmp_path, ca, require_certificate=False)
    stranger = authority(tmp_path / "other-pki", "stranger-ca")
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    uplink = Uplink(session_config(broker, TlsConfig(ca_file=stranger.cert_file)), outbox, device_id="pole-a",
                    agent_version="test")
    outbox.add(Presence(state="online", reason="must wait"))
    try:
        with caplog.at_level(logging.WARNING, logger="polewatch.agent.uplink"):
            async with running(uplink) as task:
                await eventually(lambda: uplink.reconnects >= 3, 30, "three refused attempts")
                assert not task.done() and not uplink.connected
        failures = [r for r in caplog.records if r.getMessage() == "TLS handshake with the broker failed; retrying"]
        assert len(failures) >= 3
        assert "CERTIFICATE_VERIFY_FAILED" in failures[0].__dict__["error"]
        assert "mqtt.tls.ca_file" in failures[0].__dict__["hint"]
        assert outbox.pending_count() == 1, "nothing was given to a broker we could not verify"
    finally:
        outbox.close()
        broker.stop()


@pytest.mark.slow
async def test_a_broker_that_requires_a_client_certificate_refuses_an_agent_without_one(
    tmp_path: Path, ca: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    broker = tls_broker(tmp_path, ca, require_certificate=True)
    outbox = Outbox(tmp_path / "outbox.db", "pole-a")
    uplink = Uplink(session_config(broker, TlsConfig(ca_file=ca.cert_file)), outbox, device_id="pole-a",
                    agent_version="test")
    outbox.add(Presence(state="online", reason="must wait"))
    try:
        with caplog.at_level(logging.WARNING):
            async with running(uplink) as task:
                # Under TLS 1.3 the refusal comes after the handshake, so each attempt waits for the
                # connect timeout (10 s).
                await eventually(lambda: uplink.reconnects >= 2, 60, "two refused attempts")
                assert not task.done() and not uplink.connected
        assert uplink.published == 0 and outbox.pending_count() == 1
        assert any("CERTIFICATE_REQUIRED" in r.getMessage() for r in caplog.records), "the log says why"
    finally:
        outbox.close()
        broker.stop()
