"""`polewatch provision ...`: the field technician's checks at the pole."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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
        table.add_row(check.name, "[green]pass[/green]" if check.ok else "[red]FAIL[/red]", check.detail,
                      "" if check.ok else check.fix)
    out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
