"""The technician's pole-side checks, on the real sample footage and real failures."""

from __future__ import annotations

from pathlib import Path

import cv2
from typer.testing import CliRunner

from polewatch.cli import app
from polewatch.demo import sample_clip
from support.ports import free_port

runner = CliRunner()


def test_probe_camera_reports_the_stream_and_saves_a_reference_view(tmp_path: Path) -> None:
    reference = tmp_path / "ref" / "cam1.jpg"
    result = runner.invoke(app, ["provision", "probe-camera", str(sample_clip()), "--frames", "10",
                                 "--reference", str(reference)])
    assert result.exit_code == 0, result.output
    assert "768x576" in result.output and "h264" in result.output.lower()
    image = cv2.imread(str(reference))
    assert image is not None and image.shape == (576, 768, 3)


def test_probe_camera_on_a_missing_file_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["provision", "probe-camera", str(tmp_path / "nope.mp4")])
    assert result.exit_code == 1
    assert "no such video file" in result.output


def test_probe_camera_that_refuses_the_connection_says_what_to_check() -> None:
    result = runner.invoke(app, ["provision", "probe-camera", f"rtsp://admin:pw@127.0.0.1:{free_port()}/stream1"])
    assert result.exit_code == 1
    assert "did not answer" in result.output and "user and password" in result.output


def test_check_box_lists_every_check(tmp_path: Path) -> None:
    result = runner.invoke(app, ["provision", "check-box", "--state-dir", str(tmp_path)])
    for name in ("disk", "memory", "clock", "temperature", "inference"):
        assert name in result.output
    assert "CPUExecutionProvider" in result.output
    assert result.exit_code in (0, 1)
    assert (result.exit_code == 1) == ("FAIL" in result.output)
