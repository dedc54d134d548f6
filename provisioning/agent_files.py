"""What enrolment leaves on the box: the agent's config, the broker's CA, the fleet's command key, and how
the agent starts.

Secrets are written owner-only, created that way, and replaced by an atomic rename, so a power cut
in the middle never leaves a half-written config that stops the agent at the next boot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from polewatch.protocol.enrolment import EnrolmentGrant

UNIT_NAME = "polewatch-agent.service"


def write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def agent_config(
    grant: EnrolmentGrant,
    *,
    state_dir: Path,
    cameras: list[dict[str, Any]],
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    command_key_file: Path | None = None,
) -> dict[str, Any]:
    broker = grant.broker
    mqtt: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "username": broker.username,
        "password": broker.password,
    }
    if broker.tls:
        tls: dict[str, Any] = {"ca_file": str(ca_file)}
        if cert_file is not None:
            tls |= {"cert_file": str(cert_file), "key_file": str(key_file)}
            if broker.certificate_port is not None:
                # The certificate is the credential there: no password on the box to steal or leak.
                mqtt = {"host": broker.host, "port": broker.certificate_port}
        mqtt["tls"] = tls
    config: dict[str, Any] = {
        "device_id": grant.device_id, "state_dir": str(state_dir), "mqtt": mqtt, "cameras": cameras,
    }  # fmt: skip
    if command_key_file is not None:
        config["trust"] = {"command_key": str(command_key_file)}
    return config


def write_agent_files(
    grant: EnrolmentGrant, *, config_path: Path, state_dir: Path, key_file: Path, cameras: list[dict[str, Any]]
) -> Path:
    """Write the CA, the client certificate (if granted) and the agent config; return the config path."""
    identity = state_dir / "identity"
    ca_file = cert_file = None
    if grant.broker.ca_pem:
        ca_file = identity / "broker-ca.crt"
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_text(grant.broker.ca_pem)
    if grant.broker.client_certificate_pem:
        cert_file = identity / "box.crt"
        cert_file.write_text(grant.broker.client_certificate_pem)
    command_key_file = None
    if grant.command_key_pem:
        # Pinned: only directives this key signed can move the box (agent/uplink/move.py).
        command_key_file = identity / "command-key.pem"
        command_key_file.parent.mkdir(parents=True, exist_ok=True)
        command_key_file.write_text(grant.command_key_pem)
    config = agent_config(
        grant,
        state_dir=state_dir,
        cameras=cameras,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file if cert_file else None,
        command_key_file=command_key_file,
    )
    header = (
        f"# Written by `polewatch provision enrol` for device {grant.device_id} on pole {grant.pole_id}.\n"
        "# Holds the box's broker password: keep it owner-only.\n"
    )
    write_private(config_path, header + yaml.safe_dump(config, sort_keys=False))
    return config_path


def systemd_unit(config_path: Path, executable: str | None = None, *, state_dir: Path | None = None) -> str:
    """The agent's unit. With `state_dir`, every start first completes an enrolment prepared without a
    link (`provision finish-enrolment`, one attempt): while the server is out of reach that step fails,
    systemd retries after RestartSec, and the first start with a link enrols the box and runs the agent."""
    exe = executable or shutil.which("polewatch") or f"{sys.executable} -m polewatch"
    pre = [f"ExecStartPre={exe} provision finish-enrolment --state-dir {state_dir} --attempts 1"] if state_dir else []
    return "\n".join(
        [
            "[Unit]",
            "Description=Polewatch pole agent (cameras, detection, uplink)",
            "Wants=network-online.target",
            "After=network-online.target time-sync.target",
            "",
            "[Service]",
            *pre,
            f"ExecStart={exe} agent run --config {config_path}",
            "Restart=always",
            "RestartSec=5",
            # Logs go to the journal as JSON (not a terminal); the outbox keeps events across restarts.
            "Environment=PYTHONUNBUFFERED=1",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def spawn_agent(config_path: Path, state_dir: Path) -> int:
    """Start the agent as a background process of its own session (it outlives this command), for a
    box without systemd; its pid goes to `state_dir/agent.pid` and its output to `state_dir/agent.log`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "agent.log").open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "polewatch", "agent", "run", "--config", str(config_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    (state_dir / "agent.pid").write_text(f"{child.pid}\n")
    return child.pid


def systemd_available() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install_systemd_unit(
    config_path: Path, unit_dir: Path = Path("/etc/systemd/system"), *, state_dir: Path | None = None
) -> Path:
    """Install, enable and (re)start the agent's unit; raises CalledProcessError with systemctl's words."""
    unit = unit_dir / UNIT_NAME
    unit.write_text(systemd_unit(config_path, state_dir=state_dir))
    for args in (["daemon-reload"], ["enable", UNIT_NAME], ["restart", UNIT_NAME]):
        subprocess.run(["systemctl", *args], check=True, capture_output=True, text=True)
    return unit
