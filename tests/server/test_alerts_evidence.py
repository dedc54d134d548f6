"""Evidence: the `snapshot` pictures an agent sends are kept with their alert, and an evidence
package (zip: alert.json + images + SHA256SUMS) can be exported and checked."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from datetime import datetime, timezone
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from polewatch.protocol import Box, Snapshot, build
from support.brokers import BrokerProcess
from support.server import add_token, bearer, detection, live_server, pole, settings_for, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.server]


def jpeg(shade: int) -> bytes:
    image = np.full((48, 64, 3), shade, dtype=np.uint8)
    cv2.rectangle(image, (10, 10), (30, 40), (0, 0, 255), -1)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return bytes(encoded.tobytes())


def snapshot(event_id: str, phase: str, picture: bytes, seq: int, device: str = "pole-a") -> Any:
    body = Snapshot(
        camera_id="cam1", event_id=event_id, phase=phase, label="person", score=0.9,
        box=Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6), frame_time=datetime.now(timezone.utc), width=64, height=48,
        jpeg=base64.b64encode(picture).decode(), redactions=["blur:person"],
    )  # fmt: skip
    return build(body, device_id=device, seq=seq)


async def test_snapshots_are_kept_with_their_alert_and_exported_as_a_checkable_package(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    broker = mosquitto_broker
    headers = bearer(add_token(database, "operator", "olga"))
    pictures = [jpeg(90), jpeg(160), jpeg(220)]
    async with (
        live_server(settings_for(broker, database)) as base,
        httpx.AsyncClient(base_url=base, timeout=20, headers=headers) as http,
    ):
        await wait_for(lambda: _connected(http), what="the ingest to connect")
        async with pole(broker) as pa:
            await pa.send(snapshot("ev-1", "start", pictures[0], seq=500))  # may come before its detection
            await pa.send(detection(label="person", event_id="ev-1"))
            await pa.send(snapshot("ev-1", "update", pictures[1], seq=501))
            await pa.send(snapshot("other", "start", pictures[2], seq=502))  # another event's: not in it
            first = snapshot("ev-1", "update", pictures[1], seq=503)
            await pa.send(first)
            await pa.send(first)  # a redelivery stores nothing twice
            # A malformed snapshot (not a JPEG) is refused, and the good ones around it are kept.
            bad = json.loads(snapshot("ev-1", "update", pictures[0], seq=504).model_dump_json())
            bad["body"]["jpeg"] = base64.b64encode(b"GIF89a not a jpeg").decode()
            await pa.raw("snapshot", json.dumps(bad).encode())
            alert = (await wait_for(lambda: _alerts(http), what="the alert"))[0]
            shots = await wait_for(lambda: _snapshots(http, alert["id"], 3), what="three pictures of ev-1")
        assert [s["phase"] for s in shots] == ["start", "update", "update"]
        expected = [pictures[0], pictures[1], pictures[1]]
        assert [s["sha256"] for s in shots] == [hashlib.sha256(p).hexdigest() for p in expected]

        await http.post(f"api/alerts/{alert['id']}/acknowledge", json={"note": "checking"})
        response = await http.get(f"api/alerts/{alert['id']}/evidence")
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
        assert response.headers["x-content-sha256"] == hashlib.sha256(response.content).hexdigest()
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        names = set(archive.namelist())
        assert names == {"alert.json", "SHA256SUMS", *(f"images/{s['id']}.jpg" for s in shots)}
        # The manifest covers every other file, and every hash in it is right.
        sums: dict[str, str] = {}
        for line in archive.read("SHA256SUMS").decode().splitlines():
            digest, name = line.split("  ", 1)
            sums[name] = digest
        assert set(sums) == names - {"SHA256SUMS"}
        for name, digest in sums.items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest, name
        for s in shots:
            picture = cv2.imdecode(np.frombuffer(archive.read(f"images/{s['id']}.jpg"), np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None and picture.shape == (48, 64, 3)
        document = json.loads(archive.read("alert.json"))
        assert document["alert"]["id"] == alert["id"] and document["alert"]["event_id"] == "ev-1"
        assert [s["step"] for s in document["steps"]] == ["created", "acknowledge"]
        assert document["steps"][1]["actor"] == "token:olga" and document["exported_by"] == "token:olga"
        assert document["device"]["device_id"] == "pole-a"
        assert [s["file"] for s in document["snapshots"]] == [f"images/{s['id']}.jpg" for s in shots]

        # Exporting is audited with the package's hash; a viewer may look but not export.
        audit = (await http.get("api/audit", headers=bearer(add_token(database, "admin", "root")),
                                params={"action": "alert.evidence_export"})).json()["items"]  # fmt: skip
        assert audit[0]["after"]["sha256"] == response.headers["x-content-sha256"]
        viewer = bearer(add_token(database, "viewer", "vic"))
        assert (await http.get(f"api/alerts/{alert['id']}/evidence", headers=viewer)).status_code == 403
        assert (await http.get(f"api/alerts/{alert['id']}/snapshots", headers=viewer)).status_code == 200
        missing = await http.get("api/alerts/99999/evidence")
        assert missing.status_code == 404 and missing.json()["detail"] == "no alert 99999"
        ingest = (await http.get("api/ingest/stats", headers=bearer(add_token(database, "ops", "op")))).json()
        assert ingest["rejected_by_reason"] == {"invalid_snapshot": 1}
        assert ingest["duplicates"] == 1 and ingest["accepted_by_kind"]["snapshot"] == 4


async def _connected(http: httpx.AsyncClient) -> bool:
    return bool((await http.get("healthz")).json()["mqtt_connected"])


async def _alerts(http: httpx.AsyncClient) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = (await http.get("api/alerts")).json()["items"]
    return items or None


async def _snapshots(http: httpx.AsyncClient, alert_id: int, n: int) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = (await http.get(f"api/alerts/{alert_id}/snapshots")).json()
    return items if len(items) >= n else None
