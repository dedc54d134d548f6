"""The technician's one command at the pole: check, probe, key, enrol, write, start, wait, label.

Each step ends as passed, failed (with what to do) or pending (offline: it completes on its own
when the link comes up), and the flow ends with that checklist. A step that fails stops the steps
that depend on it but not the report, so the technician always leaves with a list, never a trace.
Re-running is safe: the box's key is reused, so the server answers with the same device.
"""

from __future__ import annotations

import asyncio
import json
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from polewatch import __version__
from polewatch.protocol.enrolment import BoxFacts, CameraFacts, EnrolmentGrant, EnrolmentRequest

from .agent_files import install_systemd_unit, systemd_available, write_agent_files, write_private
from .box_check import check_box
from .camera_probe import ProbeError, probe_camera
from .enrol_client import EnrolmentRefusedError, ServerUnreachableError, enrol
from .fleet_backend import FleetBackend, FleetBackendError, NoBackend, box_uuid, fleet_device
from .identity import fingerprint, key_path, load_or_create_key, signing_request
from .label import LabelFacts, write_label
from .onvif_discovery import DiscoveryError, discover_cameras

State = Literal["passed", "failed", "pending", "skipped"]
PENDING_FILE = "enrolment/pending.json"


@dataclass
class Step:
    name: str
    state: State
    detail: str
    next_action: str = ""


@dataclass
class Camera:
    camera_id: str
    url: str


@dataclass
class Outcome:
    steps: list[Step] = field(default_factory=list)
    grant: EnrolmentGrant | None = None
    label_files: tuple[Path, ...] = ()
    seconds_to_first_heartbeat: float | None = None

    @property
    def ok(self) -> bool:
        return all(s.state in ("passed", "skipped", "pending") for s in self.steps)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _board_model() -> str | None:
    for path in (Path("/proc/device-tree/model"), Path("/sys/class/dmi/id/product_name")):
        try:
            return path.read_text().strip("\x00\n ") or None
        except OSError:
            continue
    return None


def camera_discovery_step(
    timeout_s: float, *, target: tuple[str, int] | None = None, interface: str | None = None
) -> Step:
    """`enrol --discover`: the ONVIF cameras that answered, so the technician can check the --camera list.

    Informational: finding none fails nothing (many cameras ship with ONVIF off, and the cameras
    to use are the ones given with --camera).
    """
    try:
        cameras = discover_cameras(timeout_s, target=target, interface=interface)
    except DiscoveryError as exc:
        return Step("camera discovery", "skipped", str(exc), "give the cameras with --camera ID=URL")
    if not cameras:
        return Step(
            "camera discovery", "skipped", f"no ONVIF camera answered within {timeout_s:g} s",
            "check ONVIF is enabled on the camera and it is on this box's network; --camera is what counts",
        )  # fmt: skip
    found = "; ".join(
        f"{c.name or c.hardware or c.endpoint} at {c.address}" + (f" ({c.xaddrs[0]})" if c.xaddrs else "")
        for c in cameras
    )
    return Step("camera discovery", "passed", f"{len(cameras)} answered: {found}")


