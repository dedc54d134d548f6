"""The broker's first configuration: mosquitto.conf and the dynamic-security plugin's starting state.

Written once per deployment (`polewatch server broker-setup`); after that the fleet server changes
accounts through the plugin at run time and never rewrites these files. The starting state holds two
accounts: the plugin's admin (the server uses it to create, rotate and revoke box accounts) and the
server's own data account (reads every up branch, writes every down branch). Boxes get theirs at
enrolment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import policy

# Where Debian, Ubuntu, Raspberry Pi OS and JetPack put the plugin, and a source build's default.
PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
# The plugin's own default. The passwords it protects are 256-bit random tokens, not words a person
# chose, so the iteration count is not what keeps them safe.
PBKDF2_ITERATIONS = 101


def find_dynsec_plugin() -> Path:
    for candidate in PLUGIN_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) was not found in "
        + ", ".join(PLUGIN_CANDIDATES)
        + ": install Mosquitto 2.0 or later (Debian: apt-get install mosquitto) or pass --plugin"
    )


def new_password() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The plugin's stored form: PBKDF2-HMAC-SHA512 (64 bytes) and its 12-byte salt, both base64."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


@dataclass(frozen=True)
class Account:
    username: str
    password: str


def dynsec_state(admin: Account, server: Account) -> dict[str, Any]:
    """Everything denied by default; the admin account and the server's account with their roles."""
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": admin.username,
                "textName": "Polewatch fleet server (account admin)",
                "roles": [{"rolename": policy.ADMIN_ROLE}],
                **hash_password(admin.password),
            },
            {
                "username": server.username,
                "textName": "Polewatch fleet server (data)",
                "roles": [{"rolename": policy.SERVER_ROLE}],
                **hash_password(server.password),
            },
        ],
        "groups": [],
        "roles": [
            {"rolename": policy.ADMIN_ROLE, "acls": policy.admin_acls()},
            {"rolename": policy.SERVER_ROLE, "acls": policy.server_acls()},
        ],
    }


@dataclass(frozen=True)
class Listener:
    port: int
    bind: str = "0.0.0.0"
    tls: bool = True
    require_certificate: bool = False
    # The certificate is the credential: its CN becomes the username *and* the client id, so the
    # box's dynsec role applies and no box can use another's client id (see docs/broker-access.md).
    certificate_identity: bool = False


MAX_INFLIGHT = 1000


def mosquitto_conf(
    *,
    state_dir: Path,
    plugin: Path,
    listeners: list[Listener],
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    crl_file: Path | None = None,
    run_as_root: bool = False,
    extra: list[str] | None = None,
) -> str:
    """A complete mosquitto.conf: no anonymous access, dynamic security, persistence, log to a topic.

    `log_dest topic` publishes the broker's log on $SYS/broker/log/...; the server reads refused
    connections and subscriptions from there (`broker_log`), so an attack shows in the console.
    """
    lines = [
        "# Written by `polewatch server broker-setup`. Accounts live in dynamic-security.json and are",
        "# changed at run time by the fleet server; do not edit that file while the broker runs.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {state_dir / 'dynamic-security.json'}",
        "persistence true",
        f"persistence_location {state_dir}/",
        "autosave_interval 30",
        "max_queued_messages 100000",
        # QoS 1 messages the broker sends a client before it waits for PUBACKs (default 20, MQTT
        # 3.1.1 clients). The fleet server acknowledges only after its commit, so this window is the
        # most a write batch can hold: 20 meant a commit per 20 messages (see fleet-server/README.md).
        f"max_inflight_messages {MAX_INFLIGHT}",
        "log_dest stdout",
        "log_dest topic",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_type subscribe",
        "connection_messages true",
    ]
    if run_as_root:
        lines.append("user root")
    for listener in listeners:
        lines += ["", f"listener {listener.port} {listener.bind}"]
        if listener.tls:
            demands_certificate = listener.require_certificate or listener.certificate_identity
            if ca_file is None or cert_file is None or key_file is None:
                raise ValueError("a TLS listener needs the CA, the broker certificate and its key")
            lines += [
                f"cafile {ca_file}",
                f"certfile {cert_file}",
                f"keyfile {key_file}",
                "tls_version tlsv1.2",
                f"require_certificate {'true' if demands_certificate else 'false'}",
            ]
            if listener.certificate_identity:
                lines += ["use_identity_as_username true", "use_username_as_clientid true"]
            if crl_file is not None and demands_certificate:
                lines.append(f"crlfile {crl_file}")
    lines += list(extra or [])
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """A file only the owner can read (passwords, plugin state), created with that mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def write_dynsec_state(path: Path, admin: Account, server: Account) -> None:
    write_private(path, json.dumps(dynsec_state(admin, server), indent=2) + "\n")
