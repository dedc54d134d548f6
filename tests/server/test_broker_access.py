"""Attack the broker's access rules as a box would, on Mosquitto set up as production runs it.

Every attempt in the issue's list must fail at the broker (TLS, dynamic security), and the ones the
broker reports must show up as security events read from its log topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from polewatch.fleet_server.broker_access.dynsec import DynsecAdmin, DynsecError
from polewatch.fleet_server.broker_access.mosquitto_files import find_dynsec_plugin
from polewatch.fleet_server.broker_access.setup import broker_setup
from polewatch.protocol import topics
from support.secure_broker import (
    SecureBroker,
    ServerWatch,
    read_until_cut_off,
    server_watch,
    start_secure_mosquitto,
    subscription_refused,
)

pytestmark = [pytest.mark.acl, pytest.mark.mqtt, pytest.mark.server]

A, B = "pole-0001", "pole-0002"
PASSWORDS = {A: "a-password-long-and-random", B: "b-password-long-and-random"}


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = start_secure_mosquitto(tmp_path / "broker")
    yield broker
    broker.stop()


def admin(broker: SecureBroker) -> DynsecAdmin:
    files = broker.files
    return DynsecAdmin("127.0.0.1", broker.local_port, username=files.admin.username, password=files.admin.password)


def device(
    broker: SecureBroker,
    device_id: str,
    *,
    client_id: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.tls_port,
        username=device_id,
        password=password or PASSWORDS[device_id],
        identifier=client_id or device_id,
        tls_context=tls or broker.tls_context(),
        timeout=5,
    )


@pytest.fixture
async def fleet(secure: SecureBroker) -> AsyncIterator[ServerWatch]:
    async with admin(secure) as dynsec:
        for device_id, password in PASSWORDS.items():
            await dynsec.ensure_device(device_id, password)
    async with server_watch(secure) as watch:
        yield watch


async def _payloads_until(client: aiomqtt.Client, last: bytes) -> list[bytes]:
    received = []
    async for message in client.messages:
        received.append(bytes(message.payload))
        if received[-1] == last:
            return received
    return received


async def test_a_box_reaches_only_its_own_branches(secure: SecureBroker, fleet: ServerWatch) -> None:
    async with device(secure, A) as a:
        await a.publish(topics.up(B, "detection"), b"forged by A", qos=1)
        await a.publish(topics.up(A, "detection"), b"from A", qos=1)
        await fleet.wait_for("A's own message", lambda: (topics.up(A, "detection"), b"from A") in fleet.messages)
        # Same connection, same order: had the forged one been let through it would have come first.
        assert all(payload != b"forged by A" for _, payload in fleet.messages)

        assert subscription_refused(await a.subscribe(topics.device_down_filter(B), qos=1))
        assert subscription_refused(await a.subscribe("#", qos=1))
        assert subscription_refused(await a.subscribe(f"{topics.PREFIX}/+/up/#", qos=1))
        assert not subscription_refused(await a.subscribe(topics.device_down_filter(A), qos=1))

        server = fleet.client
        assert server is not None
        await server.publish(topics.down(B, "command"), b"for B only", qos=1)
        await server.publish(topics.down(A, "command"), b"for A", qos=1)
        assert await asyncio.wait_for(_payloads_until(a, b"for A"), 10) == [b"for A"]

    # Mosquitto 2.0 logs a subscription only once granted, so a refused one leaves no line (the SUBACK
    # failure above is the evidence); a granted one outside the branch would be an ACL hole.
    await asyncio.sleep(0.5)
    assert not [e for e in fleet.events if e.kind == "subscribe_outside_branch"]


async def test_a_box_cannot_use_another_boxes_client_id(secure: SecureBroker, fleet: ServerWatch) -> None:
    async with device(secure, B) as b:
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori"):
            async with device(secure, A, client_id=B):
                pass
        # B's session survived the attempt: it still publishes and is heard.
        await b.publish(topics.up(B, "health"), b"still here", qos=1)
        await fleet.wait_for("B still connected", lambda: (topics.up(B, "health"), b"still here") in fleet.messages)
    await fleet.wait_for("the refused connection", lambda: any(e.kind == "connect_refused" for e in fleet.events))
    assert not any(e.kind == "session_takeover" for e in fleet.events)


async def test_revoked_box_is_cut_off_within_seconds(secure: SecureBroker, fleet: ServerWatch) -> None:
    a = device(secure, A)
    await a.__aenter__()
    try:
        await a.subscribe(topics.device_down_filter(A), qos=1)
        loop = asyncio.get_running_loop()
        async with admin(secure) as dynsec:
            started = loop.time()
            await dynsec.revoke(A)
            account = await dynsec.account(A)
        assert account is not None and account.disabled
        with pytest.raises(aiomqtt.MqttError):
            await asyncio.wait_for(read_until_cut_off(a), 5)
        cut_after = loop.time() - started
        print(f"revoked box disconnected after {cut_after:.3f} s")
        assert cut_after < 5
    finally:
        with contextlib.suppress(Exception):
            await a.__aexit__(None, None, None)
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori"):
        async with device(secure, A):
            pass
    await fleet.wait_for("the refused reconnection", lambda: any(e.kind == "connect_refused" for e in fleet.events))


async def test_rotation_and_idempotent_enrolment(secure: SecureBroker, fleet: ServerWatch) -> None:
    async with admin(secure) as dynsec:
        await dynsec.ensure_device(A, PASSWORDS[A])  # a re-run: no error, no second account
        await dynsec.set_password(A, "the-new-password-for-a")
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori"):
        async with device(secure, A):
            pass
    async with device(secure, A, password="the-new-password-for-a") as a:
        await a.publish(topics.up(A, "health"), b"rotated", qos=1)
        await fleet.wait_for("A after rotation", lambda: (topics.up(A, "health"), b"rotated") in fleet.messages)
    async with admin(secure) as dynsec:
        await dynsec.remove(A)
        await dynsec.remove(A)  # already gone: not an error
        assert await dynsec.account(A) is None
        with pytest.raises(DynsecError, match="setClientPassword"):
            await dynsec.set_password(A, "x")


async def test_tls_is_required_and_verified(secure: SecureBroker, fleet: ServerWatch) -> None:
    # A box that does not trust our CA (here: the system's default trust store) refuses the broker.
    with pytest.raises(aiomqtt.MqttError):
        async with device(secure, A, tls=ssl.create_default_context()):
            pass
    # Plain MQTT on the TLS port gets nowhere.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", secure.tls_port, username=A, password=PASSWORDS[A], identifier=A, timeout=3
        ):
            pass


def test_broker_setup_rerun_keeps_the_ca_and_the_accounts(tmp_path: Path, secure: SecureBroker) -> None:
    files = secure.files
    before = {p.name: p.read_bytes() for p in (files.ca_file, files.cert_file, files.env_file)}
    again = broker_setup(
        files.directory,
        hosts=["127.0.0.1", "localhost"],
        tls_port=files.tls_port,
        local_port=files.local_port,
        plugin=find_dynsec_plugin(),
    )
    assert {p.name: p.read_bytes() for p in (again.ca_file, again.cert_file, again.env_file)} == before
    assert again.admin == files.admin and again.server == files.server
    for name in ("ca.key", "broker.key", "dynamic-security.json", "fleet-server.env"):
        assert (files.directory / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    files.env_file.unlink()
    with pytest.raises(FileExistsError, match=r"fleet-server\.env is missing"):
        broker_setup(files.directory, hosts=["127.0.0.1", "localhost"], plugin=Path("/nonexistent"))