@dataclass
class EnrolmentFlow:
    server_url: str
    code: str
    state_dir: Path
    config_path: Path
    cameras: list[Camera]
    label_dir: Path
    start: Literal["systemd", "spawn", "none"] = "systemd"
    spawn: Callable[[Path], object] | None = None
    heartbeat_timeout_s: float = 120.0
    verify: bool | str = True
    report: Callable[[Step], None] = lambda step: None
    fleet: FleetBackend = field(default_factory=NoBackend)
    district: str | None = None
    discover: Callable[[], Step] | None = None

    def run(self) -> Outcome:
        outcome = Outcome()
        started = time.monotonic()

        def record(step: Step) -> Step:
            outcome.steps.append(step)
            self.report(step)
            return step

        checks = check_box(self.state_dir)
        failed = [c for c in checks if not c.ok]
        record(
            Step(
                "box check",
                "failed" if failed else "passed",
                "; ".join(f"{c.name}: {c.detail}" for c in checks),
                "; ".join(c.fix for c in failed),
            )
        )

        if self.discover is not None:
            record(self.discover())

        camera_facts, camera_config = [], []
        for camera in self.cameras:
            reference = self.state_dir / "references" / f"{camera.camera_id}.jpg"
            try:
                probe = probe_camera(camera.url, frames=20, reference=reference)
            except ProbeError as exc:
                record(
                    Step(
                        f"camera {camera.camera_id}",
                        "failed",
                        str(exc),
                        "fix the camera or its URL, then run the same command again",
                    )
                )
                continue
            record(
                Step(
                    f"camera {camera.camera_id}",
                    "passed",
                    f"{probe.width}x{probe.height} {probe.codec} {probe.measured_fps:.1f} fps, reference view saved",
                )
            )
            camera_facts.append(
                CameraFacts(
                    camera_id=camera.camera_id,
                    url_redacted=redact(camera.url),
                    width=probe.width,
                    height=probe.height,
                    codec=probe.codec,
                    fps=round(probe.measured_fps, 2),
                )
            )
            camera_config.append({"id": camera.camera_id, "url": camera.url, "reference": str(reference)})

        key, made = load_or_create_key(self.state_dir)
        record(
            Step(
                "box key",
                "passed",
                f"{'made' if made else 'kept'} {key_path(self.state_dir)} "
                f"(fingerprint {fingerprint(key.public_key())[:16]}…); the private key stays on this box",
            )
        )
        if len(camera_config) < len(self.cameras):
            record(
                Step(
                    "enrolment",
                    "skipped",
                    "not attempted: a camera failed its check",
                    "fix the camera first; the code stays valid until it expires",
                )
            )
            return outcome

        request = EnrolmentRequest(
            code=self.code,
            csr_pem=signing_request(key),
            box=BoxFacts(
                hostname=socket.gethostname(),
                machine=platform.machine(),
                model=_board_model(),
                os=platform.platform(),
                agent_version=__version__,
                checks_failed=[c.name for c in failed],
            ),
            cameras=camera_facts,
        )
        try:
            grant = enrol(self.server_url, request, verify=self.verify)
        except ServerUnreachableError as exc:
            pending = self.state_dir / PENDING_FILE
            write_private(
                pending,
                json.dumps(
                    {
                        "server_url": self.server_url,
                        "request": request.model_dump(),
                        "cameras": camera_config,
                        "config_path": str(self.config_path),
                    }
                ),
            )
            record(
                Step(
                    "enrolment",
                    "pending",
                    str(exc),
                    f"nothing to do: the box enrols itself on its first connection ({pending})",
                )
            )
            if self.start == "systemd" and systemd_available():
                record(self._start())  # the unit's ExecStartPre completes the enrolment when the link is up
            else:
                record(Step(
                    "agent start", "skipped", "enrolment pending",
                    f"when the link is up: polewatch provision finish-enrolment --state-dir {self.state_dir}, "
                    f"then polewatch agent run --config {self.config_path}",
                ))  # fmt: skip
            if not isinstance(self.fleet, NoBackend):
                record(Step(
                    "fleet manager", "skipped", f"{self.fleet.name}: enrolment pending",
                    "when the link is up, run the same command again to register the box there",
                ))  # fmt: skip
            return outcome
        except EnrolmentRefusedError as exc:
            record(Step("enrolment", "failed", str(exc), "see the message; nothing was written on the box"))
            return outcome
        outcome.grant = grant
        record(
            Step(
                "enrolment",
                "passed",
                f"device {grant.device_id} on pole {grant.pole_id}"
                + (" (same box as before: new password)" if grant.reissued else ""),
            )
        )

        write_agent_files(
            grant,
            config_path=self.config_path,
            state_dir=self.state_dir,
            key_file=key_path(self.state_dir),
            cameras=camera_config,
        )
        record(Step("agent files", "passed", f"{self.config_path} (owner-only)"))
        record(self._fleet_step(grant))

        record(self._start())
        if outcome.steps[-1].state == "passed":
            seconds = self._wait_first_heartbeat(grant, key_fingerprint=fingerprint(key.public_key()))
            if seconds is None:
                record(
                    Step(
                        "first heartbeat",
                        "failed",
                        f"none within {self.heartbeat_timeout_s:.0f} s",
                        "check the agent's log (journalctl -u polewatch-agent) and the box's network",
                    )
                )
            else:
                outcome.seconds_to_first_heartbeat = time.monotonic() - started
                record(Step("first heartbeat", "passed", f"arrived at the server after {seconds:.1f} s of waiting"))

        facts = LabelFacts(
            grant.pole_id, grant.device_id, grant.site, datetime.now(timezone.utc).date().isoformat(), self.server_url
        )
        outcome.label_files = write_label(facts, self.label_dir)
        record(Step("label", "passed", " and ".join(str(p) for p in outcome.label_files)))
        return outcome

    def _fleet_step(self, grant: EnrolmentGrant) -> Step:
        """Register the box with its fleet manager (balena) too; a failure here does not stop the agent."""
        device = fleet_device(grant, uuid=box_uuid(grant.box_fingerprint), district=self.district)
        try:
            result = asyncio.run(self.fleet.register(device))
        except FleetBackendError as exc:
            return Step("fleet manager", "failed", exc.detail, exc.next_action)
        return Step("fleet manager", result.state, result.detail)

    def _start(self) -> Step:
        if self.start == "none":
            return Step(
                "agent start",
                "skipped",
                "--start none: start it yourself",
                f"polewatch agent run --config {self.config_path}",
            )
        if self.start == "spawn":
            assert self.spawn is not None
            self.spawn(self.config_path)
            return Step("agent start", "passed", "started as a child process (no systemd on this box)")
        if not systemd_available():
            return Step(
                "agent start",
                "failed",
                "systemd is not running on this machine",
                "run on the pole's box, or pass --start none and start the agent yourself",
            )
        try:
            unit = install_systemd_unit(self.config_path, state_dir=self.state_dir)
        except Exception as exc:  # CalledProcessError, PermissionError: both say what went wrong
            return Step(
                "agent start",
                "failed",
                f"systemd: {getattr(exc, 'stderr', '') or exc}",
                "run the command as root (sudo)",
            )
        return Step("agent start", "passed", f"{unit} enabled and started")

    def _wait_first_heartbeat(self, grant: EnrolmentGrant, *, key_fingerprint: str) -> float | None:
        url = self.server_url.rstrip("/") + "/api/enrolment/status"
        body: dict[str, Any] = {"code": self.code, "box_fingerprint": key_fingerprint}
        waited = time.monotonic()
        deadline = waited + self.heartbeat_timeout_s
        while time.monotonic() < deadline:
            try:
                response = httpx.post(url, json=body, timeout=10, verify=self.verify)
                if response.status_code == 200 and response.json().get("first_heartbeat_at"):
                    return time.monotonic() - waited
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        return None


