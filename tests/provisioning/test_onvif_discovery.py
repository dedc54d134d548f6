"""ONVIF discovery: a real WS-Discovery Probe over UDP to a real responder on loopback."""

from __future__ import annotations

import json
import logging
import socket

import pytest
from typer.testing import CliRunner

from polewatch.cli import app
from polewatch.provisioning.enrolment_flow import camera_discovery_step
from polewatch.provisioning.onvif_discovery import DiscoveryError, discover_cameras, parse_target
from support.onvif_camera import (
    AXIS_ENDPOINT,
    HIKVISION_ENDPOINT,
    Reply,
    axis,
    garbage,
    hikvision,
    onvif_responder,
    truncated,
    with_doctype,
    wrong_relates_to,
)

runner = CliRunner()
WAIT = 0.6  # discovery listens for the whole timeout; the responder answers at once


def words(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


def unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_probe_is_a_ws_discovery_probe_for_video_transmitters_and_the_answer_is_read() -> None:
    with onvif_responder([hikvision]) as camera:
        (found,) = discover_cameras(WAIT, target=camera.address)
    probe = camera.probe_fields()
    assert probe["Action"] == "http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe"
    assert probe["To"] == "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
    assert probe["Types"] == "dn:NetworkVideoTransmitter" and probe["MessageID"].startswith("urn:uuid:")
    assert b'xmlns:dn="http://www.onvif.org/ver10/network/wsdl"' in camera.probes[0]

    assert found.endpoint == HIKVISION_ENDPOINT
    assert found.name == "HIKVISION DS-2CD2143G2-I" and found.hardware == "DS-2CD2143G2-I"
    assert found.location == "city/hangzhou"
    assert found.address == "192.168.1.64", "the IPv4 XAddr, not the loopback the answer came from"
    assert found.xaddrs[0] == "http://192.168.1.64/onvif/device_service" and len(found.xaddrs) == 2
    assert "dn:NetworkVideoTransmitter" in found.types and found.source == "127.0.0.1"


def test_garbage_foreign_and_truncated_replies_are_dropped_with_a_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    replies: list[Reply] = [garbage, wrong_relates_to, truncated, with_doctype, axis]
    with (
        caplog.at_level(logging.DEBUG, logger="polewatch.provisioning.onvif_discovery"),
        onvif_responder(replies) as camera,
    ):
        found = discover_cameras(WAIT, target=camera.address)
    assert [c.endpoint for c in found] == [AXIS_ENDPOINT], "only the well-formed answer to our Probe counts"
    assert found[0].name == "AXIS P1375" and found[0].location == "country/indonesia / city/bontang"
    assert "not XML" in caplog.text  # garbage and the truncated envelope
    assert "is not our Probe" in caplog.text
    assert "DOCTYPE" in caplog.text


def test_duplicate_answers_are_one_camera_each() -> None:
    """Each camera answers both sends of the Probe, and the Hikvision twice per Probe."""
    with onvif_responder([hikvision, axis, hikvision]) as camera:
        found = discover_cameras(WAIT, target=camera.address)
    assert len(camera.probes) == 2, "the Probe is sent twice, as SOAP-over-UDP asks"
    assert [c.endpoint for c in found] == [HIKVISION_ENDPOINT, AXIS_ENDPOINT]
    assert len(found[0].xaddrs) == 2, "merged answers do not repeat addresses"


def test_discover_cameras_prints_a_table_and_json() -> None:
    with onvif_responder([hikvision, axis]) as camera:
        target = f"{camera.address[0]}:{camera.address[1]}"
        table = runner.invoke(app, ["provision", "discover-cameras", "--target", target, "--timeout", str(WAIT)])
        as_json = runner.invoke(
            app, ["provision", "discover-cameras", "--target", target, "--timeout", str(WAIT), "--json"]
        )
    assert table.exit_code == 0, table.output
    assert "2 ONVIF cameras" in table.output and "192.168.1.64" in table.output and "AXIS P1375" in table.output
    assert as_json.exit_code == 0, as_json.output
    cameras = json.loads(as_json.stdout)
    assert [(c["address"], c["hardware"]) for c in cameras] == [("192.168.1.64", "DS-2CD2143G2-I"),
                                                                 ("192.168.1.90", "P1375")]  # fmt: skip


def test_no_answer_says_what_to_check() -> None:
    target = f"127.0.0.1:{unused_udp_port()}"
    result = runner.invoke(app, ["provision", "discover-cameras", "--target", target, "--timeout", "0.5"])
    assert result.exit_code == 1
    assert "no ONVIF camera answered within 0.5 s" in words(result.output)
    assert "that ONVIF is enabled on it" in words(result.output) and "--target IP:3702" in words(result.output)
    as_json = runner.invoke(app, ["provision", "discover-cameras", "--target", target, "--timeout", "0.5", "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout) == []


def test_a_bad_target_is_refused_with_an_example() -> None:
    result = runner.invoke(app, ["provision", "discover-cameras", "--target", "192.168.1.64"])
    assert result.exit_code == 2
    assert "--target '192.168.1.64': expected HOST:PORT, e.g. 192.168.1.64:3702" in words(result.output)
    with pytest.raises(DiscoveryError):
        parse_target("camera:port")


def test_enrol_discovery_step_lists_the_cameras_and_never_fails_the_enrolment() -> None:
    with onvif_responder([hikvision]) as camera:
        step = camera_discovery_step(WAIT, target=camera.address)
    assert step.state == "passed"
    assert step.detail == (
        "1 answered: HIKVISION DS-2CD2143G2-I at 192.168.1.64 (http://192.168.1.64/onvif/device_service)"
    )
    silent = camera_discovery_step(0.3, target=("127.0.0.1", unused_udp_port()))
    assert silent.state == "skipped" and "no ONVIF camera answered within 0.3 s" in silent.detail
