"""Attack the broker's rules as a box that logs in with its client certificate (no password).

Mosquitto 2.0.11 lets a certificate login in without asking the dynamic-security plugin, so these
tests prove what does hold there: the listener makes the certificate's CN both the username (the
box's dynsec role applies) and the client id (no box can take another's), and a revoked
certificate is refused at the TLS handshake (CRL) while the plugin strips whatever it still had.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from polewatch.fleet_server.broker_access import pki
from polewatch.fleet_server.broker_access.dynsec import DynsecAdmin
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

A, B = "pole-0101", "pole-0102"


@dataclass(frozen=True)
class Box:
    device_id: str
    cert_file: Path
    key_file: Path
    serial: int


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = start_secure_mosquitto(tmp_path / "broker", cert_port=True)
    yield broker
    broker.stop()


def _issue(broker: SecureBroker, device_id: str, directory: Path) -> Box:
    """What enrolment does: the box's own key, a certificate for it from the fleet's CA."""
    ca = pki.CertificateAuthority.load(broker.files.ca_file, broker.files.directory / "ca.key")
    key = pki.new_key()
    cert = pki.client_certificate(ca, key.public_key(), device_id)
    cert_file, key_file = directory / f"{device_id}.crt", directory / f"{device_id}.key"
    pki.write_certificate(cert_file, cert)
    pki.write_private_key(key_file, key)
    return Box(device_id, cert_file, key_file, cert.serial_number)


def _client(broker: SecureBroker, box: Box, *, client_id: str | None = None, timeout: float = 5) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.cert_port, identifier=client_id or box.device_id, clean_session=False,
        tls_context=broker.tls_context(box.cert_file, box.key_file), timeout=timeout,
    )  # fmt: skip


def _admin(broker: SecureBroker) -> DynsecAdmin:
    files = broker.files
    return DynsecAdmin("127.0.0.1", broker.local_port, username=files.admin.username, password=files.admin.password)


@pytest.fixture
async def boxes(secure: SecureBroker, tmp_path: Path) -> dict[str, Box]:
    async with _admin(secure) as dynsec:
        for device_id in (A, B):
            # The account's password is never given to the box: it logs in with its certificate.
            await dynsec.ensure_device(device_id, secrets.token_urlsafe(24))
    return {d: _issue(secure, d, tmp_path) for d in (A, B)}


@pytest.fixture
async def server(secure: SecureBroker) -> AsyncIterator[ServerWatch]:
    async with server_watch(secure) as watch:
        yield watch


async def test_a_certificate_box_reaches_only_its_own_branches(
    secure: SecureBroker, boxes: dict[str, Box], server: ServerWatch
) -> None:
    async with _client(secure, boxes[A]) as a:
        await a.publish(topics.up(B, "detection"), b"forged by A", qos=1)
        await a.publish(topics.up(A, "detection"), b"from A", qos=1)
        await server.wait_for("A's own message", lambda: (topics.up(A, "detection"), b"from A") in server.messages)
        assert all(payload != b"forged by A" for _, payload in server.messages)  # same connection, came first

        assert subscription_refused(await a.subscribe(topics.device_down_filter(B), qos=1))
        assert subscription_refused(await a.subscribe("#", qos=1))
        assert not subscription_refused(await a.subscribe(topics.device_down_filter(A), qos=1))
        await server.client.publish(topics.down(B, "command"), b"for B only", qos=1)
        await server.client.publish(topics.down(A, "command"), b"for A", qos=1)
        received = []
        async for message in a.messages:
            received.append(bytes(message.payload))
            if received[-1] == b"for A":
                break
        assert received == [b"for A"]


async def test_a_certificate_box_cannot_take_another_boxes_client_id(
    secure: SecureBroker, boxes: dict[str, Box], server: ServerWatch
) -> None:
    async with _client(secure, boxes[B]) as b:
        # A asks for B's client id; the listener replaces it with A's certificate name, so B's
        # session is neither taken over nor disconnected, and A is still only A.
        async with _client(secure, boxes[A], client_id=B) as a:
            await a.publish(topics.up(B, "health"), b"A posing as B", qos=1)
            await a.publish(topics.up(A, "health"), b"A as A", qos=1)
            await server.wait_for("A's message", lambda: (topics.up(A, "health"), b"A as A") in server.messages)
        await b.publish(topics.up(B, "health"), b"B still here", qos=1)
        await server.wait_for("B still connected", lambda: (topics.up(B, "health"), b"B still here") in server.messages)
    assert (topics.up(B, "health"), b"A posing as B") not in server.messages
    assert not any(e.kind == "session_takeover" for e in server.events)


async def test_a_revoked_certificate_is_cut_off_and_refused_at_the_handshake(
    secure: SecureBroker, boxes: dict[str, Box], server: ServerWatch
) -> None:
    a = _client(secure, boxes[A])
    await a.__aenter__()
    try:
        await a.subscribe(topics.device_down_filter(A), qos=1)
        async with _admin(secure) as dynsec:
            await dynsec.revoke(A)  # what POST /api/registry/devices/{id}/revoke does first
        with pytest.raises(aiomqtt.MqttError):
            await asyncio.wait_for(read_until_cut_off(a), 5)
    finally:
        with contextlib.suppress(Exception):
            await a.__aexit__(None, None, None)

    # Before the broker has re-read the CRL the certificate still opens TLS, but the account has
    # no role left: nothing is allowed (Mosquitto 2.0.11 does not apply `disabled` to certificates).
    async with _client(secure, boxes[A]) as stale:
        assert subscription_refused(await stale.subscribe(topics.device_down_filter(A), qos=1))
    async with _admin(secure) as dynsec:  # reinstating gives the role back; revoke again for the CRL part
        await dynsec.reinstate(A)
        async with _client(secure, boxes[A]) as back:
            assert not subscription_refused(await back.subscribe(topics.device_down_filter(A), qos=1))
        await dynsec.revoke(A)

    ca = pki.CertificateAuthority.load(secure.files.ca_file, secure.files.directory / "ca.key")
    assert secure.files.crl_file is not None
    pki.write_revocation_list(secure.files.crl_file, ca, [boxes[A].serial])
    secure.reload()
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the reload is asynchronous: wait until the broker refuses the certificate
        try:
            # A refused handshake shows only as no CONNACK: a short timeout keeps this fast.
            async with _client(secure, boxes[A], timeout=1):
                pass
        except aiomqtt.MqttError:
            break
        assert asyncio.get_running_loop().time() < deadline, "the broker kept accepting a revoked certificate"
        await asyncio.sleep(0.1)
    await server.wait_for("the refused handshake", lambda: any(e.kind == "certificate_refused" for e in server.events))
    # B's certificate is not on the list and still works.
    async with _client(secure, boxes[B]) as b:
        assert not subscription_refused(await b.subscribe(topics.device_down_filter(B), qos=1))
