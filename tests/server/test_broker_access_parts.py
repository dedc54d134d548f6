"""The pieces of broker access that need no broker: log parsing, the PKI's refusals, the rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from polewatch.fleet_server.broker_access import pki
from polewatch.fleet_server.broker_access.broker_log import BrokerLogReader
from polewatch.fleet_server.broker_access.mosquitto_files import hash_password
from polewatch.fleet_server.broker_access.policy import device_may_subscribe

pytestmark = [pytest.mark.server]


def test_refused_connection_carries_the_address_of_its_socket() -> None:
    reader = BrokerLogReader()
    lines = [
        ("$SYS/broker/log/N", "1795456438: New connection from 127.0.0.1:51107 on port 18830."),
        ("$SYS/broker/log/N", "1795456438: Client <unknown> disconnected, not authorised."),
        ("$SYS/broker/log/N", "1795456439: New connection from 10.0.0.7:40000 on port 8883."),
        (
            "$SYS/broker/log/N",
            "1795456439: New client connected from 10.0.0.7:40000 as pole-1 (p2, c0, k30, u'pole-1').",
        ),
        ("$SYS/broker/log/E", "1795456440: Client pole-1 already connected, closing old connection."),
        ("$SYS/broker/log/M/subscribe", "1795456441: pole-1 1 polewatch/v1/pole-1/down/#"),
        ("$SYS/broker/log/M/subscribe", "1795456441: pole-1 0 polewatch/v1/pole-2/down/#"),
        ("$SYS/broker/log/M/subscribe", "1795456441: polewatch-fleet-server-1 1 polewatch/v1/+/up/#"),
        ("$SYS/broker/log/N", "1795456442: New connection from 10.0.0.9:41000 on port 8884."),
        ("$SYS/broker/log/E", "1795456442: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed"),
        (
            "$SYS/broker/log/N",
            "1795456443: Client connection from 10.0.0.8 failed: error:0A000086:SSL "
            "routines::certificate verify failed.",
        ),
        (
            "$SYS/broker/log/N",
            "1795456443: Client connection from 10.0.0.8 failed: error:0A000126:SSL "
            "routines::unexpected eof while reading.",
        ),
        ("$SYS/broker/log/N", "garbage without a timestamp"),
    ]
    events = [e for e in (reader.feed(t, line) for t, line in lines) if e is not None]
    assert [(e.kind, e.client_id, e.address, e.topic) for e in events] == [
        ("connect_refused", None, "127.0.0.1:51107", None),
        ("session_takeover", "pole-1", None, None),
        ("subscribe_outside_branch", "pole-1", None, "polewatch/v1/pole-2/down/#"),
        ("certificate_refused", None, "10.0.0.9:41000", None),
        ("certificate_refused", None, "10.0.0.8", None),
    ]
    assert events[0].at.timestamp() == 1795456438


def test_subscription_rule() -> None:
    assert device_may_subscribe("pole-1", "polewatch/v1/pole-1/down/#")
    assert device_may_subscribe("pole-1", "polewatch/v1/pole-1/down/config")
    assert not device_may_subscribe("pole-1", "polewatch/v1/pole-10/down/#")
    assert not device_may_subscribe("pole-1", "polewatch/#")
    assert not device_may_subscribe("pole-1", "#")


def test_password_hash_is_the_plugins_format() -> None:
    # PBKDF2-HMAC-SHA512, 64 bytes, base64, 12-byte salt: what mosquitto_ctrl writes. That Mosquitto
    # accepts it is shown by every test in test_broker_access.py (the accounts log in with it).
    stored = hash_password("adminpw", salt=bytes(range(12)))
    assert stored["iterations"] == 101
    assert stored["salt"] == "AAECAwQFBgcICQoL"
    assert len(stored["password"]) == 88
    assert stored != hash_password("adminpw")  # a fresh salt each time


def test_device_csr_must_name_the_device() -> None:
    ca = pki.make_ca()
    key = pki.new_key()
    cert = pki.sign_device_csr(ca, pki.device_csr("pole-1", key), "pole-1")
    assert cert.issuer == ca.certificate.subject
    with pytest.raises(ValueError, match="names \\['pole-2'\\], not device 'pole-1'"):
        pki.sign_device_csr(ca, pki.device_csr("pole-2", key), "pole-1")


def test_broker_certificate_needs_a_host() -> None:
    with pytest.raises(ValueError, match="at least one host"):
        pki.broker_certificate(pki.make_ca(), [])


def test_broker_setup_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from polewatch.fleet_server.cli import app

    target = tmp_path / "broker"
    args = [
        "broker-setup",
        str(target),
        "--host",
        "127.0.0.1",
        "--host",
        "mqtt.bontang.example",
        "--local-port",
        "11883",
        "--plugin",
        "/usr/lib/mosquitto_dynamic_security.so",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert f"mosquitto -c {target / 'mosquitto.conf'}" in first.output
    conf = (target / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 11883 127.0.0.1" in conf and "listener 8883 0.0.0.0" in conf
    env = (target / "fleet-server.env").read_text()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and (target / "fleet-server.env").read_text() == env

    (target / "fleet-server.env").unlink()
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert "fleet-server.env is missing" in refused.output


def test_certificate_listener_and_revoke_certificate_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from polewatch.fleet_server.cli import app

    target = tmp_path / "broker"
    setup = ["broker-setup", str(target), "--host", "127.0.0.1", "--cert-port", "8884", "--plugin", "/x.so"]
    made = CliRunner().invoke(app, setup)
    assert made.exit_code == 0, made.output
    assert "certificate login:  port 8884" in made.output
    listener = (target / "mosquitto.conf").read_text().split("listener 8884 0.0.0.0", 1)[1]
    for line in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                 f"crlfile {target / 'crl.pem'}"):  # fmt: skip
        assert line in listener
    assert pki.revoked_serials(target / "crl.pem") == []
    assert "POLEWATCH_ENROLMENT_BROKER_CERT_PORT=8884" in (target / "fleet-server.env").read_text()

    ca = pki.CertificateAuthority.load(target / "ca.crt", target / "ca.key")
    cert = pki.client_certificate(ca, pki.new_key().public_key(), "pole-1")
    pki.write_certificate(tmp_path / "pole-1.crt", cert)
    first = CliRunner().invoke(app, ["revoke-certificate", str(target), str(tmp_path / "pole-1.crt")])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, ["revoke-certificate", str(target), "0x2a"])
    assert second.exit_code == 0 and "2 revoked certificate(s)" in second.output
    assert sorted(pki.revoked_serials(target / "crl.pem")) == sorted([cert.serial_number, 42])

    bad = CliRunner().invoke(app, ["revoke-certificate", str(target), "not-a-serial"])
    assert bad.exit_code == 2 and "neither a certificate file nor a hex serial" in bad.output
    assert len(pki.revoked_serials(target / "crl.pem")) == 2  # nothing lost
