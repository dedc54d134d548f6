"""`polewatch agent bench`: measured on this machine with the real model; and the sizing arithmetic."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from polewatch.agent.sizing import ProviderResult, capacity, recommend_rate
from polewatch.cli import app

RESULT = ProviderResult("CPUExecutionProvider", 10, latency_ms_p50=25.0, latency_ms_p95=30.0, cpu_ms_per_frame=40.0)


def test_capacity_is_the_tighter_of_cpu_and_detector_throughput() -> None:
    # 2 cores: 1500 CPU ms per second for cameras. At 5 fps a camera costs 5*40 + 10*3 = 230 ms: 6 by CPU;
    # the detector manages 40 fps, 36 of them usable: 7 cameras by throughput.
    five = capacity(RESULT, 5.0, cores=2, camera_fps=10.0, decode_cpu_ms=3.0)
    assert (five.cameras, five.limited_by) == (6, "cpu")
    # At 10 fps: 1500 / 430 = 3 by CPU, 36 / 10 = 3 by throughput.
    assert capacity(RESULT, 10.0, cores=2, camera_fps=10.0, decode_cpu_ms=3.0).cameras == 3
    slow = ProviderResult("CPUExecutionProvider", 10, 200.0, 250.0, 40.0)  # a GPU-bound 5 fps detector
    assert capacity(slow, 5.0, cores=8, camera_fps=10.0, decode_cpu_ms=3.0).limited_by == "throughput"


def test_recommended_rate_is_the_highest_that_fits() -> None:
    assert recommend_rate(RESULT, 3, cores=2, camera_fps=10.0, decode_cpu_ms=3.0) == 10.0
    assert recommend_rate(RESULT, 6, cores=2, camera_fps=10.0, decode_cpu_ms=3.0) == 5.0
    assert recommend_rate(RESULT, 40, cores=2, camera_fps=10.0, decode_cpu_ms=3.0) is None


def test_bench_measures_the_configured_model_and_recommends(tmp_path: Path) -> None:
    config = {
        "device_id": "pole-1",
        "state_dir": "state",
        "mqtt": {"host": "localhost"},
        "cameras": [{"id": f"cam{i}", "url": "rtsp://cam/1"} for i in range(2)],
        "detect": {"threads": 1},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["agent", "bench", "--config", str(path), "--frames", "6"], env={"COLUMNS": "200"})
    assert result.exit_code in (0, 3), result.output
    out = result.output
    assert "CPUExecutionProvider" in out and re.search(r"\d+ cores, 1\s+threads", out), out
    row = re.search(r"CPUExecutionProvider\s+│\s+([\d.]+)\s+│\s+([\d.]+)\s+│\s+([\d.]+)\s+│\s+([\d.]+)", out)
    assert row, out
    fps, p50, p95, cpu = (float(v) for v in row.groups())
    assert fps > 0 and 0 < p50 <= p95 and cpu > 0
    assert abs(fps - 1000.0 / p50) < 0.2
    if result.exit_code == 0:
        assert re.search(r"recommendation: detect\.fps: \d+ for 2 camera\(s\)", out), out


def test_bench_on_an_unreadable_video_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["agent", "bench", "--video", str(tmp_path / "none.mp4"), "--frames", "4"])
    assert result.exit_code == 1
    assert "cannot open" in result.output and "--video" in result.output
