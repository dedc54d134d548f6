"""`polewatch agent ...`: what runs on the pole box, and the checks a technician runs there."""

from __future__ import annotations

import asyncio
import signal
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from polewatch.logs import setup_logging

from .capture.urls import redact_url
from .config import AgentConfig, CameraConfig, ConfigError, load_config
from .endpoint import EndpointStore

app = typer.Typer(help="Run the pole agent and check its configuration.", no_args_is_help=True)
err = Console(stderr=True)

ConfigPath = Annotated[
    Path, typer.Option("--config", "-c", help="The agent's YAML config file.", envvar="POLEWATCH_AGENT_CONFIG")
]


def _load(path: Path) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        err.print("Fix the config file and run the command again (see README, 'Agent configuration').")
        raise typer.Exit(2) from None


@app.command()
def run(config: ConfigPath) -> None:
    """Watch the cameras, detect, and report to the broker until stopped (Ctrl-C or SIGTERM)."""
    cfg = _load(config)
    setup_logging(cfg.log_level)
    from .runtime import Agent  # heavy imports (OpenCV, onnxruntime) only when running

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    asyncio.run(main())


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="The agent's YAML config file.")]) -> None:
    """Validate a config file and show what the agent would do with it."""
    cfg = _load(config)
    table = Table(title=f"{config}: valid", show_header=False)
    table.add_row("device", cfg.device_id)
    store = EndpointStore(cfg.state_dir)
    mqtt = store.effective(cfg.mqtt)
    moved = (f"; moved by signed directive {store.state.active.serial} ({store.path} overrides the file's mqtt)"
             if store.state.active is not None else "")  # fmt: skip
    table.add_row("broker", f"{mqtt.host}:{mqtt.port} ({'TLS' if mqtt.tls else 'plain TCP'}){moved}")
    table.add_row("signed directives", f"verified with {cfg.trust.command_key}" if cfg.trust is not None
                  else "refused: no trust.command_key")  # fmt: skip
    table.add_row("state dir", str(cfg.state_dir))
    for cam in cfg.cameras:
        table.add_row(f"camera {cam.id}", redact_url(cam.url))
        table.add_row(f"  {cam.id} health", _health_plan(cam))
        table.add_row(f"  {cam.id} events", _event_plan(cam))
        if cam.rules:
            table.add_row(f"  {cam.id} rules", ", ".join(f"{rule.type} {rule.id}" for rule in cam.rules))
    table.add_row("detect", f"{cfg.detect.fps:g} fps, labels: {', '.join(cfg.detect.labels)}")
    Console().print(table)


def _event_plan(cam: CameraConfig) -> str:
    """Snapshots, what is redacted from them, and motion gating."""
    privacy = cam.privacy
    if cam.snapshots.enabled:
        blur = ", ".join(privacy.blur_labels) or "nothing"
        shots = f"snapshots ≤ {cam.snapshots.max_bytes} bytes, {len(privacy.masks)} mask(s), blur {blur}"
    else:
        shots = "no snapshots"
    gating = (
        f"motion gating on (re-check every {cam.motion.recheck_s:g} s)" if cam.motion.enabled else "no motion gating"
    )
    return f"{shots}; {gating}"


def _health_plan(cam: CameraConfig) -> str:
    """Which camera-health checks run, and against which reference view."""
    health = cam.health
    if not health.enabled:
        return "off"
    checks = [name for name in ("covered", "frozen", "blurred", "shifted", "low_fps") if getattr(health, name).enabled]
    reference = str(cam.reference) if cam.reference is not None else "the first clear frame"
    missing = " (MISSING)" if cam.reference is not None and not cam.reference.is_file() else ""
    return f"{', '.join(checks) or 'none'}; {health.sample_fps:g} frames/s; reference: {reference}{missing}"


@app.command()
def detect(
    source: Annotated[str, typer.Argument(help="An image, a video file or a camera URL.")],
    frame: Annotated[int, typer.Option(help="0-based frame index to look at in a video.")] = 0,
    model: Annotated[Path | None, typer.Option(help="ONNX model with its .json sidecar.")] = None,
    score: Annotated[float, typer.Option(help="Minimum score to show.")] = 0.35,
) -> None:
    """Run the detector on one frame and print what it sees (a quick check of camera and model)."""
    import cv2

    from .inference.detector import load_detector

    image = cv2.imread(source) if Path(source).suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"} else None
    if image is None:
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            err.print(f"[red]error:[/red] cannot open {source!r}: check the path or the camera URL")
            raise typer.Exit(1)
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, image = cap.read()
        cap.release()
        if not ok:
            err.print(f"[red]error:[/red] {source!r} has no frame {frame}")
            raise typer.Exit(1)
    detector = load_detector(model, score_threshold=score)
    found = detector.detect(image)
    table = Table(title=f"{len(found)} detections ({detector.provider}, {detector.mean_inference_ms or 0:.1f} ms)")
    for col in ("label", "score", "x1", "y1", "x2", "y2"):
        table.add_column(col, justify="right" if col != "label" else "left")
    for d in sorted(found, key=lambda d: -d.score):
        table.add_row(d.label, f"{d.score:.2f}", *(f"{v:.0f}" for v in (d.x1, d.y1, d.x2, d.y2)))
    Console().print(table)


