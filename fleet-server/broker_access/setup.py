"""One deployment's broker files, made once: CA, broker certificate, mosquitto.conf, plugin state, secrets.

Re-running keeps what exists (the CA and the accounts' passwords), so a second run after an upgrade
never locks out the boxes that already trust the CA; only the broker certificate is re-issued when the
host names change. What the fleet server needs to log in is written to `fleet-server.env` (mode 0600).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import pki
from .broker_tls import ensure_broker_tls
from .mosquitto_files import (
    Account,
    Listener,
    find_dynsec_plugin,
    mosquitto_conf,
    new_password,
    write_dynsec_state,
    write_private,
)

ADMIN_USERNAME = "polewatch-admin"
SERVER_USERNAME = "fleet-server"


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path
    conf: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    env_file: Path
    admin: Account
    server: Account
    tls_port: int
    local_port: int | None
    cert_port: int | None = None
    crl_file: Path | None = None


def _read_env(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _ca_lines(ca_file: Path, tls_port: int, local_port: int | None) -> list[str]:
    """The server connects with TLS when POLEWATCH_MQTT_CA_FILE is set, so with a plain loopback
    listener (what a server on the broker's host uses) the line is left commented out: TLS spoken to
    the plain port would fail."""
    line = f"POLEWATCH_MQTT_CA_FILE={ca_file}"
    if local_port is None:
        return [line]
    return [f"# A server on another host connects to port {tls_port} with TLS; it then needs:", f"# {line}"]


def broker_setup(
    directory: Path,
    *,
    hosts: list[str],
    tls_port: int = 8883,
    local_port: int | None = None,
    require_certificate: bool = False,
    cert_port: int | None = None,
    plugin: Path | None = None,
    run_as_root: bool | None = None,
) -> BrokerFiles:
    """Write (or complete) the broker's files in `directory`; see the module docstring."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    plugin = plugin or find_dynsec_plugin()
    tls = ensure_broker_tls(directory, hosts)
    ca_file, cert_file, key_file, ca_key = tls.ca_file, tls.cert_file, tls.key_file, tls.ca_key_file

    env_file = directory / "fleet-server.env"
    env = _read_env(env_file)
    admin = Account(ADMIN_USERNAME, env.get("POLEWATCH_DYNSEC_PASSWORD") or new_password())
    server = Account(SERVER_USERNAME, env.get("POLEWATCH_MQTT_PASSWORD") or new_password())
    state = directory / "dynamic-security.json"
    if state.is_file() and not env:
        # Writing a fresh state would delete every box's account: refuse rather than lock the fleet out.
        raise FileExistsError(
            f"{state} exists but {env_file} is missing, so the accounts' passwords are unknown; restore "
            f"{env_file.name} from a backup, or move {state.name} away to start the broker's accounts anew"
        )
    if not state.is_file():
        write_dynsec_state(state, admin, server)

    listeners = [Listener(tls_port, "0.0.0.0", tls=True, require_certificate=require_certificate)]
    crl_file = directory / "crl.pem"
    if cert_port is not None:
        # Boxes that log in with their certificate alone (no password): a listener of its own, so the
        # password listener keeps the plugin's password check and client-id binding for the others.
        listeners.append(Listener(cert_port, "0.0.0.0", tls=True, certificate_identity=True))
    if (cert_port is not None or require_certificate) and not crl_file.is_file():
        ca = pki.CertificateAuthority.load(ca_file, ca_key)
        pki.write_revocation_list(crl_file, ca, [])  # Mosquitto refuses to start on a missing crlfile
    uses_crl = crl_file.is_file() and (cert_port is not None or require_certificate)
    if local_port is not None:
        # For a fleet server on the same host: plain MQTT, reachable from loopback only.
        listeners.append(Listener(local_port, "127.0.0.1", tls=False))
    conf = directory / "mosquitto.conf"
    conf.write_text(
        mosquitto_conf(
            state_dir=directory,
            plugin=plugin,
            listeners=listeners,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            crl_file=crl_file if uses_crl else None,
            run_as_root=os.geteuid() == 0 if run_as_root is None else run_as_root,
        )
    )
    write_private(
        env_file,
        "\n".join(
            [
                "# Secrets for the fleet server's broker accounts (written by `polewatch server broker-setup`).",
                f"POLEWATCH_MQTT_USERNAME={server.username}",
                f"POLEWATCH_MQTT_PASSWORD={server.password}",
                f"POLEWATCH_DYNSEC_USERNAME={admin.username}",
                f"POLEWATCH_DYNSEC_PASSWORD={admin.password}",
                *_ca_lines(ca_file, tls_port, local_port),
                f"POLEWATCH_ENROLMENT_CA_FILE={ca_file}",
                f"POLEWATCH_ENROLMENT_CA_KEY_FILE={ca_key}",
                *([f"POLEWATCH_ENROLMENT_BROKER_CERT_PORT={cert_port}"] if cert_port is not None else []),
                "",
            ]
        ),
    )
    return BrokerFiles(
        directory, conf, ca_file, cert_file, key_file, env_file, admin, server, tls_port, local_port,
        cert_port, crl_file if uses_crl else None,
    )  # fmt: skip
