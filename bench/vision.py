"""Edge vision end to end: what the pipeline costs against bare inference, what motion gating saves,
how many cameras a box carries, how much memory the agent takes, how NanoDet agrees with YOLOv8n.

All in one run, on the same decoded frames where a comparison is made:

1. Throughput per model and provider: bare `session.run` on tensors prepared beforehand vs the
   pipeline at full speed (decode from the file + `detect()`), without and with motion gating.
   ratio = pipeline fps / bare fps (goal: >= 0.85 without gating).
2. CPU per camera at 5 detections/s with gating on, on vtest.avi and on a static scene (the empty
   street, median of vtest, with sensor noise), as process CPU time per second of footage: decoding
   every frame at 10 fps, the motion check, and detection at 5 fps. Cameras per box = cores / CPU
   per camera (goal on 2 cores: >= 6 on vtest; static scene < 3 % of one core).
3. Agent resident memory with 1 and 4 cameras: the real `polewatch agent run` on looping files
   (goal <= 250 MB with 1, <= +40 MB per extra camera).
4. Detection agreement: NanoDet (shipped) against YOLOv8n (reference) on persons, IoU >= 0.5:
   precision and recall of NanoDet.
5. Camera-health analysis cost per sample (`CameraHealthChecker.observe`) vs decoding a frame.

    python bench/vision.py [--frames N] [--video PATH] [--skip-memory]

The last line is machine-readable: RESULT vision key=value ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import psutil
import yaml
from rich.console import Console
from rich.table import Table

from polewatch.agent.capture.camera_health import CameraHealthChecker
from polewatch.agent.config import DEFAULT_LABELS, CameraHealthConfig
from polewatch.agent.inference import OnnxDetector, load_detector
from polewatch.agent.inference.boxes import iou_matrix
from polewatch.agent.inference.motion import MotionGatedDetector, MotionSettings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VTEST = SHARED / "data" / "vtest.avi"
MODELS = SHARED / "models"
SIDECARS = REPO / "docs" / "models"
SHIPPED_CLIP = REPO / "polewatch" / "samples" / "vtest-clip.mp4"
FOOTAGE_FPS = 10.0
DETECT_FPS = 5.0
Image = npt.NDArray[Any]


def decode_all(video: Path, count: int) -> list[Image]:
    cap = cv2.VideoCapture(str(video))
    frames: list[Image] = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise SystemExit(f"no frames decoded from {video}")
    return frames


def iter_video(video: Path, count: int) -> Iterator[Image]:
    cap = cv2.VideoCapture(str(video))
    try:
        for _ in range(count):
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def models(workdir: Path) -> list[tuple[str, Path]]:
    """The shipped NanoDet, and YOLOv8n and SSDLite from ../shared with their sidecars beside them."""
    found = [("nanodet-m-416", REPO / "agent" / "inference" / "models" / "nanodet-m-416.onnx")]
    for name in ("yolov8n-640", "ssdlite-person-300"):
        model = MODELS / f"{name}.onnx"
        if not model.is_file():
            continue
        link = workdir / f"{name}.onnx"
        link.symlink_to(model)
        shutil.copy(SIDECARS / f"{name}.json", workdir / f"{name}.json")
        found.append((name, link))
    return found


def static_scene(frames: list[Image], path: Path, count: int) -> Path:
    """The empty street: the median of the footage (people removed) with sensor noise, as MPEG-4 video
    (lossy with key frames, as a camera encodes it)."""
    background = np.median(np.stack(frames[:: max(1, len(frames) // 40)]), axis=0)
    rng = np.random.default_rng(7)
    height, width = background.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FOOTAGE_FPS, (width, height))
    for _ in range(count):
        writer.write(np.clip(background + rng.normal(0.0, 2.0, background.shape), 0, 255).astype(np.uint8))
    writer.release()
    return path


def throughput(detector: OnnxDetector, video: Path, frames: list[Image], rounds: int = 3) -> dict[str, float]:
    """Bare fps on prepared tensors; pipeline fps (decode + detect) without and with gating.

    The three alternate for `rounds` rounds, so that a noisy neighbour or a throttling CPU affects
    all of them alike instead of skewing a ratio.
    """
    tensors = [detector.preprocess(f).copy() for f in frames]
    names, input_name = detector.decoder.output_names, detector.input_name
    detector.warm_up(3)
    for frame in frames[:3]:
        detector.detect(frame)
    spent = {"bare": 0.0, "pipeline": 0.0, "gated": 0.0}
    skip = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for tensor in tensors:
            detector.session.run(names, {input_name: tensor})
        spent["bare"] += time.perf_counter() - started
        started = time.perf_counter()
        for frame in iter_video(video, len(frames)):
            detector.detect(frame)
        spent["pipeline"] += time.perf_counter() - started
        gate = MotionGatedDetector(detector, MotionSettings())
        started = time.perf_counter()
        for i, frame in enumerate(iter_video(video, len(frames))):
            gate.detect(frame, i / FOOTAGE_FPS)
        spent["gated"] += time.perf_counter() - started
        skip = gate.stats.skip_ratio
    runs = rounds * len(frames)
    return {**{k: runs / v for k, v in spent.items()}, "skip": skip}


def camera_cpu(detector: OnnxDetector, video: Path, count: int, *, gated: bool) -> tuple[float, float]:
    """Process CPU seconds per second of footage for one camera: decode every frame, detect at 5 fps."""
    gate = MotionGatedDetector(detector, MotionSettings()) if gated else None
    every = round(FOOTAGE_FPS / DETECT_FPS)
    cpu = time.process_time()
    n = 0
    for i, frame in enumerate(iter_video(video, count)):
        n += 1
        if i % every:
            continue
        if gate is not None:
            gate.detect(frame, i / FOOTAGE_FPS)
        else:
            detector.detect(frame)
    used = time.process_time() - cpu
    return used / (n / FOOTAGE_FPS), gate.stats.skip_ratio if gate else 0.0


def agreement(nanodet: OnnxDetector, yolo: OnnxDetector, frames: list[Image]) -> tuple[float, float, int]:
    """Precision and recall of NanoDet persons against YOLOv8n persons (IoU >= 0.5, one-to-one)."""
    tp = fp = fn = 0
    for frame in frames:
        mine = [d.box for d in nanodet.detect(frame) if d.label == "person"]
        ref = [d.box for d in yolo.detect(frame) if d.label == "person"]
        if not mine or not ref:
            fp += len(mine)
            fn += len(ref)
            continue
        overlaps = iou_matrix(mine, ref)
        matched = 0
        while True:
            i, j = np.unravel_index(np.argmax(overlaps), overlaps.shape)
            if overlaps[i, j] < 0.5:
                break
            matched += 1
            overlaps[i, :] = -1
            overlaps[:, j] = -1
        tp += matched
        fp += len(mine) - matched
        fn += len(ref) - matched
    return tp / max(1, tp + fp), tp / max(1, tp + fn), tp + fn


def agent_memory(workdir: Path, cameras: int, video: Path, settle_s: float = 25.0) -> float:
    """Resident MB of the real agent process with `cameras` looping file cameras, after `settle_s`."""
    config = {
        "device_id": "bench-pole",
        "state_dir": str(workdir / f"state-{cameras}"),
        "mqtt": {"host": "127.0.0.1", "port": 9, "reconnect_max_s": 5},  # nobody there: the outbox keeps all
        "cameras": [{"id": f"cam{i}", "url": str(video), "loop": True} for i in range(cameras)],
        "detect": {"fps": DETECT_FPS},
        "log_level": "WARNING",
    }
    path = workdir / f"agent-{cameras}.yaml"
    path.write_text(yaml.safe_dump(config))
    polewatch = Path(sys.executable).with_name("polewatch")
    proc = subprocess.Popen(
        [str(polewatch), "agent", "run", "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + settle_s
        peak = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited with {proc.returncode} while measuring memory")
            peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
            time.sleep(0.5)
        return peak / 1e6
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def health_cost(frames: list[Image]) -> tuple[float, float]:
    checker = CameraHealthChecker("bench", CameraHealthConfig(), reference=frames[0])
    times = []
    for i, frame in enumerate(frames):
        started = time.perf_counter()
        checker.observe(frame, i / 2.0)
        times.append(time.perf_counter() - started)
    return float(np.mean(times) * 1000.0), float(np.percentile(times, 95) * 1000.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="frames of the footage per measurement")
    parser.add_argument("--video", type=Path, default=None, help=f"footage (default {VTEST})")
    parser.add_argument("--skip-memory", action="store_true", help="skip the agent memory measurement (~1 min)")
    parser.add_argument("--only-memory", action="store_true", help="only the agent memory measurement")
    args = parser.parse_args(argv)
    video: Path = args.video or (VTEST if VTEST.is_file() else SHIPPED_CLIP)
    console = Console(width=130)
    cores = len(os.sched_getaffinity(0))
    workdir = Path(tempfile.mkdtemp(prefix="bench-vision-"))
    result: dict[str, str] = {}
    try:
        frames = decode_all(video, args.frames)
        decode_started = time.process_time()
        decode_all(video, args.frames)
        decode_ms = (time.process_time() - decode_started) * 1000.0 / len(frames)
        console.print(
            f"[bold]bench/vision.py[/bold]  {video.name} {frames[0].shape[1]}x{frames[0].shape[0]}, "
            f"{len(frames)} frames, {cores} cores, decode {decode_ms:.1f} ms CPU/frame"
        )

        if args.only_memory:
            one, four = agent_memory(workdir, 1, SHIPPED_CLIP), agent_memory(workdir, 4, SHIPPED_CLIP)
            console.print(
                f"(3) agent resident memory: 1 camera {one:.0f} MB, 4 cameras {four:.0f} MB, "
                f"+{(four - one) / 3:.1f} MB per extra camera"
            )
            print(f"RESULT vision rss_1cam_mb={one:.0f} rss_per_extra_cam_mb={(four - one) / 3:.1f}", flush=True)
            return 0

        # 1. throughput
        table = Table(title="(1) decode + detect at full speed vs bare onnxruntime on the same frames")
        for column in ("model", "provider", "bare fps", "pipeline fps", "ratio", "gated fps", "gated/bare", "skipped"):
            table.add_column(column, justify="left" if column in ("model", "provider") else "right")
        detectors: dict[str, OnnxDetector] = {}
        for name, path in models(workdir):
            labels = list(DEFAULT_LABELS) if name != "ssdlite-person-300" else None
            detector = load_detector(path, labels=labels, score_threshold=0.35 if name != "yolov8n-640" else 0.25)
            detectors[name] = detector
            t = throughput(detector, video, frames)
            table.add_row(
                name,
                detector.provider,
                f"{t['bare']:.1f}",
                f"{t['pipeline']:.1f}",
                f"{t['pipeline'] / t['bare']:.3f}",
                f"{t['gated']:.1f}",
                f"{t['gated'] / t['bare']:.3f}",
                f"{t['skip']:.0%}",
            )
            key = name.split("-")[0]
            result[f"{key}_ratio"] = f"{t['pipeline'] / t['bare']:.3f}"
            result[f"{key}_pipeline_fps"] = f"{t['pipeline']:.1f}"
            result[f"{key}_bare_fps"] = f"{t['bare']:.1f}"
        console.print(table)

        # 2. CPU per camera
        nanodet = detectors["nanodet-m-416"]
        static = static_scene(frames, workdir / "static.mp4", len(frames))
        table = Table(title=f"(2) CPU per camera, {FOOTAGE_FPS:g} fps decoded, {DETECT_FPS:g} detections/s (NanoDet)")
        for column in ("scene", "gating", "% of a core", "skipped", f"cameras on {cores} cores"):
            table.add_column(column, justify="left" if column in ("scene", "gating") else "right")
        for scene, path in (("vtest", video), ("static", static)):
            for gated in (False, True):
                share, skipped = camera_cpu(nanodet, path, len(frames), gated=gated)
                table.add_row(
                    scene, "on" if gated else "off", f"{share * 100:.1f}", f"{skipped:.0%}", f"{cores / share:.1f}"
                )
                result[f"cpu_{scene}_{'gated' if gated else 'plain'}_pct"] = f"{share * 100:.1f}"
        console.print(table)
        result["cameras_vtest_gated"] = f"{cores / (float(result['cpu_vtest_gated_pct']) / 100):.1f}"

        # 3. memory
        if not args.skip_memory:
            one = agent_memory(workdir, 1, SHIPPED_CLIP)
            four = agent_memory(workdir, 4, SHIPPED_CLIP)
            console.print(
                f"(3) agent resident memory: 1 camera {one:.0f} MB, 4 cameras {four:.0f} MB, "
                f"+{(four - one) / 3:.1f} MB per extra camera"
            )
            result["rss_1cam_mb"] = f"{one:.0f}"
            result["rss_per_extra_cam_mb"] = f"{(four - one) / 3:.1f}"

        # 4. agreement
        if "yolov8n-640" in detectors:
            sample = frames[:: max(1, len(frames) // 100)]
            precision, recall, persons = agreement(nanodet, detectors["yolov8n-640"], sample)
            console.print(
                f"(4) NanoDet vs YOLOv8n, persons, IoU >= 0.5, {len(sample)} frames ({persons} reference "
                f"persons): precision {precision:.3f}, recall {recall:.3f}"
            )
            result["nanodet_precision"] = f"{precision:.3f}"
            result["nanodet_recall"] = f"{recall:.3f}"

        # 5. camera health
        mean_ms, p95_ms = health_cost(frames[:: max(1, len(frames) // 60)])
        console.print(
            f"(5) camera-health analysis per sample: mean {mean_ms:.2f} ms, p95 {p95_ms:.2f} ms "
            f"({mean_ms / decode_ms:.2f} x decoding a frame)"
        )
        result["health_ms"] = f"{mean_ms:.2f}"
        result["decode_ms"] = f"{decode_ms:.2f}"
        (workdir / "result.json").write_text(json.dumps(result))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("RESULT vision " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