SAMPLE_CLIP = Path(__file__).resolve().parents[1] / "polewatch" / "samples" / "vtest-clip.mp4"


@app.command()
def bench(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The agent's config: its model, threads and cameras.",
            envvar="POLEWATCH_AGENT_CONFIG",
        ),
    ] = None,
    video: Annotated[Path | None, typer.Option(help="Footage to detect on (default: the shipped sample clip).")] = None,
    frames: Annotated[int, typer.Option(min=4, max=2000, help="Frames timed per provider.")] = 60,
    camera_fps: Annotated[float, typer.Option(min=1, max=60, help="Frames per second each camera delivers.")] = 10.0,
) -> None:
    """Measure the detector on this box (per execution provider) and say how many cameras it can carry."""
    import os
    import time

    import cv2
    import onnxruntime as ort
    from rich.progress import Progress

    from .inference.detector import load_detector
    from .inference.session import PROVIDER_PREFERENCE, default_threads
    from .sizing import RATES, capacity, measure, recommend_rate

    cfg = _load(config) if config is not None else None
    source = video or SAMPLE_CLIP
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        err.print(f"[red]error:[/red] cannot open {source}: give a readable video with --video")
        raise typer.Exit(1)
    images: list[Any] = []
    cpu_start = time.process_time()
    while len(images) < frames:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    decode_cpu_ms = (time.process_time() - cpu_start) * 1000.0 / max(1, len(images))
    cap.release()
    if not images:
        err.print(f"[red]error:[/red] {source} has no frame to decode")
        raise typer.Exit(1)

    model = cfg.detect.model if cfg else None
    threads = cfg.detect.threads if cfg else None
    cameras = len(cfg.cameras) if cfg else 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    providers = [p for p in PROVIDER_PREFERENCE if p in ort.get_available_providers()]
    results = []
    with Progress(console=err, transient=True) as progress:
        for provider in providers:
            try:
                detector = load_detector(
                    model, threads=threads, providers=[provider], labels=cfg.detect.labels if cfg else None
                )
            except Exception as exc:  # a GPU provider that fails here is reported, not fatal
                err.print(f"[yellow]{provider}: cannot load the model ({exc})[/yellow]")
                continue
            detector.warm_up()
            task = progress.add_task(f"{provider}", total=len(images))
            results.append(measure(detector.detect, images, detector.provider, partial(progress.advance, task)))
    if not results:
        err.print("[red]error:[/red] no execution provider could run the model")
        raise typer.Exit(1)

    name = (model or Path("nanodet-m-416.onnx")).name
    table = Table(
        title=f"{name}: {len(images)} frames of {source.name}, {cores} cores, {threads or default_threads()} threads"
    )
    for column in ("provider", "fps", "p50 ms", "p95 ms", "CPU ms/frame"):
        table.add_column(column, justify="left" if column == "provider" else "right")
    for r in results:
        table.add_row(
            r.provider,
            f"{r.fps:.1f}",
            f"{r.latency_ms_p50:.1f}",
            f"{r.latency_ms_p95:.1f}",
            f"{r.cpu_ms_per_frame:.1f}",
        )
    Console().print(table)
    sizing = Table(title=f"cameras this box carries ({camera_fps:g} fps cameras, a quarter of the CPU kept free)")
    sizing.add_column("detect fps", justify="right")
    for r in results:
        sizing.add_column(r.provider.removesuffix("ExecutionProvider"), justify="right")
    for rate in RATES:
        caps = [capacity(r, rate, cores=cores, camera_fps=camera_fps, decode_cpu_ms=decode_cpu_ms) for r in results]
        sizing.add_row(f"{rate:g}", *(f"{c.cameras} ({c.limited_by})" for c in caps))
    Console().print(sizing)
    best = max(results, key=lambda r: r.fps)
    recommended = recommend_rate(best, cameras, cores=cores, camera_fps=camera_fps, decode_cpu_ms=decode_cpu_ms)
    Console().print(f"decoding one {camera_fps:g} fps camera costs {decode_cpu_ms * camera_fps / 10:.1f} % of a core")
    if recommended is None:
        Console().print(
            f"[red]recommendation:[/red] {cameras} camera(s) do not fit even at 1 detection per second "
            f"with {best.provider}: fewer cameras per box, or a smaller model"
        )
        raise typer.Exit(3)
    Console().print(f"recommendation: detect.fps: {recommended:g} for {cameras} camera(s) with {best.provider}")
