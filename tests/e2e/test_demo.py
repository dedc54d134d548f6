"""`polewatch demo` as a user runs it: one command, both poles online, detections live, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support.ports import free_port
from support.stack import http_json, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _first_sse_detection(url: str, timeout: float) -> dict[str, object]:
    """Read the live stream until a detection arrives (what the console's EventSource gets)."""
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url, timeout=timeout) as response:
        event = None
        while time.monotonic() < deadline:
            line = response.readline().decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "detection":
                data: dict[str, object] = json.loads(line.split(":", 1)[1])
                return data
    raise AssertionError("no detection on the live stream")


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

        devices = http_json(f"{base}/api/devices")["items"]
        assert sorted(d["device_id"] for d in devices if d["online"]) == ["demo-pole-1", "demo-pole-2"]

        detection = _first_sse_detection(f"{base}/api/stream", timeout=60)
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
    # Every child is gone: nothing listens on the console port any more.
    assert http_json(f"{base}/healthz") is None
