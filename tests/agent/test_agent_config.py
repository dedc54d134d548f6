"""A bad agent config stops the agent with a message naming the field and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from polewatch.agent.config import ConfigError, load_config
from polewatch.cli import app

GOOD = {
    "device_id": "pole-17",
    "state_dir": "state",
    "mqtt": {"host": "broker.example", "port": 8883, "username": "pole-17", "password": "s3cret"},
    "cameras": [{"id": "cam1", "url": "rtsp://user:pw@10.0.0.9/stream1"}, {"id": "cam2", "url": "clip.mp4"}],
}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_config_resolves_relative_paths_from_its_folder(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.cameras[1].url == str(tmp_path / "clip.mp4")
    assert cfg.cameras[0].url.startswith("rtsp://")
    assert cfg.detect.fps == 5.0 and "person" in cfg.detect.labels
    assert cfg.mqtt.password is not None and "s3cret" not in repr(cfg), "secrets never printed"


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (lambda c: c.pop("device_id"), "device_id", "Field required"),
        (lambda c: c.update(device_id="pole 17"), "device_id", "String should match pattern"),
        (lambda c: c["mqtt"].update(port=70000), "mqtt.port", "less than or equal to 65535"),
        (lambda c: c.update(cameras=[]), "cameras", "at least 1 item"),
        (lambda c: c["cameras"][0].update(url="ftp://x"), "cameras.0.url", "url scheme"),
        (lambda c: c.update(detect={"fps": 0}), "detect.fps", "greater than 0"),
        (lambda c: c.update(detcet={"fps": 5}), "detcet", "Extra inputs are not permitted"),
        (lambda c: c["cameras"].append({"id": "cam1", "url": "x.mp4"}), "cameras", "repeated: cam1"),
        (lambda c: c["cameras"][0].update(health={"coverd": {}}), "cameras.0.health.coverd", "Extra inputs"),
        (
            lambda c: c["cameras"][0].update(health={"blurred": {"start_ratio": 0.6, "end_ratio": 0.4}}),
            "cameras.0.health.blurred",
            "hysteresis",
        ),
        (
            lambda c: c["cameras"][0].update(health={"shifted": {"start_fraction": 0.02}}),
            "cameras.0.health.shifted",
            "hysteresis",
        ),
        (
            lambda c: c["cameras"][0].update(health={"frozen": {"start_after_s": -1}}),
            "cameras.0.health.frozen.start_after_s",
            "greater than or equal to 0",
        ),
        (lambda c: c.update(outbox={"max_bytes": "100KiB"}), "outbox.max_bytes", "greater than or equal to 262144"),
        (lambda c: c.update(outbox={"max_bytes": "lots"}), "outbox.max_bytes", "could not parse"),
        (lambda c: c.update(outbox={"ttl_s": {"telemetry": -1}}), "outbox.ttl_s.telemetry", "greater than 0"),
        (lambda c: c.update(outbox={"ttl_s": {"alerts": 60}}), "outbox.ttl_s.alerts", "Extra inputs"),
        (lambda c: c.update(outbox={"replay_rate": 0}), "outbox.replay_rate", "greater than 0"),
    ],
)
def test_invalid_config_names_field_and_problem(tmp_path: Path, change: object, field: str, problem: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    change(data)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert f"{field}:" in str(info.value) and problem in str(info.value)


def test_unreadable_and_non_yaml_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_agent_run_with_a_bad_config_exits_2_before_touching_cameras(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["mqtt"]["port"] = "eighty"
    result = CliRunner().invoke(app, ["agent", "run", "--config", str(_write(tmp_path, data))])
    assert result.exit_code == 2
    assert "mqtt.port" in result.output and "valid integer" in result.output
    assert not (tmp_path / "state").exists(), "nothing was created for an invalid config"


def test_check_config_shows_the_plan(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["agent", "check-config", str(_write(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    assert "pole-17" in result.output and "broker.example:8883" in result.output
    assert "user:pw@" not in result.output and "user:***@" in result.output, "camera passwords are never shown"


def test_check_config_shows_snapshots_privacy_and_motion_gating(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["cameras"][0]["privacy"] = {"masks": [[[0, 0], [0.5, 0], [0.5, 0.5]]]}
    data["cameras"][0]["motion"] = {"enabled": True, "recheck_s": 8}
    data["cameras"][1]["snapshots"] = {"enabled": False}
    result = CliRunner().invoke(app, ["agent", "check-config", str(_write(tmp_path, data))], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "snapshots ≤ 60000 bytes, 1 mask(s), blur person; motion gating on (re-check every 8 s)" in result.output
    assert "no snapshots; no motion gating" in result.output


def test_camera_health_has_defaults_per_camera_and_a_reference_beside_the_config(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["cameras"][0]["reference"] = "reference/cam1.png"
    data["cameras"][1]["health"] = {"shifted": {"enabled": False}, "covered": {"start_after_s": 30}}
    cfg = load_config(_write(tmp_path, data))
    first, second = cfg.cameras
    assert first.reference == tmp_path / "reference" / "cam1.png"
    assert second.reference is None
    assert first.health.enabled and first.health.sample_fps == 2.0
    assert (first.health.covered.start_after_s, first.health.covered.end_after_s) == (10.0, 5.0)
    assert first.health.shifted.enabled and first.health.low_fps.expected_fps is None
    assert not second.health.shifted.enabled
    assert second.health.covered.start_after_s == 30.0 and second.health.covered.dark_mean_max == 20.0


def test_outbox_section_takes_sizes_with_units_and_defaults_the_rest(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["outbox"] = {"max_bytes": "64MiB", "ttl_s": {"telemetry": 259200}, "replay_rate": None}
    cfg = load_config(_write(tmp_path, data))
    assert cfg.outbox.max_bytes == 64 * 1024 * 1024
    assert cfg.outbox.ttl_s.telemetry == 259200 and cfg.outbox.ttl_s.alert is None
    assert cfg.outbox.replay_rate is None, "null: replay as fast as the broker acknowledges"
    assert load_config(_write(tmp_path, GOOD)).outbox.replay_rate == 100.0
