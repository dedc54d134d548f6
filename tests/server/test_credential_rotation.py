"""Rotating a box's broker credential end to end: a real Mosquitto with TLS and dynamic security, the
fleet server (ingest, API, settle loop) and the agent's MQTT session, downlink and outbox in this
process. The box keeps delivering through the switch, an offline box is not locked out, and a
tampered or refused credential leaves it on the one that works."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509
from pydantic import BaseModel, SecretStr
from typer.testing import CliRunner

from polewatch.agent.config import AgentConfig, load_config
from polewatch.agent.uplink.credentials import CredentialRotator, effective_mqtt, login_file
from polewatch.agent.uplink.downlink import CommandRefused, Downlink
from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.session import Uplink
from polewatch.fleet_server.broker_access.dynsec import DynsecAdmin
from polewatch.fleet_server.cli import app as server_cli
from polewatch.fleet_server.db import make_engine
from polewatch.protocol import Command, CommandAck, build, encode, new_message_id, topics
from polewatch.protocol.enrolment import BoxFacts, CameraFacts, EnrolmentGrant, EnrolmentRequest
from polewatch.protocol.sealing import seal
from polewatch.provisioning.agent_files import write_agent_files
from polewatch.provisioning.identity import key_path, load_or_create_key, signing_request
from support.outbox import open_outbox, telemetry
from support.secure_broker import SecureBroker, start_secure_mosquitto
from support.server import add_token, bearer, live_server, settings_for, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.acl, pytest.mark.server]


class _NoCameras:
    """The agent's controls without cameras: rotation is the downlink's and the session's business."""

    async def apply_config(self, config: AgentConfig) -> list[str]:
        return []

    async def run_command(self, name: str, args: BaseModel, command_id: str) -> dict[str, Any]:
        raise CommandRefused(f"{name} is not part of this test")


@dataclass
class Box:
    config: AgentConfig
    outbox: Outbox
    uplink: Uplink
    downlink: Downlink
    accepted: list[str] = field(default_factory=list)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = start_secure_mosquitto(tmp_path / "broker", cert_port=True)
    yield broker
    broker.stop()


@contextlib.asynccontextmanager
async def fleet(broker: SecureBroker, database: str, *, certificates: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    files = broker.files
    settings = settings_for(
        None, database, mqtt_port=broker.local_port, mqtt_username=files.server.username,
        mqtt_password=SecretStr(files.server.password), dynsec_password=files.admin.password,
        dynsec_host="127.0.0.1", dynsec_port=broker.local_port, enrolment_broker_host="127.0.0.1",
        enrolment_broker_port=broker.tls_port, enrolment_ca_file=str(files.ca_file),
        enrolment_ca_key_file=str(files.directory / "ca.key"), rotation_check_s=0.1,
        enrolment_broker_cert_port=broker.cert_port if certificates else None,
        broker_crl_file=str(files.crl_file), broker_reload_command=f"kill -HUP {broker.process.proc.pid}",  # type: ignore[union-attr]
    )  # fmt: skip
    token = add_token(database, "ops", "rotation-ops")
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, headers=bearer(token), timeout=20) as c:
        assert (await c.post("api/sites", json={"site_id": "bontang", "name": "Bontang"})).status_code == 201
        assert (
            await c.post("api/poles", json={"pole_id": "bt-001", "site_id": "bontang", "name": "1"})
        ).status_code == 201
        yield c


async def enrol(client: httpx.AsyncClient, state: Path) -> AgentConfig:
    """What the technician's tool does: the box's key, its CSR with a code, the agent's files."""
    key, _ = load_or_create_key(state)
    code = (await client.post("api/enrolment/codes", json={"pole_id": "bt-001"})).json()["code"]
    box = BoxFacts(hostname="pole-box", machine="aarch64", model="Raspberry Pi 5", agent_version="0.4.0")
    camera = CameraFacts(camera_id="cam1", url_redacted="rtsp://10.0.0.2/s", width=640, height=480, codec="h264", fps=5)
    request = EnrolmentRequest(code=code, csr_pem=signing_request(key), box=box, cameras=[camera])
    response = await client.post("api/enrolment", json=request.model_dump(mode="json"))
    assert response.status_code == 200, response.text
    path = write_agent_files(
        EnrolmentGrant.model_validate(response.json()), config_path=state / "agent.yaml", state_dir=state,
        key_file=key_path(state), cameras=[{"id": "cam1", "url": "rtsp://10.0.0.2/s"}],
    )  # fmt: skip
    config = load_config(path)
    fast = config.mqtt.model_copy(update={"keepalive_s": 5, "reconnect_max_s": 0.5})
    return config.model_copy(update={"mqtt": fast})


