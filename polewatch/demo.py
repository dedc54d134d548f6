"""`polewatch demo`: the whole system on one machine, from nothing, in one command.

It starts the embedded broker, the fleet server on SQLite and simulated poles that watch the sample
clip, each as its own process, exactly as they would run in the field (so the demo exercises the real
CLI of each part). The broker speaks TLS only, as a deployment's does: its CA and certificate are made
(or, in a kept --state-dir, reused) by the same code as `polewatch server broker-setup`'s, and the
server and the poles verify the broker against that CA. Children run in their own sessions, so Ctrl-C
reaches only the demo, which then stops them in order: poles first (they publish 'offline'), then
the server, then the broker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO

import yaml
from rich.console import Console

from polewatch.fleet_server.broker_access.broker_tls import ensure_broker_tls

from .embedded_broker import write_password_file

console = Console(stderr=True)


def sample_clip() -> Path:
    return Path(str(resources.files("polewatch") / "samples" / "vtest-clip.mp4"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(check: Callable[[], bool], what: str, timeout: float, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            child.check_alive()
        if check():
            return
        time.sleep(0.2)
    raise DemoError(f"{what} did not happen within {timeout:.0f} s; see the logs in the state dir")


class DemoError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-8:]
            raise DemoError(f"{self.name} exited with code {self.proc.returncode}:\n  " + "\n  ".join(tail))

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _online_devices(base: str, token: str) -> int:
    import json

    request = urllib.request.Request(f"{base}/api/devices", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            payload = json.load(response)
    except (OSError, ValueError):
        return 0
    items = payload["items"] if isinstance(payload, dict) else payload
    return sum(1 for d in items if d.get("online"))


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    token: str  # the demo's own viewer token, to watch for the poles coming online


def demo_login(state: Path) -> DemoLogin:
    """The demo's sign-in, made with the real `polewatch server user add` / `token add` commands
    (which also migrate the fresh database); kept in the state dir so a reused one signs in the same."""
    import json

    saved = state / "demo-login.json"
    if saved.exists() and (state / "fleet.db").exists():
        return DemoLogin(**json.loads(saved.read_text(encoding="utf-8")))
    python = [sys.executable, "-m", "polewatch", "server"]
    url = ["--database-url", f"sqlite:///{state / 'fleet.db'}"]

    def run(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([*python, *args, *url], input=stdin, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DemoError(f"polewatch server {' '.join(args[:2])} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout.strip()

    password = secrets.token_urlsafe(12)
    run("user", "add", "demo", "--role", "admin", "--display-name", "Demo", "--password-stdin", stdin=password + "\n")
    login = DemoLogin("demo", password, run("token", "add", "demo-watch", "--role", "viewer"))
    saved.write_text(json.dumps(login.__dict__), encoding="utf-8")
    saved.chmod(0o600)
    return login


# What the server and the poles call the broker, hence the names its certificate is made for.
BROKER_HOST = "127.0.0.1"


@dataclass(frozen=True)
class DemoStack:
    children: list[Child]
    base: str  # the console's URL
    broker_url: str
    ca_file: Path  # what the server and the poles trust for the broker


def build_stack(state: Path, *, http_port: int, poles: int) -> DemoStack:
    """Write credentials, TLS files and configs into `state` and describe the processes of the demo."""
    python = [sys.executable, "-m", "polewatch"]
    broker_port = free_port()
    tls = ensure_broker_tls(state / "broker-tls", [BROKER_HOST, "localhost"])
    passwords = {"fleet-server": secrets.token_urlsafe(16)}
    pole_ids = [f"demo-pole-{i + 1}" for i in range(poles)]
    passwords |= {pole: secrets.token_urlsafe(16) for pole in pole_ids}
    write_password_file(state / "broker-passwd", passwords)

    children = [
        Child(
            "broker",
            [sys.executable, "-m", "polewatch.embedded_broker", "--host", BROKER_HOST, "--port", str(broker_port),
             "--password-file", str(state / "broker-passwd"), "--tls-cert-file", str(tls.cert_file),
             "--tls-key-file", str(tls.key_file), "--tls-ca-file", str(tls.ca_file)],
            state / "broker.log",
        ),
        Child(
            "server",
            [*python, "server", "run", "--database-url", f"sqlite:///{state / 'fleet.db'}",
             "--mqtt-host", BROKER_HOST, "--mqtt-port", str(broker_port), "--mqtt-ca-file", str(tls.ca_file),
             "--mqtt-username", "fleet-server",
             "--http-host", "127.0.0.1", "--http-port", str(http_port)],
            state / "server.log",
            env={"POLEWATCH_MQTT_PASSWORD": passwords["fleet-server"]},
        ),
    ]
    clip = sample_clip()
    for pole in pole_ids:
        config = {
            "device_id": pole,
            "state_dir": str(state / pole),
            "mqtt": {"host": BROKER_HOST, "port": broker_port, "username": pole, "password": passwords[pole],
                     "tls": {"ca_file": str(tls.ca_file)}},
            "cameras": [{"id": "cam1", "url": str(clip), "loop": True}],
            "detect": {"fps": 4},
            "health_interval_s": 5,
        }
        path = state / f"{pole}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)
        children.append(Child(pole, [*python, "agent", "run", "--config", str(path)], state / f"{pole}.log"))
    return DemoStack(children, f"http://127.0.0.1:{http_port}", f"mqtts://{BROKER_HOST}:{broker_port}", tls.ca_file)


def run_demo(*, port: int, state_dir: Path | None, poles: int) -> int:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="polewatch-demo-")))
        else:
            state = state_dir.resolve()
            state.mkdir(parents=True, exist_ok=True)
        http_port = port or free_port()
        demo = build_stack(state, http_port=http_port, poles=poles)
        children, base = demo.children, demo.base
        stop_requested = False

        def request_stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            with console.status("starting the embedded broker (TLS), the fleet server and the poles…"):
                login = demo_login(state)
                for child in children:
                    child.start()
                _wait_until(lambda: _http_ok(f"{base}/healthz"), "the server answering", 60, children)
                _wait_until(
                    lambda: _online_devices(base, login.token) >= poles, f"{poles} poles online", 120, children
                )
            console.print(
                f"[green]Polewatch demo ready[/green] in {time.monotonic() - started:.1f} s: "
                f"{poles} poles online, detections streaming.\n"
                f"  console:   [bold]{base}/[/bold]\n"
                f"  sign in:   [bold]{login.username}[/bold] / [bold]{login.password}[/bold]\n"
                f"  API:       {base}/docs\n"
                f"  broker:    {demo.broker_url} (TLS only; the server and the poles verify it)\n"
                f"  broker CA: {demo.ca_file}\n"
                f"  logs & db: {state}\n"
                "Press Ctrl-C to stop.",
                highlight=False,
            )
            print(f"console: {base}/", flush=True)
            print(f"login: {login.username} {login.password}", flush=True)
            print(f"broker: {demo.broker_url} ca={demo.ca_file}", flush=True)
            while not stop_requested:
                for child in children:
                    child.check_alive()
                time.sleep(0.5)
            return 0
        except DemoError as exc:
            console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
            return 1
        finally:
            console.print("stopping: poles, then server, then broker…")
            for child in reversed(children):
                child.stop()
            console.print("stopped cleanly.")
    return 0