def complete_pending(
    state_dir: Path,
    *,
    retry_s: float = 30.0,
    attempts: int | None = None,
    verify: bool | str = True,
    log: Callable[[str], None] = print,
) -> EnrolmentGrant | None:
    """Finish an enrolment prepared offline: retry until the server answers, then write the agent's files.

    Run before the agent starts (the unit's ExecStartPre) on a box enrolled without a link. Returns
    None when nothing is pending; a refusal (code expired meanwhile, used) is raised, since no retry
    can fix it.
    """
    pending_path = state_dir / PENDING_FILE
    if not pending_path.is_file():
        return None
    pending = json.loads(pending_path.read_text())
    request = EnrolmentRequest.model_validate(pending["request"])
    tried = 0
    while True:
        tried += 1
        try:
            grant = enrol(pending["server_url"], request, verify=verify)
            break
        except ServerUnreachableError as exc:
            if attempts is not None and tried >= attempts:
                raise
            log(f"enrolment still pending: {exc}; trying again in {retry_s:.0f} s")
            time.sleep(retry_s)
    write_agent_files(
        grant,
        config_path=Path(pending["config_path"]),
        state_dir=state_dir,
        key_file=key_path(state_dir),
        cameras=pending["cameras"],
    )
    pending_path.unlink()
    log(f"enrolled as {grant.device_id} on pole {grant.pole_id}")
    return grant
