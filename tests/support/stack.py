"""Start the real server and real agents as child processes, the way the demo and a pole run them.

Both verify the broker with TLS when the broker has a TLS listener (BrokerProcess.ca_file), as in
production; the e2e and chaos tests start theirs that way (the tls_broker fixtures in conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from polewatch.demo import Child, sample_clip

from .brokers import USERS, BrokerProcess
from .ports import free_port

PYTHON = [sys.executable, "-m", "polewatch"]


def start_server(broker: BrokerProcess, workdir: Path) -> tuple[Child, str, Path, str]:
    """A fleet server on SQLite in `workdir`; returns the child, its base URL, its database file and
    a viewer API token (made with `polewatch server token add`, as an operator would)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db = workdir / "fleet.db"
    made = subprocess.run(
        [*PYTHON, "server", "token", "add", "e2e", "--role", "viewer", "--database-url", f"sqlite:///{db}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = made.stdout.strip()
    child = Child(
        "server",
        [*PYTHON, "server", "run", "--database-url", f"sqlite:///{db}", "--mqtt-host", broker.host,
         "--mqtt-port", str(broker.port), "--mqtt-username", "fleet-server", "--http-host", "127.0.0.1",
         "--http-port", str(port), *(["--mqtt-ca-file", str(broker.ca_file)] if broker.ca_file else [])],
        workdir / "server.log",
        env={"POLEWATCH_MQTT_PASSWORD": USERS["fleet-server"]},
    )
    child.start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_json(f"{base}/healthz") is not None, 60, "server /healthz", [child])
    return child, base, db, token


def start_agent(
    broker: BrokerProcess, workdir: Path, device: str = "pole-a", *, fps: float = 5, health_s: float = 2,
    log_level: str = "INFO", port: int | None = None, state_dir: Path | None = None,
    outbox: dict[str, Any] | None = None,
) -> Child:
    """A real agent process on the sample clip. `port`: reach the broker there instead (a proxy);
    `state_dir`: default `workdir/state`; `outbox`: the config's outbox section."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "device_id": device,
        "state_dir": str(state_dir or workdir / "state"),
        "mqtt": {"host": broker.host, "port": port or broker.port, "username": device, "password": USERS[device],
                 "keepalive_s": 5, "reconnect_max_s": 2},
        "cameras": [{"id": "cam1", "url": str(sample_clip()), "loop": True}],
        "detect": {"fps": fps},
        "health_interval_s": health_s,
        "log_level": log_level,
    }
    if broker.ca_file is not None:
        config["mqtt"]["tls"] = {"ca_file": str(broker.ca_file)}
    if outbox is not None:
        config["outbox"] = outbox
    path = workdir / f"{device}.yaml"
    path.write_text(yaml.safe_dump(config))
    child = Child(device, [*PYTHON, "agent", "run", "--config", str(path)], workdir / f"{device}.log")
    child.start()
    return child


def http_json(url: str, token: str | None = None) -> Any:
    """GET url as JSON (with an API token when given); None when it fails."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def wait_until(check: Callable[[], object], timeout: float, what: str, children: list[Child] = ()) -> Any:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            child.check_alive()
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a child (children log JSON because their stderr is not a terminal)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records