@contextlib.asynccontextmanager
async def running(config: AgentConfig, *, produce: bool = True) -> AsyncIterator[Box]:
    """The agent's session, downlink and outbox wired as agent/runtime wires them, and a steady stream
    of health messages (every one the outbox accepted is remembered)."""
    outbox = open_outbox(config.state_dir / "outbox.db", config.device_id)
    downlink = Downlink(config.device_id, config, _NoCameras(), outbox)
    uplink = Uplink(effective_mqtt(config), outbox, device_id=config.device_id, agent_version="test",
                    on_down=downlink.submit)  # fmt: skip
    downlink.credentials = CredentialRotator(config, uplink)
    box = Box(config, outbox, uplink, downlink)

    async def produce_forever() -> None:
        n = 0
        while True:
            accepted = await outbox.put(telemetry(n))
            box.accepted.append(accepted.message.id)
            n += 1
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(uplink.run()), asyncio.create_task(downlink.run())]
    producer = asyncio.create_task(produce_forever()) if produce else None
    try:
        # Subscribed, not only connected: a command published before the SUBACK would not reach it.
        await wait_for(lambda: uplink.connected and uplink.subscriptions >= 1, 10, "the box connected and subscribed")
        yield box
        if producer is not None:
            # What the box accepted must reach the server before it stops: stop producing, let the
            # session deliver the rest (what is still waiting would only go out on the next run).
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            await wait_for(lambda: outbox.pending_count() == 0, 30, "the box to deliver what it accepted")
    finally:
        for task in [*tasks, *([producer] if producer else [])]:
            task.cancel()
        await asyncio.gather(*tasks, *([producer] if producer else []), return_exceptions=True)
        outbox.close()


async def rotation_state(client: httpx.AsyncClient, device_id: str, state: str) -> dict[str, Any]:
    rotations: list[dict[str, Any]] = []
    for _ in range(300):  # 30 s: the box fsyncs every message and command, slow on a busy disk
        rotations = (await client.get(f"api/devices/{device_id}/credentials")).json()["rotations"]
        if rotations and rotations[0]["state"] == state:
            return rotations[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"rotation of {device_id} not {state} within 30 s: {rotations[:1]}")


async def all_stored(database: str, box: Box) -> None:
    engine = make_engine(database)

    def missing() -> set[str]:
        with engine.connect() as conn:
            stored = set(conn.scalars(sa.text("SELECT message_id FROM health_samples")))
        return set(box.accepted) - stored

    try:
        await wait_for(lambda: not missing(), 30, "every accepted message stored by the server")
    except AssertionError as exc:
        gone = missing()
        raise AssertionError(f"{exc}: {len(gone)} of {len(box.accepted)} missing, e.g. {sorted(gone)[:5]}") from None
    finally:
        engine.dispose()


def admin(broker: SecureBroker) -> DynsecAdmin:
    files = broker.files
    return DynsecAdmin("127.0.0.1", broker.local_port, username=files.admin.username, password=files.admin.password)


async def old_login_refused(broker: SecureBroker, device_id: str, username: str, password: str) -> bool:
    """Try the login with the box's own client id once the box is off it; True if the broker says no."""
    try:
        async with aiomqtt.Client("127.0.0.1", broker.tls_port, username=username, password=password,
                                  identifier=device_id, clean_session=False, tls_context=broker.tls_context(),
                                  timeout=5):  # fmt: skip
            return False
    except aiomqtt.MqttError:
        return True


async def test_a_password_box_rotates_while_connected_and_keeps_delivering(
    secure: SecureBroker, database: str, tmp_path: Path
) -> None:
    async with fleet(secure, database) as client:
        config = await enrol(client, tmp_path / "box")
        device_id = config.device_id
        assert config.mqtt.password is not None
        old_password = config.mqtt.password.get_secret_value()
        async with running(config) as box:
            await asyncio.sleep(0.3)  # messages before the switch...
            response = await client.post(f"api/devices/{device_id}/credentials/rotate")
            assert response.status_code == 202, response.text
            pending = response.json()
            assert pending["state"] == "pending" and pending["kind"] == "password"
            done = await rotation_state(client, device_id, "completed")
            assert box.uplink.config.username == pending["new_login"] == done["new_login"]
            saved = login_file(config)
            assert saved.stat().st_mode & 0o777 == 0o600
            assert json.loads(saved.read_text())["username"] == pending["new_login"]
            async with admin(secure) as broker:
                assert await broker.logins(device_id) == [pending["new_login"]]  # the old login is gone
            await asyncio.sleep(0.3)  # ...and after it
            await wait_for(lambda: box.uplink.connected, 5, "connected with the new login")
        await all_stored(database, box)
        assert len(box.accepted) > 10
        assert await old_login_refused(secure, device_id, device_id, old_password)
        assert effective_mqtt(config).username == pending["new_login"]  # what a restarted agent uses
        credentials = (await client.get(f"api/devices/{device_id}/credentials")).json()
        assert credentials["broker_login"] == pending["new_login"] and credentials["kind"] == "password"


