"""How much the detection pipeline costs on top of the bare model, on real footage.

Decodes N frames once, then in the same run times (a) bare onnxruntime `session.run` on input
tensors prepared beforehand from those frames and (b) the full `Detector.detect` (preprocess +
run + decode + NMS) on the same frames. The ratio is pipeline fps / bare fps (1.0 = our own code
costs nothing; 0.85 = it costs 15 %); it should stay close to 1 on a Raspberry Pi as well as here.

    python bench/detect.py [--frames N] [--video PATH] [--rounds R] [--threads T] [--model PATH]

The two measurements alternate for R rounds (default 3) so that a noisy neighbour or a CPU that
throttles affects both alike instead of skewing the ratio.

The last line is machine-readable:
    RESULT detect bare_fps=... pipeline_fps=... ratio=... frames=... provider=...  (ratio = pipeline/bare fps)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from polewatch.agent.inference import DEFAULT_MODEL, OnnxDetector, load_detector

REPO = Path(__file__).resolve().parents[1]
FULL_FOOTAGE = REPO.parent / "shared" / "data" / "vtest.avi"
SHIPPED_CLIP = REPO / "polewatch" / "samples" / "vtest-clip.mp4"
WARM_UP_RUNS = 5


def default_video() -> Path:
    return FULL_FOOTAGE if FULL_FOOTAGE.is_file() else SHIPPED_CLIP


def decode(video: Path, count: int) -> list[npt.NDArray[np.uint8]]:
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise SystemExit(f"cannot open {video}")
    frames: list[npt.NDArray[np.uint8]] = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(np.asarray(frame, dtype=np.uint8))
    capture.release()
    if not frames:
        raise SystemExit(f"no frames decoded from {video}")
    return frames


def time_bare(detector: OnnxDetector, tensors: list[npt.NDArray[np.float32]]) -> list[float]:
    session, name, outputs = detector.session, detector.input_name, detector.decoder.output_names
    times = []
    for tensor in tensors:
        started = time.perf_counter()
        session.run(outputs, {name: tensor})
        times.append(time.perf_counter() - started)
    return times


def time_pipeline(detector: OnnxDetector, frames: list[npt.NDArray[np.uint8]]) -> tuple[list[float], int]:
    times = []
    found = 0
    for frame in frames:
        started = time.perf_counter()
        detections = detector.detect(frame)
        times.append(time.perf_counter() - started)
        found += len(detections)
    return times, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="frames to decode and time (default 100)")
    parser.add_argument("--video", type=Path, default=None, help=f"footage (default {default_video()})")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (b) (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model with its sidecar JSON")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rounds < 1:
        parser.error("--frames and --rounds must be at least 1")
    video: Path = args.video or default_video()
    console = Console(width=120)

    frames = decode(video, args.frames)
    detector = load_detector(args.model, threads=args.threads)
    # Pre-made inputs for the bare measurement: the detector's own preprocessing, copied out of its
    # reused buffer, so (a) and (b) feed the model exactly the same tensors.
    tensors = [detector.preprocess(frame).copy() for frame in frames]

    detector.warm_up(WARM_UP_RUNS)
    for frame in frames[:WARM_UP_RUNS]:
        detector.detect(frame)
    bare: list[float] = []
    pipeline: list[float] = []
    found = 0
    for _ in range(args.rounds):
        bare += time_bare(detector, tensors)
        times, found = time_pipeline(detector, frames)
        pipeline += times

    n = len(frames)
    runs = len(bare)
    bare_fps = runs / sum(bare)
    pipeline_fps = runs / sum(pipeline)
    ratio = pipeline_fps / bare_fps
    session_options = detector.session.get_session_options()
    height, width = frames[0].shape[:2]

    console.print(
        f"[bold]bench/detect.py[/bold]  model {args.model.name} ({detector.metadata.family}, "
        f"{detector.metadata.input.width}x{detector.metadata.input.height})  "
        f"video {video.name} {width}x{height}"
    )
    console.print(
        f"onnxruntime {ort.__version__}  provider {detector.provider}  "
        f"intra-op threads {session_options.intra_op_num_threads}  cores {os.cpu_count()}  "
        f"{platform.machine()}  Python {platform.python_version()}  OpenCV {cv2.__version__}"
    )
    table = Table(title=f"{n} frames x {args.rounds} rounds, after {WARM_UP_RUNS} warm-up runs")
    for column in ("measurement", "frames", "runs", "fps", "ms/frame mean", "p50 ms", "p95 ms", "fps vs bare"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for label, times, fps in (
        ("(a) bare session.run", bare, bare_fps),
        ("(b) Detector.detect", pipeline, pipeline_fps),
    ):
        ms = np.asarray(times) * 1000.0
        table.add_row(
            label,
            str(n),
            str(runs),
            f"{fps:.1f}",
            f"{ms.mean():.2f}",
            f"{np.percentile(ms, 50):.2f}",
            f"{np.percentile(ms, 95):.2f}",
            f"{fps / bare_fps:.3f}",
        )
    overhead_ms = (sum(pipeline) - sum(bare)) / runs * 1000.0
    overhead_p50 = (np.median(pipeline) - np.median(bare)) * 1000.0
    table.add_row(
        "(b) - (a): preprocess + decode + NMS", "", "", "", f"{overhead_ms:.2f}", f"{overhead_p50:.2f}", "", ""
    )
    console.print(table)
    console.print(f"{found} detections per round ({found / n:.1f} per frame)")
    print(
        f"RESULT detect bare_fps={bare_fps:.2f} pipeline_fps={pipeline_fps:.2f} ratio={ratio:.3f} "
        f"frames={n} provider={detector.provider}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
