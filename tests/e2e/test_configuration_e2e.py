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
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    server, base, db, viewer = start_server(mosquitto_broker, tmp_path / "server")
    ops = subprocess.run(
        [*PYTHON, "server", "token", "add", "e2e-ops", "--role", "ops", "--database-url", f"sqlite:///{db}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    agent = start_agent(mosquitto_broker, tmp_path / "agent", health_s=2)
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
        print(f"config e2e: applied v1, refused v2 with {refused['refusal_reason']!r}")
    finally:
        agent.stop()
        server.stop()
