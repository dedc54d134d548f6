"""Enrolment, revocation and replacement on the server, against a real Mosquitto with TLS and the
dynamic-security plugin: a code for a pole, a box's key and CSR, the grant's credentials working at
the broker, the refusals, and a revoked box cut off at the broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from polewatch.fleet_server import create_app
from polewatch.fleet_server.broker_access.dynsec import DynsecAdmin
from polewatch.fleet_server.db import make_engine
from polewatch.fleet_server.models import AuditEntry, EnrolmentCode
from polewatch.protocol import topics
from polewatch.protocol.enrolment import BoxFacts, CameraFacts, EnrolmentRequest
from polewatch.provisioning.identity import fingerprint, load_or_create_key, signing_request
from support.secure_broker import SecureBroker, read_until_cut_off, start_secure_mosquitto
from support.server import add_token, add_user, bearer, settings_for

pytestmark = [pytest.mark.acl, pytest.mark.mqtt, pytest.mark.server]


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = start_secure_mosquitto(tmp_path / "broker")
    yield broker
    broker.stop()


def enrolment_settings(broker: SecureBroker, database: str, **more: Any) -> Any:
    files = broker.files
    return settings_for(
        None, database, dynsec_password=files.admin.password, dynsec_host="127.0.0.1",
        dynsec_port=broker.local_port, enrolment_broker_host="127.0.0.1", enrolment_broker_port=broker.tls_port,
        enrolment_ca_file=str(files.ca_file), enrolment_ca_key_file=str(files.directory / "ca.key"), **more,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def fleet(broker: SecureBroker, database: str, **more: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app (no ingest) with an ops token, the site and two poles made."""
    token = add_token(database, "ops", "enrolment-ops")
    app = create_app(enrolment_settings(broker, database, **more), run_ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", headers=bearer(token)) as client:
            assert (await client.post("/api/sites", json={"site_id": "bontang", "name": "Bontang"})).status_code == 201
            for pole in ("bt-001", "bt-002"):
                body = {"pole_id": pole, "site_id": "bontang", "name": pole}
                assert (await client.post("/api/poles", json=body)).status_code == 201
            yield client


def request_for(code: str, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    box = BoxFacts(hostname="pole-box", machine="aarch64", model="Raspberry Pi 5", agent_version="0.4.0")
    camera = CameraFacts(camera_id="cam1", url_redacted="rtsp://admin:***@10.0.0.2/s", width=1280, height=720,
                         codec="h264", fps=12.5)  # fmt: skip
    return EnrolmentRequest(code=code, csr_pem=signing_request(key), box=box, cameras=[camera]).model_dump(mode="json")


async def new_code(client: httpx.AsyncClient, pole: str = "bt-001", **body: Any) -> str:
    response = await client.post("/api/enrolment/codes", json={"pole_id": pole, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["code"])


def box_client(broker: SecureBroker, grant: dict[str, Any], password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.tls_port, username=grant["broker"]["username"],
        password=password or grant["broker"]["password"], identifier=grant["device_id"],
        tls_context=broker.tls_context(), timeout=5,
    )  # fmt: skip


async def connects(broker: SecureBroker, grant: dict[str, Any], password: str | None = None) -> bool:
    try:
        async with box_client(broker, grant, password) as box:
            await box.publish(topics.up(grant["device_id"], "health"), b"{}", qos=1)
        return True
    except aiomqtt.MqttError:
        return False


async def test_a_box_enrols_once_and_a_rerun_is_the_same_device(
    secure: SecureBroker, database: str, tmp_path: Path
) -> None:
    key, _ = load_or_create_key(tmp_path / "box")
    async with fleet(secure, database) as client:
        made = await client.post("/api/enrolment/codes", json={"pole_id": "bt-001", "preset": {"version": 1}})
        assert made.status_code == 201
        code = made.json()["code"]
        assert base64.b64decode(made.json()["qr_png_base64"]).startswith(b"\x89PNG\r\n\x1a\n")

        first = await client.post("/api/enrolment", json=request_for(code, key), headers={"Authorization": ""})
        assert first.status_code == 200, first.text
        grant = first.json()
        assert grant["pole_id"] == "bt-001" and grant["site"] == "bontang" and grant["reissued"] is False
        assert grant["box_fingerprint"] == fingerprint(key.public_key()) and grant["config"] == {"version": 1}
        assert grant["broker"]["ca_pem"].startswith("-----BEGIN CERTIFICATE-----")
        cert = x509.load_pem_x509_certificate(grant["broker"]["client_certificate_pem"].encode())
        assert cert.subject.rfc4514_string() == f"CN={grant['device_id']}"  # the server's name, not the CSR's
        assert await connects(secure, grant)

        again = (await client.post("/api/enrolment", json=request_for(code, key))).json()
        assert again["device_id"] == grant["device_id"] and again["reissued"] is True
        assert again["broker"]["password"] != grant["broker"]["password"]
        assert await connects(secure, again) and not await connects(secure, grant)  # the old password is dead

        device = (await client.get(f"/api/registry/devices/{grant['device_id']}")).json()
        assert device["pole_id"] == "bt-001" and device["cameras"] == ["cam1"] and device["agent_version"] == "0.4.0"
        assert len((await client.get("/api/registry/devices")).json()["items"]) == 1
        status = await client.post(
            "/api/enrolment/status", json={"code": code, "box_fingerprint": fingerprint(key.public_key())}
        )
        assert status.status_code == 200 and status.json()["first_heartbeat_at"] is None
        assert status.json()["device_id"] == grant["device_id"]

    engine = make_engine(database)
    with sa.orm.Session(engine) as s:
        stored = s.scalars(sa.select(EnrolmentCode)).one()
        assert stored.code_hash != code and code not in str(stored.__dict__)
        actions = [a for (a,) in s.execute(sa.select(AuditEntry.action))]
    engine.dispose()
    assert actions.count("device.enrol") == 2 and actions.count("device.register") == 1


async def test_refusals_say_why_and_leave_nothing_behind(secure: SecureBroker, database: str, tmp_path: Path) -> None:
    key, _ = load_or_create_key(tmp_path / "a")
    other, _ = load_or_create_key(tmp_path / "b")
    async with fleet(secure, database) as client:
        code = await new_code(client)
        assert (await client.post("/api/enrolment", json=request_for(code, key))).status_code == 200

        reused = await client.post("/api/enrolment", json=request_for(code, other))
        assert reused.status_code == 409 and reused.json() == {
            "reason": "used", "detail": "this enrolment code already enrolled another box",
        }  # fmt: skip
        unknown = await client.post("/api/enrolment", json=request_for("2345-6789-ABCD", other))
        assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown"

        expired = await new_code(client, "bt-002", expires_in_hours=1)
        engine = make_engine(database)
        with engine.begin() as conn:
            conn.execute(sa.update(EnrolmentCode).where(EnrolmentCode.pole_id == "bt-002")
                         .values(expires_at=datetime.now(timezone.utc) - timedelta(minutes=1)))  # fmt: skip
        engine.dispose()
        refused = await client.post("/api/enrolment", json=request_for(expired, other))
        assert refused.status_code == 410 and refused.json()["reason"] == "expired"

        withdrawn = await new_code(client, "bt-002")
        codes = (await client.get("/api/enrolment/codes", params={"pole_id": "bt-002"})).json()["items"]
        assert [c["state"] for c in codes] == ["open", "expired"]
        assert (await client.post(f"/api/enrolment/codes/{codes[0]['id']}/revoke")).json()["state"] == "revoked"
        refused = await client.post("/api/enrolment", json=request_for(withdrawn, other))
        assert refused.status_code == 410 and refused.json()["reason"] == "revoked"

        bad = {**request_for(await new_code(client, "bt-002"), other), "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----"}
        refused = await client.post("/api/enrolment", json=bad)
        assert refused.status_code == 422 and refused.json()["reason"] == "invalid"

        # Only the first box was ever registered, and bt-002 carries nothing.
        devices = (await client.get("/api/registry/devices")).json()["items"]
        assert [d["pole_id"] for d in devices] == ["bt-001"]
        occupied = await client.post("/api/enrolment/codes", json={"pole_id": "bt-001"})
        assert occupied.status_code == 409 and "replace it instead" in occupied.json()["detail"]


async def test_enrolment_is_rate_limited_per_address(secure: SecureBroker, database: str) -> None:
    async with fleet(secure, database, enrolment_per_minute_per_client=2) as client:
        key = ec.generate_private_key(ec.SECP256R1())
        answers = [await client.post("/api/enrolment", json=request_for("2345-6789-ABCD", key)) for _ in range(3)]
        assert [a.status_code for a in answers] == [404, 404, 429]
        assert answers[-1].json()["reason"] == "rate_limited" and int(answers[-1].headers["retry-after"]) >= 1


async def test_technicians_make_codes_on_their_own_sites_only(secure: SecureBroker, database: str) -> None:
    async with fleet(secure, database) as client:
        assert (
            await client.post("/api/sites", json={"site_id": "balikpapan", "name": "Balikpapan"})
        ).status_code == 201
        add_user(database, "tina", "technician", sites=["bontang"])
        client.headers.pop("Authorization")
        assert (
            await client.post("/api/auth/login", json={"username": "tina", "password": "a-long-test-password"})
        ).status_code == 200
        assert (await client.post("/api/enrolment/codes", json={"pole_id": "bt-001"})).status_code == 201
        await client.post("/api/poles", json={"pole_id": "bp-001", "site_id": "balikpapan", "name": "x"})
        # Technicians cannot add poles (403); ops adds one on the other site:
        ops = add_token(database, "ops", "ops-2")
        assert (await client.post("/api/poles", json={"pole_id": "bp-001", "site_id": "balikpapan", "name": "x"},
                                  headers=bearer(ops))).status_code == 201  # fmt: skip
        foreign = await client.post("/api/enrolment/codes", json={"pole_id": "bp-001"})
        assert foreign.status_code == 403 and "not one of your sites" in foreign.json()["detail"]
        made = await client.post("/api/enrolment/codes", json={"pole_id": "bp-001"}, headers=bearer(ops))
        assert made.status_code == 201
        # The other site's code is neither listed to her nor hers to withdraw.
        listed = (await client.get("/api/enrolment/codes")).json()["items"]
        assert [c["pole_id"] for c in listed] == ["bt-001"]
        assert (await client.post(f"/api/enrolment/codes/{made.json()['id']}/revoke")).status_code == 404
        listed_by_ops = (await client.get("/api/enrolment/codes", headers=bearer(ops))).json()["items"]
        assert [c["state"] for c in listed_by_ops] == ["open", "open"]


async def test_revoke_cuts_the_box_off_and_replace_gives_the_pole_a_new_box(
    secure: SecureBroker, database: str, tmp_path: Path
) -> None:
    old_key, _ = load_or_create_key(tmp_path / "old")
    new_key, _ = load_or_create_key(tmp_path / "new")
    async with fleet(secure, database) as client:
        code = await new_code(client, preset={"version": 7})
        old = (await client.post("/api/enrolment", json=request_for(code, old_key))).json()

        loop = asyncio.get_running_loop()
        cut_at: list[float] = []

        async def watch(box: aiomqtt.Client) -> None:
            try:
                await read_until_cut_off(box)
            finally:
                cut_at.append(loop.time())

        with contextlib.suppress(aiomqtt.MqttError):  # leaving a client the broker has cut off
            async with box_client(secure, old) as box:
                await box.subscribe(topics.device_down_filter(old["device_id"]), qos=1)
                reader = asyncio.create_task(watch(box))
                started = loop.time()
                replaced = await client.post(f"/api/registry/devices/{old['device_id']}/replace")
                assert replaced.status_code == 201, replaced.text
                with pytest.raises(aiomqtt.MqttError):
                    await asyncio.wait_for(reader, 10)
        cut_off_s = cut_at[0] - started
        print(f"revoked box cut off {cut_off_s:.2f} s after the replace command")
        assert cut_off_s < 10
        assert not await connects(secure, old)
        body = replaced.json()
        assert body["revoked"]["status"] == "revoked" and body["revoked"]["pole_id"] is None
        assert body["code"]["pole_id"] == "bt-001" and body["code"]["preset"] is True

        new = (await client.post("/api/enrolment", json=request_for(body["code"]["code"], new_key))).json()
        assert new["device_id"] != old["device_id"] and new["pole_id"] == "bt-001" and new["config"] == {"version": 7}
        assert await connects(secure, new)
        # The old box cannot come back with its old key, whatever code it gets.
        again = await client.post("/api/enrolment", json=request_for(await new_code(client, "bt-002"), old_key))
        assert again.status_code == 409 and again.json()["reason"] == "revoked"

        history = (await client.get("/api/poles/bt-001/history")).json()["items"]
        assert [(h["action"], h["device_id"], h["other_device_id"]) for h in history] == [
            ("installed", new["device_id"], old["device_id"]),
            ("replaced", old["device_id"], None),
            ("installed", old["device_id"], None),
        ]
        assert (await client.post(f"/api/registry/devices/{old['device_id']}/revoke")).status_code == 409


async def test_two_boxes_racing_with_one_code_make_one_device(secure: SecureBroker, database: str) -> None:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    async with fleet(secure, database) as client:
        code = await new_code(client)
        answers = await asyncio.gather(*(client.post("/api/enrolment", json=request_for(code, k)) for k in keys))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 409, 409, 409], [a.text for a in answers]
        assert {a.json()["reason"] for a in answers if a.status_code == 409} <= {"used"}
        devices = (await client.get("/api/registry/devices")).json()["items"]
        assert len(devices) == 1
        # The losers' broker accounts were deleted again: only the winner's exists.
        files = secure.files
        async with DynsecAdmin("127.0.0.1", secure.local_port, username=files.admin.username,
                               password=files.admin.password) as admin:  # fmt: skip
            listed = await admin.execute([{"command": "listClients"}])
        boxes = [c for c in listed[0]["data"]["clients"] if str(c).startswith("box-")]
        assert boxes == [devices[0]["device_id"]]
