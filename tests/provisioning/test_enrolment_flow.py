"""Issue 6's "done when": the technician's one command against a running server and a real Mosquitto
with TLS and dynamic security. A code is made for a pole, `polewatch provision enrol --start spawn`
runs as a technician would run it, the agent it starts sends its first heartbeat through the broker
to the server, the label is written; a second run is the same device; an expired or reused code is
refused with a clear message."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from polewatch.demo import Child, sample_clip
from polewatch.fleet_server.db import make_engine
from polewatch.fleet_server.models import EnrolmentCode
from support.ports import free_port
from support.secure_broker import SecureBroker, start_secure_mosquitto
from support.server import bearer
from support.stack import PYTHON, http_json, wait_until

pytestmark = [pytest.mark.acl, pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.server, pytest.mark.slow]


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = start_secure_mosquitto(tmp_path / "broker")
    yield broker
    broker.stop()


async def provision(base: str, code: str, box: Path, *, start: str = "spawn", wait: float = 120) -> tuple[int, str]:
    """`polewatch provision enrol` in its own process, as the technician runs it; exit code and output."""
    args = [
        sys.executable, "-m", "polewatch", "provision", "enrol", code, "--server", base,
        "--camera", f"cam1={sample_clip()}", "--state-dir", str(box / "state"), "--config", str(box / "agent.yaml"),
        "--label-dir", str(box / "label"), "--start", start, "--wait", str(wait),
    ]  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"}
    )
    output, _ = await asyncio.wait_for(child.communicate(), wait + 120)
    return int(child.returncode or 0), output.decode()


def stop_agent(box: Path) -> None:
    pid_file = box / "state" / "agent.pid"
    if pid_file.is_file():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def start_server(secure: SecureBroker, workdir: Path, port: int | None = None) -> tuple[Child, str, str, str]:
    """`polewatch server run` as ops would run it, with broker-setup's accounts; returns the child, its
    base URL, its database URL and an ops token (made with `polewatch server token add`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    database, port, files = f"sqlite:///{workdir / 'fleet.db'}", port or free_port(), secure.files
    token = subprocess.run(
        [*PYTHON, "server", "token", "add", "e2e-ops", "--role", "ops", "--database-url", database],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    child = Child(
        "server",
        [*PYTHON, "server", "run", "--database-url", database, "--mqtt-host", "127.0.0.1",
         "--mqtt-port", str(secure.local_port), "--mqtt-username", files.server.username,
         "--mqtt-shared-group", "polewatch", "--http-host", "127.0.0.1", "--http-port", str(port),
         "--dynsec-port", str(secure.local_port), "--enrolment-broker-host", "127.0.0.1",
         "--enrolment-broker-port", str(secure.tls_port), "--enrolment-ca-file", str(files.ca_file),
         "--enrolment-ca-key-file", str(files.directory / "ca.key")],
        workdir / "server.log",
        env={"POLEWATCH_MQTT_PASSWORD": files.server.password, "POLEWATCH_DYNSEC_PASSWORD": files.admin.password},
    )  # fmt: skip
    child.start()
    base = f"http://127.0.0.1:{port}/"
    wait_until(lambda: http_json(f"{base}healthz") is not None, 60, "server /healthz", [child])
    return child, base, database, token


async def test_a_technician_brings_a_pole_online(secure: SecureBroker, tmp_path: Path) -> None:
    server, base, database, token = start_server(secure, tmp_path / "server")
    box, second_box = tmp_path / "box", tmp_path / "other-box"
    try:
        async with httpx.AsyncClient(base_url=base, headers=bearer(token)) as api:
            assert (await api.post("api/sites", json={"site_id": "bontang", "name": "Bontang"})).status_code == 201
            for pole in ("bt-017", "bt-018"):
                made = await api.post("api/poles", json={"pole_id": pole, "site_id": "bontang", "name": pole})
                assert made.status_code == 201
            code = (await api.post("api/enrolment/codes", json={"pole_id": "bt-017"})).json()["code"]

            started = time.monotonic()
            status, output = await provision(base, code, box)
            elapsed = time.monotonic() - started
            assert "first heartbeat" in output and "arrived at the server" in output, output
            assert status == 0, output
            config = yaml.safe_load((box / "agent.yaml").read_text())
            device_id = config["device_id"]
            assert (box / "agent.yaml").stat().st_mode & 0o077 == 0
            assert config["mqtt"]["port"] == secure.tls_port and config["mqtt"]["tls"]["ca_file"]
            assert sorted(p.suffix for p in (box / "label").iterdir()) == [".pdf", ".png"]
            device = (await api.get(f"api/registry/devices/{device_id}")).json()
            assert device["pole_id"] == "bt-017" and device["health"]["online"] is True
            print(f"command start to first heartbeat: {elapsed:.1f} s (device {device_id})")

            # A second run on the same box: the same device, nothing new in the registry.
            status, output = await provision(base, code, box, start="none")
            assert status == 0, output
            assert "same box as before" in output and device_id in output
            assert yaml.safe_load((box / "agent.yaml").read_text())["device_id"] == device_id
            assert len((await api.get("api/registry/devices")).json()["items"]) == 1

            # Another box with the used code, then with an expired one: refused, nothing written.
            status, output = await provision(base, code, second_box, start="none")
            assert status == 1 and "already enrolled another box" in output and "ask ops for a new code" in output
            expired = (await api.post("api/enrolment/codes", json={"pole_id": "bt-018"})).json()["code"]
            engine = make_engine(database)
            with engine.begin() as conn:
                conn.execute(sa.update(EnrolmentCode).where(EnrolmentCode.pole_id == "bt-018")
                             .values(expires_at=datetime.now(timezone.utc) - timedelta(hours=1)))  # fmt: skip
            engine.dispose()
            status, output = await provision(base, expired, second_box, start="none")
            assert status == 1 and "expired" in output and "ask ops for a new code for this pole" in output
            assert not (second_box / "agent.yaml").exists()
            assert len((await api.get("api/registry/devices")).json()["items"]) == 1
    finally:
        stop_agent(box)
        server.stop()


async def test_a_pole_without_a_link_enrols_when_the_server_answers(secure: SecureBroker, tmp_path: Path) -> None:
    port, box = free_port(), tmp_path / "box"
    # At the office: ops makes the code. Then the server is out of reach (the pole has no link yet).
    server, base, _database, token = start_server(secure, tmp_path / "server", port)
    try:
        async with httpx.AsyncClient(base_url=base, headers=bearer(token)) as api:
            assert (await api.post("api/sites", json={"site_id": "bontang", "name": "Bontang"})).status_code == 201
            made = await api.post("api/poles", json={"pole_id": "bt-020", "site_id": "bontang", "name": "bt-020"})
            assert made.status_code == 201
            code = (await api.post("api/enrolment/codes", json={"pole_id": "bt-020"})).json()["code"]
    finally:
        server.stop()
    status, output = await provision(base, code, box, start="none")
    assert status == 0 and "pending" in output, output
    pending = box / "state" / "enrolment" / "pending.json"
    assert pending.is_file() and not (box / "agent.yaml").exists()

    server, base, _database, token = start_server(secure, tmp_path / "server", port)  # the link is up
    try:
        finish = [*PYTHON, "provision", "finish-enrolment", "--state-dir", str(box / "state"), "--attempts", "1"]
        done = await asyncio.to_thread(subprocess.run, finish, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        device_id = yaml.safe_load((box / "agent.yaml").read_text())["device_id"]
        assert f"enrolled as {device_id} on pole bt-020" in done.stdout and not pending.exists()
        async with httpx.AsyncClient(base_url=base, headers=bearer(token)) as api:
            assert (await api.get(f"api/registry/devices/{device_id}")).json()["pole_id"] == "bt-020"
        again = await asyncio.to_thread(subprocess.run, finish, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing pending" in again.stdout
    finally:
        server.stop()
