"""`polewatch demo` as a user runs it: one command, a TLS-only broker, both poles online over it,
detections live, clean Ctrl-C."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from support.ports import free_port
from support.stack import http_json, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _signed_in(base: str, username: str, password: str) -> urllib.request.OpenerDirector:
    """A client holding the session cookie the console's sign-in page would get."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    body = json.dumps({"username": username, "password": password}).encode()
    request = urllib.request.Request(
        f"{base}/api/auth/login", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with opener.open(request, timeout=10) as response:
        assert json.load(response)["name"] == username
    return opener


def _get_json(opener: urllib.request.OpenerDirector, url: str) -> Any:
    with opener.open(url, timeout=5) as response:
        return json.load(response)


def _first_sse_detection(opener: urllib.request.OpenerDirector, url: str, timeout: float) -> dict[str, object]:
    """Read the live stream until a detection arrives (what the console's EventSource gets)."""
    deadline = time.monotonic() + timeout
    with opener.open(url, timeout=timeout) as response:
        event = None
        while time.monotonic() < deadline:
            line = response.readline().decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "detection":
                data: dict[str, object] = json.loads(line.split(":", 1)[1])
                return data
    raise AssertionError("no detection on the live stream")


async def _connect(port: int, username: str, password: str, tls: ssl.SSLContext | None) -> None:
    """One MQTT session with its own client id (never a pole's, which would push the pole off)."""
    async with aiomqtt.Client(
        "127.0.0.1", port, username=username, password=password, identifier="demo-tls-probe",
        tls_context=tls, timeout=5,
    ):  # fmt: skip
        pass


def _plain_connect(port: int, username: str, password: str) -> bytes:
    """Send an MQTT 3.1.1 CONNECT in the clear; return the first byte of the answer (b"": closed).

    A raw socket rather than aiomqtt, which waits out its whole timeout when the socket closes
    before a CONNACK. A CONNACK starts with 0x20, a TLS alert with 0x15."""

    def field(text: str) -> bytes:
        return struct.pack("!H", len(text.encode())) + text.encode()

    body = field("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)  # level 4, username + password, clean
    body += field("demo-tls-probe") + field(username) + field(password)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        return sock.recv(1)


def _assert_broker_speaks_tls_only(port: int, ca_file: Path, state: Path) -> None:
    pole = yaml.safe_load((state / "demo-pole-1.yaml").read_text())["mqtt"]
    # The pole is configured for this broker over TLS, trusting the demo's CA (and nothing looser).
    assert (pole["port"], pole["tls"], pole["host"]) == (port, {"ca_file": str(ca_file)}, "127.0.0.1")
    user, password = pole["username"], pole["password"]
    reply = _plain_connect(port, user, password)
    assert reply in (b"", b"\x15"), f"plain MQTT with good credentials got {reply!r}, not a closed connection"
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):  # a CA other than the demo's
        asyncio.run(_connect(port, user, password, ssl.create_default_context()))
    asyncio.run(_connect(port, user, password, ssl.create_default_context(cafile=str(ca_file))))


def test_demo_runs_the_whole_stack_and_stops_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("amqtt", reason="the demo needs the [demo] extra")
    port = free_port()
    state = tmp_path / "demo"
    started = time.monotonic()
    demo = subprocess.Popen(
        [sys.executable, "-m", "polewatch", "demo", "--port", str(port), "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert demo.stdout is not None
        line = demo.stdout.readline()  # blocks until the demo says it is ready (or dies)
        ready_s = time.monotonic() - started
        why = demo.stderr.read() if demo.poll() is not None and demo.stderr is not None else ""
        assert line.strip() == f"console: http://127.0.0.1:{port}/", (line, why)
        base = f"http://127.0.0.1:{port}"
        login = demo.stdout.readline().split()
        assert login[0] == "login:" and login[1] == "demo" and len(login[2]) >= 10, login
        broker = demo.stdout.readline().split()
        assert broker[0] == "broker:" and broker[1].startswith("mqtts://127.0.0.1:"), broker
        ca_file = Path(broker[2].removeprefix("ca="))
        assert ca_file == state / "broker-tls" / "ca.crt" and ca_file.is_file(), broker
        _assert_broker_speaks_tls_only(int(broker[1].rsplit(":", 1)[1]), ca_file, state)

        assert http_json(f"{base}/api/devices") is None, "the API is closed without signing in"
        session = _signed_in(base, login[1], login[2])
        devices = _get_json(session, f"{base}/api/devices")["items"]
        # Online through the only listener there is, the TLS one checked above.
        assert sorted(d["device_id"] for d in devices if d["online"]) == ["demo-pole-1", "demo-pole-2"]

        detection = _first_sse_detection(session, f"{base}/api/stream", timeout=60)
        assert detection["device_id"] in {"demo-pole-1", "demo-pole-2"}
        assert detection["label"] in {"person", "car", "truck", "bus", "bicycle", "motorcycle"}

        # The same detections are in the database behind the API.
        rows = wait_until(lambda: sqlite3.connect(state / "fleet.db").execute(
            "SELECT device_id, label FROM events").fetchall(), 30, "events in the database")
        assert {r[0] for r in rows} <= {"demo-pole-1", "demo-pole-2"}
        assert any(label == "person" for _, label in rows)
        page = http_json(f"{base}/")
        assert page is None  # the console is HTML, not JSON
        with urllib.request.urlopen(f"{base}/", timeout=5) as response:
            assert "text/html" in response.headers["content-type"]
        print(f"demo ready in {ready_s:.1f} s, {len(rows)} events stored")
    finally:
        demo.send_signal(signal.SIGINT)
        _out, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err
    assert "stopped cleanly" in err
    assert "(TLS only; the server and the poles verify it)" in err
    # Every child is gone: nothing listens on the console port any more.
    assert http_json(f"{base}/healthz") is None
