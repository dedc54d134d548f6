"""Delivering assigned alerts: signed webhooks to a real HTTP receiver started by the test, CAP 1.2
for agencies that take it, retries with backoff, the dead-letter list and its retry."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from polewatch.fleet_server import cap
from polewatch.fleet_server.webhooks import SIGNATURE, TIMESTAMP, verify
from support.brokers import BrokerProcess
from support.server import add_token, bearer, camera_health, detection, live_server, pole, settings_for, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.server]
SECRET = "a-shared-secret-of-some-length"
CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"


@dataclass
class Receiver:
    """An agency's endpoint: records every request; paths in `failing` answer 503."""

    url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)

    def to(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in self.requests if p == path]


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append((self.path, dict(self.headers.items()), body))
            self.send_response(503 if self.path in state.failing else 204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# The CAP 1.2 schema's sequences (OASIS CAP-V1.2, section 3.2), in order; * marks a required element.
ALERT_SEQ = ["identifier*", "sender*", "sent*", "status*", "msgType*", "source", "scope*", "restriction", "addresses",
             "code", "note", "references", "incidents", "info"]  # fmt: skip
INFO_SEQ = ["language", "category*", "event*", "responseType", "urgency*", "severity*", "certainty*", "audience",
            "eventCode", "effective", "onset", "expires", "senderName", "headline", "description", "instruction",
            "web", "contact", "parameter", "resource", "area"]  # fmt: skip
ENUMS = {
    "status": {"Actual", "Exercise", "System", "Test", "Draft"},
    "msgType": {"Alert", "Update", "Cancel", "Ack", "Error"},
    "scope": {"Public", "Restricted", "Private"},
    "category": {
        "Geo",
        "Met",
        "Safety",
        "Security",
        "Rescue",
        "Fire",
        "Health",
        "Env",
        "Transport",
        "Infra",
        "CBRNE",
        "Other",
    },
    "urgency": {"Immediate", "Expected", "Future", "Past", "Unknown"},
    "severity": {"Extreme", "Severe", "Moderate", "Minor", "Unknown"},
    "certainty": {"Observed", "Likely", "Possible", "Unlikely", "Unknown"},
}


def check_sequence(element: ET.Element, sequence: list[str]) -> None:
    names = [child.tag.removeprefix(CAP) for child in element]
    assert all(child.tag.startswith(CAP) for child in element), "every element in the CAP 1.2 namespace"
    order = [s.rstrip("*") for s in sequence]
    positions = [order.index(n) for n in names]  # raises on an element CAP does not have
    assert positions == sorted(positions), f"out of the schema's order: {names}"
    for required in (s[:-1] for s in sequence if s.endswith("*")):
        assert required in names, f"missing required <{required}>"
    for child in element:
        name = child.tag.removeprefix(CAP)
        if name in ENUMS:
            assert child.text in ENUMS[name], f"<{name}>{child.text}</{name}>"
        if name in ("sent", "onset"):
            assert child.text and not child.text.endswith("Z") and "." not in child.text
            assert datetime.fromisoformat(child.text).tzinfo is not None


def check_cap(document: bytes) -> ET.Element:
    root = ET.fromstring(document)
    assert root.tag == f"{CAP}alert"
    check_sequence(root, ALERT_SEQ)
    infos = root.findall(f"{CAP}info")
    assert infos
    for info in infos:
        check_sequence(info, INFO_SEQ)
        areas = info.findall(f"{CAP}area")
        assert areas and all(a.find(f"{CAP}areaDesc") is not None for a in areas)
    return root


async def test_assigned_alerts_are_delivered_signed_as_json_or_cap_and_dead_letters_can_be_retried(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    broker = mosquitto_broker
    headers = bearer(add_token(database, "operator", "olga"))
    settings = settings_for(broker, database, webhook_backoff_s=0.05, webhook_attempts=3, webhook_timeout_s=5)
    with receiver() as agency_side:
        agency_side.failing.add("/down")
        async with (
            live_server(settings) as base,
            httpx.AsyncClient(base_url=base, timeout=20, headers=headers) as http,
        ):
            await wait_for(lambda: _connected(http), what="the ingest to connect")
            ids = {}
            for name, path, fmt in (("police", "/json", "json"), ("bpbd", "/cap", "cap"), ("pln", "/down", "json")):
                body = {"name": name, "webhook_url": agency_side.url + path, "format": fmt, "secret": SECRET + name}
                created = await http.post("api/agencies", json=body)
                assert created.status_code == 201, created.text
                assert "secret" not in created.json(), "a secret is never shown again"
                ids[name] = created.json()["id"]
            async with pole(broker) as pa:
                await pa.send(detection(label="person", event_id="w1"))
                await pa.send(detection(label="dog", event_id="w2"))
                await pa.send(camera_health(condition="covered"))
                alerts = await wait_for(lambda: _alerts(http, 3), what="three alerts")
            by_type = {a["event_type"]: a for a in alerts}
            for event_type, agency in (("detection:person", "police"), ("detection:dog", "bpbd"),
                                       ("camera:covered", "pln")):  # fmt: skip
                got = await http.post(f"api/alerts/{by_type[event_type]['id']}/assign", json={"agency_id": ids[agency]})
                assert got.status_code == 200, got.text

            # JSON: signed with the agency's secret over timestamp + body.
            (json_headers, json_body), *_ = await wait_for(lambda: agency_side.to("/json"), what="the JSON webhook")
            assert verify(SECRET + "police", json_headers[TIMESTAMP], json_body, json_headers[SIGNATURE])
            assert not verify("another-secret-entirely", json_headers[TIMESTAMP], json_body, json_headers[SIGNATURE])
            sent = json.loads(json_body)
            assert sent["alert"]["id"] == by_type["detection:person"]["id"] and sent["agency"] == "police"

            # CAP 1.2: structure by the schema's rules, signed the same way.
            (cap_headers, cap_body), *_ = await wait_for(lambda: agency_side.to("/cap"), what="the CAP webhook")
            assert cap_headers["Content-Type"].startswith("application/xml")
            assert verify(SECRET + "bpbd", cap_headers[TIMESTAMP], cap_body, cap_headers[SIGNATURE])
            root = check_cap(cap_body)
            assert root.findtext(f"{CAP}identifier") == f"polewatch-alert-{by_type['detection:dog']['id']}"
            assert root.findtext(f"{CAP}info/{CAP}event") == "detection:dog"

            # Failing endpoint: three attempts with backoff, then a dead letter the operator sees.
            dead = await wait_for(lambda: _deliveries(http, "dead"), what="the dead letter")
            assert len(dead) == 1 and dead[0]["attempts"] == 3 and dead[0]["last_status"] == 503
            assert dead[0]["last_error"] == "HTTP 503" and dead[0]["agency_id"] == ids["pln"]
            assert len(agency_side.to("/down")) == 3
            delivered = await wait_for(lambda: _deliveries(http, "delivered", 2), what="two delivered")
            assert all(d["attempts"] == 1 for d in delivered)

            # Retrying a delivered one is refused; the agency comes back, the dead letter is retried.
            refused = await http.post(f"api/alert-deliveries/{delivered[0]['id']}/retry")
            assert refused.status_code == 409 and "only dead ones" in refused.json()["detail"]
            assert (await http.post("api/alert-deliveries/99999/retry")).status_code == 404
            agency_side.failing.clear()
            retried = await http.post(f"api/alert-deliveries/{dead[0]['id']}/retry")
            assert retried.status_code == 200 and retried.json()["state"] == "pending"
            await wait_for(lambda: _deliveries(http, "delivered", 3), what="the retried delivery")
            assert len(agency_side.to("/down")) == 4
            assert await _deliveries(http, "dead") is None
            viewer = bearer(add_token(database, "viewer", "vic"))
            forbidden = await http.post(f"api/alert-deliveries/{dead[0]['id']}/retry", headers=viewer)
            assert forbidden.status_code == 403


def test_cap_times_have_seconds_and_an_explicit_offset() -> None:
    from datetime import timedelta, timezone

    assert cap.cap_time(datetime(2026, 11, 23, 2, 14, 5, 123456, tzinfo=timezone.utc)) == "2026-11-23T02:14:05-00:00"
    wita = timezone(timedelta(hours=8))
    assert cap.cap_time(datetime(2026, 11, 23, 10, 14, 5, tzinfo=wita)) == "2026-11-23T10:14:05+08:00"


async def _connected(http: httpx.AsyncClient) -> bool:
    return bool((await http.get("healthz")).json()["mqtt_connected"])


async def _alerts(http: httpx.AsyncClient, n: int) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = (await http.get("api/alerts")).json()["items"]
    return items if len(items) >= n else None


async def _deliveries(http: httpx.AsyncClient, state: str, n: int = 1) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = (await http.get("api/alert-deliveries", params={"state": state})).json()["items"]
    return items if len(items) >= n else None
