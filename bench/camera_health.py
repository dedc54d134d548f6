"""What the camera-health analysis costs per sampled frame, next to decoding that frame.

Decodes N frames of real footage once (timing the decode: the pole pays it for every frame anyway),
then runs a CameraHealthChecker over them as the agent does (one sample every 1/sample_fps s of
footage time, the aim check every `check_every_s`) and times each step on its own as well:

- prepare: the integer-factor downscale to the analysis size and the grey conversion
- stats: mean, standard deviation, Laplacian (covered, blurred)
- frozen: the decimated grey copy and its difference to the previous sample
- aim: ORB features + matching + RANSAC against the reference view (only every few seconds)
- observe: the whole `CameraHealthChecker.observe`, as the agent calls it

OpenCV runs on one thread by default here (`--threads`), as on one core of a Raspberry Pi beside
the detector; a Pi 4 core is roughly 3-5 times slower than a desktop core at this kind of work.

    python bench/camera_health.py [--frames N] [--video PATH] [--threads T] [--sample-fps F]

The last line is machine-readable:
    RESULT camera_health observe_ms_mean=... observe_ms_p95=... aim_ms=... decode_ms=... ratio=...
    (ratio = observe time per sample / decode time per frame)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
from rich.console import Console
from rich.table import Table

from polewatch.agent.capture import frame_metrics as fm
from polewatch.agent.capture.camera_health import CameraHealthChecker
from polewatch.agent.config import CameraHealthConfig

REPO = Path(__file__).resolve().parents[1]
FULL_FOOTAGE = REPO.parent / "shared" / "data" / "vtest.avi"
SHIPPED_CLIP = REPO / "polewatch" / "samples" / "vtest-clip.mp4"


def _ms(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return (
        statistics.fmean(ordered) * 1000,
        ordered[int(0.95 * (len(ordered) - 1))] * 1000,
        ordered[-1] * 1000,
    )


def _time(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400, help="frames of footage to decode (10 fps)")
    parser.add_argument("--video", type=Path, default=FULL_FOOTAGE if FULL_FOOTAGE.exists() else SHIPPED_CLIP)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1: one core, as on a Pi)")
    parser.add_argument("--sample-fps", type=float, default=2.0)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    cap = cv2.VideoCapture(str(args.video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    frames, decode = [], []
    while len(frames) < args.frames:
        started = time.perf_counter()
        ok, image = cap.read()
        if not ok:
            break
        decode.append(time.perf_counter() - started)
        frames.append(image)
    cap.release()
    step = max(1, round(fps / args.sample_fps))
    samples = frames[::step]
    height, width = frames[0].shape[:2]

    config = CameraHealthConfig()
    checker = CameraHealthChecker("bench", config, reference=frames[0])
    observe = []
    for i, image in enumerate(samples):
        started = time.perf_counter()
        checker.observe(image, i / args.sample_fps)
        observe.append(time.perf_counter() - started)

    greys = [fm.analysis_grey(f) for f in samples]
    reference = fm.ReferenceView(greys[0])
    repeat = max(1, 200 // len(samples))
    prepare = [t for f in samples for t in _time(lambda f=f: fm.analysis_grey(f), repeat)]
    stats = [t for g in greys for t in _time(lambda g=g: fm.PictureStats.of(g), repeat)]
    previous = fm.decimated_grey(samples[0])
    frozen = [t for f in samples for t in _time(lambda f=f: fm.mean_abs_diff(fm.decimated_grey(f), previous), repeat)]
    aim = [t for g in greys[:40] for t in _time(lambda g=g: reference.locate(g, min_inliers=15), 1)]

    table = Table(title=f"camera health on {args.video.name}: {width}x{height}, {len(samples)} samples at "
                  f"{args.sample_fps:g}/s, OpenCV threads={args.threads}, {platform.processor() or platform.machine()}")
    for column in ("step", "mean ms", "p95 ms", "max ms", "how often"):
        table.add_column(column, justify="right" if column != "step" else "left")
    rows = [
        ("decode (baseline)", decode, "every frame"),
        ("prepare", prepare, "every sample"),
        ("stats", stats, "every sample"),
        ("frozen", frozen, "every sample"),
        ("aim (ORB+RANSAC)", aim, f"every {config.shifted.check_every_s:g} s"),
        ("observe (all)", observe, "every sample"),
    ]
    for name, values, often in rows:
        mean, p95, worst = _ms(values)
        table.add_row(name, f"{mean:.2f}", f"{p95:.2f}", f"{worst:.2f}", often)
    console = Console()
    console.print(table)
    observe_mean, observe_p95, _ = _ms(observe)
    decode_mean = _ms(decode)[0]
    aim_mean = _ms(aim)[0]
    per_second = observe_mean * args.sample_fps
    console.print(f"per camera: {per_second:.1f} ms of CPU per second ({per_second / 10:.2f} % of one core)")
    print(
        f"RESULT camera_health observe_ms_mean={observe_mean:.2f} observe_ms_p95={observe_p95:.2f} "
        f"aim_ms={aim_mean:.2f} decode_ms={decode_mean:.2f} ratio={observe_mean / decode_mean:.3f} "
        f"samples={len(samples)} threads={args.threads}"
    )


if __name__ == "__main__":
    main()