async def test_an_offline_box_gets_the_rotation_when_it_comes_back(
    secure: SecureBroker, database: str, tmp_path: Path
) -> None:
    async with fleet(secure, database) as client:
        config = await enrol(client, tmp_path / "box")
        device_id = config.device_id
        async with running(config, produce=False):
            pass  # subscribed once: the broker keeps its commands while it is away
        response = await client.post(f"api/devices/{device_id}/credentials/rotate")
        assert response.status_code == 202, response.text
        new_login = response.json()["new_login"]
        await asyncio.sleep(0.5)
        assert (await client.get(f"api/devices/{device_id}/credentials")).json()["rotations"][0]["state"] == "pending"
        async with admin(secure) as broker:  # both logins exist while the box is away: it is not locked out
            assert sorted(await broker.logins(device_id)) == sorted([device_id, new_login])
        async with running(config) as box:  # back with the old login: gets the command, switches
            done = await rotation_state(client, device_id, "completed")
            assert box.uplink.config.username == new_login == done["new_login"]
            await asyncio.sleep(0.2)
        await all_stored(database, box)
        # The CLI says what it started, and refuses clearly what it cannot do.
        runner = CliRunner()
        token = client.headers["Authorization"].removeprefix("Bearer ")
        command = ["rotate-credentials", device_id, "--server", str(client.base_url), "--token", token]
        ok = await asyncio.to_thread(runner.invoke, server_cli, command)
        assert ok.exit_code == 0, ok.output
        assert "password rotation" in ok.output and "pending" in ok.output
        again = await asyncio.to_thread(runner.invoke, server_cli, command)
        assert again.exit_code == 1 and "is pending since" in again.output


async def _send(broker: SecureBroker, device_id: str, args: dict[str, Any]) -> str:
    """Publish a command as anyone holding the server's broker account could."""
    files = broker.files
    command_id = new_message_id()
    message = build(Command(command_id=command_id, name="rotate_credentials", args=args), device_id=device_id, seq=1)
    async with aiomqtt.Client("127.0.0.1", broker.local_port, username=files.server.username,
                              password=files.server.password, identifier=f"s-{command_id[:8]}") as sender:  # fmt: skip
        await sender.publish(topics.down(device_id, "command"), encode(message), qos=1)
    return command_id


async def test_a_tampered_or_refused_login_leaves_the_box_on_its_working_one(
    secure: SecureBroker, database: str, tmp_path: Path
) -> None:
    async with fleet(secure, database) as client:
        config = await enrol(client, tmp_path / "box")
        device_id = config.device_id
        key, _ = load_or_create_key(config.state_dir)
        async with running(config) as box:
            login = json.dumps({"username": f"{device_id}~nobody", "password": "p" * 20}).encode()
            sealed = seal(key.public_key(), login, device_id)
            raw = bytearray(base64.b64decode(sealed.ciphertext))
            raw[3] ^= 0x01
            tampered = sealed.model_copy(update={"ciphertext": base64.b64encode(bytes(raw)).decode()})
            first = await _send(secure, device_id, {"kind": "password", "sealed_login": tampered.model_dump()})
            garbled = await _send(secure, device_id, {"kind": "password", "sealed_login": {
                "ephemeral_key": "!!", "nonce": "AAAA", "ciphertext": "AAAA"}})  # fmt: skip
            # Opens fine, but the broker has no such login: the box tries it, is refused, goes back.
            unknown = await _send(secure, device_id, {"kind": "password", "sealed_login": sealed.model_dump()})

            def ack(command_id: str) -> CommandAck:
                found = box.downlink.journal.outcome(command_id)
                assert found is not None
                return found

            def answered(command_id: str) -> bool:  # a command still running reads as "stopped" in the journal
                found = box.downlink.journal.outcome(command_id)
                return found is not None and found.status == "refused"

            await wait_for(lambda: all(answered(c) for c in (first, garbled, unknown)), 30, "three refusals")
            assert "does not open with this box's key" in str(ack(first).reason)
            assert "not base64" in str(ack(garbled).reason)
            assert "the broker refused the new login" in str(ack(unknown).reason)
            await wait_for(lambda: box.uplink.connected, 10, "back on the old login")
            assert box.uplink.config.username == device_id
            assert not login_file(config).exists() and not list(config.state_dir.glob("identity/*.next"))
            await asyncio.sleep(0.2)
        await all_stored(database, box)


