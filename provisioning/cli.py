"""`polewatch provision ...`: the field technician's checks at the pole, and the one command that enrols it."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from .fleet_backend import FleetBackend

app = typer.Typer(help="Check a new pole's box and camera before it joins the fleet.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@app.command("probe-camera")
def probe_camera_command(
    url: Annotated[str, typer.Argument(help="rtsp://user:password@host/path, http://..., or a video file.")],
    frames: Annotated[int, typer.Option(min=2, max=500, help="How many frames to read.")] = 20,
    reference: Annotated[
        Path | None, typer.Option(help="Save the last frame here as the camera's reference view (JPEG/PNG).")
    ] = None,
) -> None:
    """Open the camera as the agent will, read frames, and report resolution, codec and fps."""
    from .camera_probe import ProbeError, probe_camera

    with err.status(f"reading {frames} frames…"):
        try:
            result = probe_camera(url, frames=frames, reference=reference)
        except ProbeError as exc:
            err.print(f"[red]camera check failed:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
    table = Table(title="camera OK", show_header=False)
    table.add_row("resolution", f"{result.width}x{result.height}")
    table.add_row("codec", result.codec)
    table.add_row("fps (declared / measured)", f"{result.declared_fps:.1f} / {result.measured_fps:.1f}")
    table.add_row("frames read", str(result.frames))
    if result.reference is not None:
        table.add_row("reference view", str(result.reference))
    out.print(table)


@app.command("check-box")
def check_box_command(
    state_dir: Annotated[Path, typer.Option(help="Where the agent will keep its state.")] = Path("/var/lib/polewatch"),
) -> None:
    """Check disk, memory, clock, temperature and the inference provider of this box."""
    from .box_check import check_box

    checks = check_box(state_dir)
    table = Table(title="box check")
    for col in ("check", "result", "detail", "what to do"):
        table.add_column(col)
    for check in checks:
        table.add_row(
            check.name,
            "[green]pass[/green]" if check.ok else "[red]FAIL[/red]",
            check.detail,
            "" if check.ok else check.fix,
        )
    out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


NO_CAMERA_ANSWERED = (
    "no ONVIF camera answered within {timeout:g} s: check that the camera is powered and on this box's network "
    "(discovery does not cross routers), that ONVIF is enabled on it (often off by default; Hikvision: Configuration, "
    "Network, Advanced Settings, Integration Protocol), or probe it by address with --target IP:3702"
)


@app.command("discover-cameras")
def discover_cameras_command(
    timeout: Annotated[float, typer.Option(min=0.5, max=60, help="Seconds to wait for answers.")] = 3.0,
    target: Annotated[
        str | None,
        typer.Option(help="Ask one camera at HOST:PORT (unicast, e.g. 192.168.1.64:3702), not the whole network."),
    ] = None,
    interface: Annotated[
        str | None, typer.Option(help="This box's IPv4 address on the cameras' network (boxes with several).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the cameras as JSON (for scripts).")] = False,
) -> None:
    """Find the ONVIF cameras on this box's network (WS-Discovery Probe to 239.255.255.250:3702)."""
    from .onvif_discovery import DiscoveryError, discover_cameras, parse_target

    try:
        destination = parse_target(target) if target else None
    except DiscoveryError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        with err.status(f"asking for ONVIF cameras for {timeout:g} s…"):
            cameras = discover_cameras(timeout, target=destination, interface=interface)
    except DiscoveryError as exc:
        err.print(f"[red]discovery failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps([c.as_json() for c in cameras], indent=2))
    elif cameras:
        table = Table(title=f"{len(cameras)} ONVIF camera{'s' if len(cameras) > 1 else ''} (--json for every field)")
        table.add_column("address", no_wrap=True)
        for col in ("name", "hardware", "location"):
            table.add_column(col)
        table.add_column("ONVIF service", overflow="fold")
        for camera in cameras:
            table.add_row(
                camera.address, camera.name or "", camera.hardware or "", camera.location or "",
                camera.xaddrs[0] if camera.xaddrs else "",
            )  # fmt: skip
        out.print(table)
    if not cameras:
        err.print(NO_CAMERA_ANSWERED.format(timeout=timeout), highlight=False)
        raise typer.Exit(1)


def _fleet_backend(
    fleet: str | None, token_file: Path | None, device_type: str | None, host: str, deadline: float
) -> FleetBackend:
    """The balena backend the options ask for, or NoBackend; bad options stop before anything is done."""
    from .fleet_backend import NoBackend

    if fleet is None:
        if token_file is not None or device_type is not None:
            err.print("[red]--balena-token-file and --balena-device-type need --balena-fleet SLUG[/red]")
            raise typer.Exit(2)
        return NoBackend()
    if "/" not in fleet and not fleet.isdigit():
        err.print(
            f"[red]--balena-fleet {fleet!r}:[/red] expected the fleet's slug, e.g. bontang_city/polewatch "
            "(shown on the fleet's page in the balena dashboard)",
            highlight=False,
        )
        raise typer.Exit(2)
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            err.print(f"[red]--balena-token-file:[/red] cannot read {token_file}: {exc.strerror}", highlight=False)
            raise typer.Exit(2) from None
    else:
        token = os.environ.get("BALENA_API_KEY", "").strip()
    if not token:
        err.print(
            "[red]--balena-fleet needs an API key:[/red] put it in a file (--balena-token-file PATH) or in the "
            "BALENA_API_KEY environment variable (balena dashboard: Preferences, Access tokens)",
            highlight=False,
        )
        raise typer.Exit(2)
    if importlib.util.find_spec("balena") is None:
        err.print("[red]--balena-fleet needs balena-sdk:[/red] pip install 'polewatch\\[balena]'", highlight=False)
        raise typer.Exit(3)
    from .balena_backend import BalenaBackend

    return BalenaBackend(fleet, token, device_type=device_type, host=host, deadline_s=deadline)


_STATE_STYLE = {
    "passed": "[green]pass[/green]",
    "failed": "[red]FAIL[/red]",
    "pending": "[yellow]pending[/yellow]",
    "skipped": "[dim]skipped[/dim]",
}


@app.command("enrol")
def enrol_command(
    code: Annotated[str, typer.Argument(help="The enrolment code on the work order, e.g. K7QF-9XM2-PAH4.")],
    server: Annotated[str, typer.Option(help="The fleet server's address, e.g. https://fleet.bontang.example")],
    camera: Annotated[
        list[str],
        typer.Option(help="A camera as ID=URL (rtsp://user:password@host/path); repeat for more cameras."),
    ],
    state_dir: Annotated[Path, typer.Option(help="Where the agent keeps its state and the box's key.")] = Path(
        "/var/lib/polewatch"
    ),
    config: Annotated[Path, typer.Option(help="Where to write the agent's config.")] = Path(
        "/etc/polewatch/agent.yaml"
    ),
    label_dir: Annotated[Path, typer.Option(help="Where to write the label (PNG and PDF).")] = Path("."),
    start: Annotated[
        str,
        typer.Option(
            help="systemd: install and start the unit; spawn: start the agent as a background process (boxes "
            "without systemd, e.g. containers; its pid and log go to the state dir); none: only write the files."
        ),
    ] = "systemd",
    wait: Annotated[float, typer.Option(help="Seconds to wait for the first heartbeat at the server.")] = 120.0,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA to trust for the server's HTTPS (a private PKI); default: the system's.")
    ] = None,
    discover: Annotated[
        bool, typer.Option("--discover", help="Also list the ONVIF cameras that answer on this box's network.")
    ] = False,
    balena_fleet: Annotated[
        str | None,
        typer.Option(help="Also register the box in this balena fleet (its slug, e.g. bontang_city/polewatch)."),
    ] = None,
    balena_token_file: Annotated[
        Path | None, typer.Option(help="File holding the balena API key (default: the BALENA_API_KEY variable).")
    ] = None,
    balena_device_type: Annotated[
        str | None, typer.Option(help="balena device type, e.g. raspberrypi5 (default: the fleet's).")
    ] = None,
    balena_host: Annotated[str, typer.Option(help="balena API host (openBalena: your own).")] = "balena-cloud.com",
    balena_timeout: Annotated[
        float, typer.Option(min=1, max=300, help="Seconds to wait for each balena API call.")
    ] = 20.0,
    district: Annotated[str | None, typer.Option(help="District tag for the fleet manager (balena).")] = None,
) -> None:
    """Bring this box into the fleet: check it, probe the cameras, enrol with the code, start the agent.

    Run it on the pole's box (its key is made there and never leaves it). Safe to run again: the same
    box keeps the same device. Without a link to the server, everything is prepared and the box enrols
    itself when the link comes up; the checklist says which steps are pending.
    """
    from .agent_files import spawn_agent
    from .enrolment_flow import Camera, EnrolmentFlow, Step, camera_discovery_step

    cameras = []
    for item in camera:
        camera_id, sep, url = item.partition("=")
        if not sep or not camera_id or not url:
            err.print(
                f"[red]--camera {item!r}:[/red] expected ID=URL, e.g. --camera cam1=rtsp://user:pw@10.0.0.9/stream1"
            )
            raise typer.Exit(2)
        cameras.append(Camera(camera_id, url))
    if start not in ("systemd", "spawn", "none"):
        err.print(f"[red]--start {start!r}:[/red] expected systemd, spawn or none")
        raise typer.Exit(2)
    fleet = _fleet_backend(balena_fleet, balena_token_file, balena_device_type, balena_host, balena_timeout)

    def show(step: Step) -> None:
        err.print(f"{_STATE_STYLE[step.state]}  {escape(step.name)}: {escape(step.detail)}", highlight=False)

    flow = EnrolmentFlow(
        server_url=server,
        code=code,
        state_dir=state_dir,
        config_path=config,
        cameras=cameras,
        label_dir=label_dir,
        start="systemd" if start == "systemd" else "spawn" if start == "spawn" else "none",
        spawn=lambda config_path: spawn_agent(config_path, state_dir),
        heartbeat_timeout_s=wait,
        verify=str(ca_file) if ca_file else True,
        report=show,
        fleet=fleet,
        district=district,
        discover=(lambda: camera_discovery_step(3.0)) if discover else None,
    )
    with err.status("enrolling…"):
        outcome = flow.run()
    table = Table(title="pole checklist")
    for col in ("step", "result", "detail", "next"):
        table.add_column(col)
    for step in outcome.steps:
        # Escaped: details carry text from outside (API errors, camera names) and hints like polewatch[balena].
        table.add_row(escape(step.name), _STATE_STYLE[step.state], escape(step.detail), escape(step.next_action))
    out.print(table)
    if outcome.seconds_to_first_heartbeat is not None:
        out.print(f"first heartbeat at the server {outcome.seconds_to_first_heartbeat:.1f} s after the command started")
    if not outcome.ok:
        raise typer.Exit(1)


