"""`polewatch server run` as an operator starts it: a real process, a real broker, a clean stop;
and the log lines it writes."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from polewatch.fleet_server.logs import setup_logging
from support.brokers import USERS, BrokerProcess
from support.ports import free_port
from support.server import add_token, bearer


@pytest.mark.mqtt
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_run_prints_the_console_url_serves_and_stops_cleanly_with_a_stream_open(
    mosquitto_broker: BrokerProcess, tmp_path: Path, database: str, sig: signal.Signals
) -> None:
    broker = mosquitto_broker
    token = add_token(database, "viewer")
    port = free_port()
    command = [
        sys.executable, "-m", "polewatch.fleet_server.cli", "run",
        "--database-url", database,
        "--mqtt-host", broker.host, "--mqtt-port", str(broker.port),
        "--http-host", "127.0.0.1", "--http-port", str(port), "--mqtt-shared-group", "fleet",
    ]  # fmt: skip
    env = {**os.environ, "POLEWATCH_MQTT_PASSWORD": USERS["fleet-server"]}
    stderr_path = tmp_path / "server.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(rf"Polewatch console: http://127\.0\.0\.1:{port}/  \(API docs: .*\)\n", line), line
        base = f"http://127.0.0.1:{port}"

        deadline = time.monotonic() + 15
        while not _get_json(f"{base}/healthz").get("mqtt_connected"):
            assert time.monotonic() < deadline, "the ingest did not connect"
            time.sleep(0.1)

        # A console with the live stream open must not hold the shutdown up.
        # A stream without credentials is refused; with a token it opens.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/stream", timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(f"{base}/api/stream", headers=bearer(token))
        stream = urllib.request.urlopen(request, timeout=20)
        assert stream.readline().startswith(b":")
        drained = threading.Thread(target=stream.read, daemon=True)
        drained.start()

        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 4, "shutdown waited for the stream instead of ending it"
        drained.join(timeout=5)
        assert not drained.is_alive(), "the open stream was not ended"
        assert proc.stdout.read().strip() == "Polewatch fleet server stopped."
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # stderr is not a terminal here, so every log line is JSON.
    records = [json.loads(raw) for raw in stderr_path.read_text().splitlines() if raw.strip()]
    messages = [r["message"] for r in records]
    assert "mqtt connected" in messages and "fleet server stopped" in messages
    connected = next(r for r in records if r["message"] == "mqtt connected")
    assert connected["client_id"] == "polewatch-fleet-server-1" and connected["level"] == "info"
    assert connected["subscribed"] == ["$share/fleet/polewatch/v1/+/up/#", "polewatch/v1/+/up/presence"]
    assert USERS["fleet-server"] not in stderr_path.read_text()


def _get_json(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return dict(json.load(response))
    except OSError:
        return {}


def test_log_lines_are_json_off_a_terminal_and_readable_on_one() -> None:
    log = logging.getLogger("polewatch.fleet_server.test")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        piped = io.StringIO()
        setup_logging("INFO", stream=piped)  # StringIO is not a tty: JSON
        log.warning("rejected message", extra={"reason": "not_json", "topic": "polewatch/v1/pole-a/up/x"})
        logging.getLogger("uvicorn.error").info("Started", extra={"color_message": "\x1b[1mStarted\x1b[0m"})
        first, second = (json.loads(line) for line in piped.getvalue().splitlines())
        assert first["message"] == "rejected message" and first["level"] == "warning"
        assert first["reason"] == "not_json" and first["topic"] == "polewatch/v1/pole-a/up/x"
        assert second["logger"] == "uvicorn.error" and "color_message" not in second

        human = io.StringIO()
        setup_logging("INFO", stream=human, json_lines=False)
        log.warning("rejected message", extra={"reason": "not_json"})
        text = human.getvalue()
        assert "WARNING" in text and "rejected message" in text and "reason=not_json" in text
        assert not text.startswith("{")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