async def handshake_refusal(broker: SecureBroker, cert_file: Path, key_file: Path) -> str | None:
    """The broker's TLS alert when this certificate is offered on the certificate listener, or None if
    it lets the handshake through (it then waits for our CONNECT). Under TLS 1.3 the client learns of a
    refused certificate only at its first read, hence the read."""
    context = broker.tls_context(cert_file, key_file)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", broker.cert_port, ssl=context), 5)
    except ssl.SSLError as exc:
        return str(exc)
    try:
        await asyncio.wait_for(reader.read(1), 1)
    except ssl.SSLError as exc:
        return str(exc)
    except TimeoutError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, OSError):
            await writer.wait_closed()
    return None


async def certificate_connects(broker: SecureBroker, device_id: str, cert_file: Path, key_file: Path) -> bool:
    """A full MQTT login on the certificate listener with this certificate (its own client id)."""
    try:
        async with aiomqtt.Client("127.0.0.1", broker.cert_port, identifier=device_id, clean_session=False,
                                  tls_context=broker.tls_context(cert_file, key_file), timeout=5):  # fmt: skip
            return True
    except aiomqtt.MqttError:
        return False


async def test_a_certificate_box_rotates_its_certificate_and_the_old_one_is_revoked(
    secure: SecureBroker, database: str, tmp_path: Path
) -> None:
    async with fleet(secure, database, certificates=True) as client:
        config = await enrol(client, tmp_path / "box")
        device_id = config.device_id
        tls = config.mqtt.tls
        assert tls is not None and tls.cert_file is not None and tls.key_file is not None
        assert config.mqtt.port == secure.cert_port and config.mqtt.username is None
        crl_file = secure.files.crl_file
        assert crl_file is not None
        old_cert = tmp_path / "old.crt"
        old_cert.write_bytes(tls.cert_file.read_bytes())
        before = (await client.get(f"api/devices/{device_id}/credentials")).json()
        assert before["kind"] == "certificate" and before["rotatable"] and before["certificate_serial"]
        assert await handshake_refusal(secure, old_cert, tls.key_file) is None  # works before
        async with running(config) as box:
            await wait_for(lambda: len(box.accepted) >= 10, 10, "messages before the switch")
            response = await client.post(f"api/devices/{device_id}/credentials/rotate")
            assert response.status_code == 202, response.text
            pending = response.json()
            assert pending["kind"] == "certificate" and pending["new_login"] is None
            assert pending["old_serial"] == before["certificate_serial"] != pending["new_serial"]
            done = await rotation_state(client, device_id, "completed")
            assert done["reason"] is None, done["reason"]  # listed on the CRL and the broker reloaded
            assert box.uplink.config.tls is not None and box.uplink.config.tls.cert_file == tls.cert_file
            assert not list(tls.cert_file.parent.glob("*.next"))
            on_disk = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
            assert format(on_disk.serial_number, "x") == pending["new_serial"]
            revoked = x509.load_pem_x509_crl(await asyncio.to_thread(crl_file.read_bytes))
            assert revoked.get_revoked_certificate_by_serial_number(int(pending["old_serial"], 16)) is not None
            after = len(box.accepted) + 10
            await wait_for(lambda: len(box.accepted) >= after, 10, "messages after the switch")
            await wait_for(lambda: box.uplink.connected, 5, "connected with the new certificate")
            # The broker re-read the CRL: the old certificate is refused at the handshake, the new one is not.
            refusal = None
            for _ in range(10):  # SIGHUP is handled on the broker's next loop: wait for it, not a fixed time
                refusal = await handshake_refusal(secure, old_cert, tls.key_file)
                if refusal is not None:
                    break
            assert refusal is not None and "CERTIFICATE_REVOKED" in refusal, refusal
            assert await handshake_refusal(secure, tls.cert_file, tls.key_file) is None
        await all_stored(database, box)
        assert len(box.accepted) >= after
        assert await certificate_connects(secure, device_id, tls.cert_file, tls.key_file)  # what a restart uses
        credentials = (await client.get(f"api/devices/{device_id}/credentials")).json()
        assert credentials["certificate_serial"] == pending["new_serial"] and credentials["kind"] == "certificate"
