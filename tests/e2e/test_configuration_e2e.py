"""A configuration change from the API to a real agent process and its report back, through a real Mosquitto:
one document applied (the server shows it in sync), one refused by the box (the server shows why)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from polewatch.demo import sample_clip
from support.brokers import BrokerProcess
from support.stack import PYTHON, http_json, start_agent, start_server, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.slow]


def _post(url: str, token: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_a_document_is_applied_and_a_refused_one_shows_its_reason(
    tls_mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    server, base, db, viewer = start_server(tls_mosquitto_broker, tmp_path / "server")
    ops = subprocess.run(
        [*PYTHON, "server", "token", "add", "e2e-ops", "--role", "ops", "--database-url", f"sqlite:///{db}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    agent = start_agent(tls_mosquitto_broker, tmp_path / "agent", health_s=2)
    state = f"{base}/api/config/devices/pole-a"
    try:
        wait_until(lambda: http_json(f"{base}/api/devices/pole-a", viewer), 60, "pole-a heard from", [server, agent])
        first = {"scope": "device", "target": "pole-a", "document": {"detect": {"fps": 3}, "health_interval_s": 3}}
        applied = _post(f"{base}/api/config/layers", ops, first)
        assert applied["devices"][0]["desired_version"] == 1
        in_sync = wait_until(
            lambda: (d := http_json(state, viewer)) and d["drift"] == "in_sync" and d, 60, "version 1 applied",
            [server, agent],
        )
        assert in_sync["applied_version"] == 1 and in_sync["report_status"] == "applied"

        # Valid on its own, so the server publishes it; the box refuses it against its own file's
        # detect.labels (the default list has no dog).
        rule = {"id": "dogs", "type": "zone", "labels": ["dog"], "polygon": [[0, 0], [1, 0], [1, 1]]}
        camera = {"id": "cam1", "url": str(sample_clip()), "loop": True, "rules": [rule]}
        _post(f"{base}/api/config/layers", ops, {"scope": "device", "target": "pole-a", "document": {
            "detect": {"fps": 3}, "health_interval_s": 3, "cameras": [camera]}})  # fmt: skip
        refused = wait_until(
            lambda: (d := http_json(state, viewer)) and d["drift"] == "refused" and d, 60, "version 2 refused",
            [server, agent],
        )
        assert refused["desired_version"] == 2 and refused["applied_version"] == 1
        assert refused["refusal_field"] == "cameras.0.rules.0.labels"
        assert "dog is not in detect.labels" in refused["refusal_reason"]

        # Commands reach the running agent and their acks come back.
        commands = f"{base}/api/devices/pole-a/commands"
        level = _post(commands, ops, {"name": "set_log_level", "args": {"level": "DEBUG"}})
        restart = _post(commands, ops, {"name": "restart_camera", "args": {"camera_id": "cam1"}})
        assert level["status"] == restart["status"] == "sent"

        def acks() -> dict[str, Any] | None:
            items = (http_json(commands, viewer) or {}).get("items", [])
            done = {c["name"]: c for c in items if c["status"] != "sent"}
            return done if len(done) == 2 else None

        outcome = wait_until(acks, 60, "both commands acked", [server, agent])
        assert outcome["set_log_level"]["status"] == "done"
        assert outcome["set_log_level"]["result"]["level"] == "DEBUG"
        assert outcome["restart_camera"]["status"] == "done"
        assert outcome["restart_camera"]["result"]["camera_id"] == "cam1"
        print(f"config e2e: applied v1, refused v2 with {refused['refusal_reason']!r}; commands "
              f"{ {name: c['result'] for name, c in outcome.items()} }")
    finally:
        agent.stop()
        server.stop()
