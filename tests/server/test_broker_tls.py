"""The broker's TLS files (shared by broker-setup and the demo) and the server's --mqtt-ca-file.

The server's TLS connection itself is exercised over a real broker by tests/e2e (the demo, the broker
outage, the configuration round trip); here the parts that need no broker: reuse of the CA, and bad
input refused before the server starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from polewatch.fleet_server.broker_access.broker_tls import ensure_broker_tls, hosts_of
from polewatch.fleet_server.broker_access.setup import broker_setup
from polewatch.fleet_server.cli import app
from support.ports import free_port


def test_a_rerun_keeps_the_ca_and_reissues_the_broker_certificate_only_for_new_hosts(tmp_path: Path) -> None:
    first = ensure_broker_tls(tmp_path, ["127.0.0.1", "localhost"])
    ca, cert = first.ca_file.read_bytes(), first.cert_file.read_bytes()
    assert {p.stat().st_mode & 0o777 for p in (first.ca_key_file, first.key_file)} == {0o600}

    again = ensure_broker_tls(tmp_path, ["localhost", "127.0.0.1"])
    assert (again.ca_file.read_bytes(), again.cert_file.read_bytes()) == (ca, cert)

    moved = ensure_broker_tls(tmp_path, ["127.0.0.1", "mqtt.bontang.example"])
    assert moved.ca_file.read_bytes() == ca, "boxes that trust the CA keep trusting it"
    assert hosts_of(moved.cert_file) == {"127.0.0.1", "mqtt.bontang.example"}
    issued = x509.load_pem_x509_certificate(moved.cert_file.read_bytes())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))


def test_broker_setup_leaves_the_ca_line_commented_when_the_server_uses_the_plain_loopback_listener(
    tmp_path: Path,
) -> None:
    """The server turns TLS on when POLEWATCH_MQTT_CA_FILE is set: from an env file meant for the plain
    loopback port it must not be, or the server would speak TLS to a plain listener."""
    plugin = tmp_path / "mosquitto_dynamic_security.so"
    plugin.write_bytes(b"")
    local = broker_setup(tmp_path / "local", hosts=["127.0.0.1"], local_port=11883, plugin=plugin, run_as_root=False)
    remote = broker_setup(tmp_path / "remote", hosts=["127.0.0.1"], plugin=plugin, run_as_root=False)
    local_env = local.env_file.read_text().splitlines()
    assert f"# POLEWATCH_MQTT_CA_FILE={local.ca_file}" in local_env
    assert not any(line.startswith("POLEWATCH_MQTT_CA_FILE=") for line in local_env)
    assert f"POLEWATCH_MQTT_CA_FILE={remote.ca_file}" in remote.env_file.read_text().splitlines()


def _run(tmp_path: Path, ca_file: Path) -> tuple[int, str]:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    result = CliRunner().invoke(
        app, ["run", "--database-url", db, "--http-port", str(free_port()), "--mqtt-ca-file", str(ca_file)]
    )
    return result.exit_code, result.output


def test_the_server_refuses_a_missing_or_unreadable_ca_file_before_it_starts(tmp_path: Path) -> None:
    code, output = _run(tmp_path, tmp_path / "absent.crt")
    assert code == 2 and "mqtt_ca_file" in output and "does not point to a file" in output, output

    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("this is not a certificate\n")
    code, output = _run(tmp_path, not_pem)
    assert code == 2, output
    assert "not a CA certificate in PEM form" in output and "broker-setup's ca.crt" in output, output
    assert not (tmp_path / "fleet.db").exists(), "refused before touching the database"


def test_the_embedded_broker_refuses_half_a_tls_configuration(tmp_path: Path) -> None:
    tls = ensure_broker_tls(tmp_path / "tls", ["127.0.0.1"])
    base = [sys.executable, "-m", "polewatch.embedded_broker", "--port", str(free_port()),
            "--password-file", str(tmp_path / "passwd")]  # fmt: skip
    half = subprocess.run([*base, "--tls-cert-file", str(tls.cert_file)], capture_output=True, text=True, timeout=30)
    assert half.returncode == 2 and "--tls-cert-file and --tls-key-file go together" in half.stderr
    missing = subprocess.run(
        [*base, "--tls-cert-file", str(tls.cert_file), "--tls-key-file", str(tmp_path / "nope.key")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 2 and "nope.key does not exist" in missing.stderr