@app.command("finish-enrolment")
def finish_enrolment_command(
    state_dir: Annotated[Path, typer.Option(help="The state dir `provision enrol` prepared.")] = Path(
        "/var/lib/polewatch"
    ),
    retry: Annotated[float, typer.Option(min=1, help="Seconds between attempts while the server is unreachable.")] = 30,
    attempts: Annotated[
        int | None, typer.Option(min=1, help="Give up after this many attempts (default: keep trying).")
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA to trust for the server's HTTPS (a private PKI); default: the system's.")
    ] = None,
) -> None:
    """Complete an enrolment `provision enrol` prepared without a link: retry until the server answers,
    then write the agent's files. Does nothing when nothing is pending (safe to run before every start)."""
    from .enrol_client import EnrolmentRefusedError, ServerUnreachableError
    from .enrolment_flow import complete_pending

    try:
        grant = complete_pending(
            state_dir, retry_s=retry, attempts=attempts, verify=str(ca_file) if ca_file else True,
            log=lambda line: err.print(line, highlight=False),
        )  # fmt: skip
    except EnrolmentRefusedError as exc:
        err.print(f"[red]enrolment refused:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except ServerUnreachableError as exc:
        err.print(f"[yellow]still pending:[/yellow] {exc}", highlight=False)
        raise typer.Exit(75) from None  # EX_TEMPFAIL: try again later
    if grant is None:
        out.print("nothing pending: this box is enrolled already, or was never prepared")
    else:
        out.print(f"enrolled as {grant.device_id} on pole {grant.pole_id}")
