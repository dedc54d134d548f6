"""Real MQTT brokers started by the tests on random loopback ports.

Mosquitto is what users run; the embedded amqtt broker is what the demo runs. Integration tests are
parametrised over both so that each guarantee holds on each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port, wait_for_port
from .required import require_binary

# Every broker the tests start knows these accounts (name -> password).
USERS: dict[str, str] = {
    "fleet-server": "server-secret",
    "pole-a": "secret-a",
    "pole-b": "secret-b",
    "pole-c": "secret-c",
    "tester": "tester-secret",
}


@dataclass
class BrokerProcess:
    """A broker child process that a test can stop, kill and start again on the same port."""

    kind: str
    workdir: Path
    port: int
    command: list[str]
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    ca_file: Path | None = None  # set when the one listener speaks TLS: the CA clients verify it with

    def start(self) -> None:
        log = (self.workdir / f"{self.kind}.log").open("ab")
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.kind} did not start; see {self.workdir / (self.kind + '.log')}") from None

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the CA that signs client certificates, the broker's own, and whether one is required."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


def project_tls(workdir: Path) -> BrokerTls:
    """A CA and a certificate for a broker on 127.0.0.1, made by the project's own code (what
    `broker-setup` and the demo use). Needs the server package: for the e2e and chaos tests."""
    from polewatch.fleet_server.broker_access.broker_tls import ensure_broker_tls

    files = ensure_broker_tls(workdir / "broker-tls", ["127.0.0.1", "localhost"])
    return BrokerTls(files.ca_file, files.cert_file, files.key_file)


def mosquitto(
    workdir: Path, *, persistence: bool = True, tls: BrokerTls | None = None, save_every_change: bool = True
) -> BrokerProcess:
    """Mosquitto with the accounts in USERS; `persistence=False` forgets every session when restarted.

    `save_every_change`: the fault-injection tests kill the broker and want what it acknowledged on
    disk, so by default it saves its state after every change. That rewrites the whole state on
    every message queued for a persistent session (the fleet server's), which a benchmark must not
    charge to the server: False saves every 30 s, as the production config does
    (broker_access/mosquitto_files.py)."""
    binary = require_binary(
        "mosquitto",
        "install Debian's package (apt-get install mosquitto)",
        candidates=("/usr/sbin/mosquitto",),
    )
    passwd = require_binary("mosquitto_passwd", "it comes with Debian's mosquitto package")
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / "passwd"
    password_file.write_text("")
    for name, password in USERS.items():
        subprocess.run([passwd, "-b", str(password_file), name, password], check=True, capture_output=True)
    password_file.chmod(0o600)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                *(
                    [f"cafile {tls.ca_file}", f"certfile {tls.cert_file}", f"keyfile {tls.key_file}",
                     f"require_certificate {'true' if tls.require_certificate else 'false'}"]
                    if tls is not None
                    else []
                ),
                "allow_anonymous false",
                f"password_file {password_file}",
                f"persistence {'true' if persistence else 'false'}",
                f"persistence_location {workdir}/",
                *(
                    ["autosave_interval 1", "autosave_on_changes true"]
                    if save_every_change
                    else ["autosave_interval 30"]
                ),
                "max_queued_messages 100000",
                # As the production config (broker_access/mosquitto_files.py): the ingest's batches
                # can only hold this many unacknowledged messages.
                "max_inflight_messages 1000",
                "log_dest stdout",
                "log_type error",
                "log_type warning",
                "log_type notice",
                # Run as root (CI), mosquitto would drop to user 'mosquitto', who cannot read the
                # test's private temp dir; a test broker keeps the identity of the test.
                *(["user root"] if os.geteuid() == 0 else []),
                "",
            ]
        )
    )
    broker = BrokerProcess(
        kind="mosquitto", workdir=workdir, port=port, command=[binary, "-c", str(conf)],
        ca_file=tls.ca_file if tls else None,
    )  # fmt: skip
    broker.start()
    return broker


def embedded(workdir: Path, *, tls: BrokerTls | None = None) -> BrokerProcess:
    from polewatch.embedded_broker import write_password_file

    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / "passwd"
    write_password_file(password_file, USERS)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "polewatch.embedded_broker",
        "--port",
        str(port),
        "--password-file",
        str(password_file),
    ]
    if tls is not None:
        command += ["--tls-cert-file", str(tls.cert_file), "--tls-key-file", str(tls.key_file),
                    "--tls-ca-file", str(tls.ca_file)]  # fmt: skip
    broker = BrokerProcess(
        kind="amqtt", workdir=workdir, port=port, command=command, ca_file=tls.ca_file if tls else None
    )
    broker.start()
    # amqtt accepts TCP a moment before it answers CONNECT; give it that moment.
    time.sleep(0.3)
    return broker


def start(kind: str, workdir: Path, *, tls: BrokerTls | None = None) -> BrokerProcess:
    if kind == "mosquitto":
        return mosquitto(workdir, tls=tls)
    if kind == "amqtt":
        return embedded(workdir, tls=tls)
    raise ValueError(f"unknown broker kind {kind!r}")



