"""Camera rules in the agent's config file: what is accepted, and a message naming the field for the rest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from polewatch.agent.config import (
    ConfigError,
    LeftBehindRuleConfig,
    LineRuleConfig,
    LoiterRuleConfig,
    ZoneRuleConfig,
    load_config,
)
from polewatch.cli import app

RULES_YAML = """
device_id: pole-17
state_dir: state
mqtt: {host: broker.example}
detect:
  labels: [person, car, backpack, suitcase, handbag]
cameras:
  - id: cam1
    url: clip.mp4
    rules:
      - type: line                      # pedestrians crossing the walkway, per direction
        id: walkway
        points: [[0.73, 0.78], [0.73, 0.24]]
        labels: [person]
      - type: zone
        id: road
        units: pixels
        polygon: [[480, 150], [640, 150], [640, 440], [480, 440]]
      - type: loiter
        id: lamp
        polygon: [[0.44, 0.38], [0.6, 0.38], [0.6, 0.54], [0.44, 0.54]]
        dwell_s: 30
        anchor: centre
      - type: left_behind
        id: litter
        after_s: 120
"""


def _load(tmp_path: Path, data: Any) -> Any:
    path = tmp_path / "agent.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return load_config(path)


def test_every_rule_type_loads_with_its_defaults(tmp_path: Path) -> None:
    rules = _load(tmp_path, RULES_YAML).cameras[0].rules
    line, zone, loiter, left = rules
    assert isinstance(line, LineRuleConfig) and line.points == [(0.73, 0.78), (0.73, 0.24)]
    assert (line.units, line.anchor, line.hysteresis, line.labels) == ("normalised", "bottom_centre", 0.1, ["person"])
    assert isinstance(zone, ZoneRuleConfig) and zone.units == "pixels" and zone.labels == "any"
    assert isinstance(loiter, LoiterRuleConfig) and loiter.dwell_s == 30 and loiter.anchor == "centre"
    assert isinstance(left, LeftBehindRuleConfig)
    assert left.labels == ["backpack", "handbag", "suitcase"] and left.attended_by == ["person"]
    assert (left.after_s, left.absent_s, left.learn_s, left.polygon) == (120, 5, 10, None)


def test_a_camera_without_rules_has_none(tmp_path: Path) -> None:
    data = yaml.safe_load(RULES_YAML)
    del data["cameras"][0]["rules"]
    assert _load(tmp_path, data).cameras[0].rules == []


def test_check_config_lists_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(RULES_YAML)
    result = CliRunner().invoke(app, ["agent", "check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "line walkway, zone road, loiter lamp, left_behind litter" in result.output


def _rule(index: int, **changes: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        data["cameras"][0]["rules"][index].update(changes)

    return change


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (_rule(1, polygon=[[0, 0], [1, 0]]), "cameras.0.rules.1.zone.polygon", "at least 3 items"),
        (
            _rule(1, polygon=[[100, 100], [300, 100], [100, 300], [300, 300]]),
            "cameras.0.rules.1.zone.polygon",
            "edges 1-2 and 3-0 cross: the polygon must not intersect itself",
        ),
        (_rule(1, polygon=[[0, 0], [100, 100], [200, 200]]), "cameras.0.rules.1.zone.polygon", "has no area"),
        (
            _rule(1, units="normalised"),
            "cameras.0.rules.1.zone.polygon",
            "point 0 is (480, 150) but units is normalised",
        ),
        (_rule(1, units="pixels", polygon=[[-5, 0], [10, 0], [10, 10]]), "cameras.0.rules.1.zone.polygon", "negative"),
        (_rule(1, units="inches"), "cameras.0.rules.1.zone.units", "'normalised' or 'pixels'"),
        (_rule(0, points=[[0.2, 0.5], [0.2, 0.5]]), "cameras.0.rules.0.line.points", "two distinct points"),
        (_rule(0, points=[[0.2, 0.5]]), "cameras.0.rules.0.line.points", "at least 2 items"),
        (_rule(0, points=[[0, 0], [0, 1], [1, 1]]), "cameras.0.rules.0.line.points", "at most 2 items"),
        (_rule(0, hysteresis=-0.1), "cameras.0.rules.0.line.hysteresis", "greater than or equal to 0"),
        (_rule(0, anchor="feet"), "cameras.0.rules.0.line.anchor", "'bottom_centre', 'centre' or 'top_centre'"),
        (_rule(2, dwell_s=0), "cameras.0.rules.2.loiter.dwell_s", "greater than 0"),
        (_rule(3, after_s=-1), "cameras.0.rules.3.left_behind.after_s", "greater than 0"),
        (_rule(3, after_s=4), "cameras.0.rules.3.left_behind", "absent_s (5) must be shorter than after_s (4)"),
        (_rule(3, still_iou=0), "cameras.0.rules.3.left_behind.still_iou", "greater than 0"),
        (_rule(3, polygon=[[0, 0], [1, 1], [1, 0], [0, 1]]), "cameras.0.rules.3.left_behind.polygon", "cross"),
        (_rule(0, type="circle"), "cameras.0.rules.0", "does not match any of the expected tags"),
        (_rule(0, lables=["person"]), "cameras.0.rules.0.line.lables", "Extra inputs are not permitted"),
        (_rule(0, labels=[]), "cameras.0.rules.0.line.labels", "labels is empty"),
        (_rule(0, id="road"), "cameras.0.rules", "rule ids must be unique per camera; repeated: road"),
        (_rule(0, id="walk way"), "cameras.0.rules.0.line.id", "should match pattern"),
        (_rule(0, labels=["person", "dog"]), "cameras.0.rules.0.labels", "dog is not in detect.labels"),
        (_rule(3, attended_by=["guard"]), "cameras.0.rules.3.attended_by", "guard is not in detect.labels"),
    ],
)
def test_invalid_rules_name_the_field_and_the_problem(
    tmp_path: Path, change: Any, field: str, problem: str
) -> None:
    data = copy.deepcopy(yaml.safe_load(RULES_YAML))
    change(data)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    assert f"  {field}:" in str(info.value) and problem in str(info.value), str(info.value)


def test_left_behind_defaults_need_their_labels_detected(tmp_path: Path) -> None:
    """The default detect.labels are people and vehicles; luggage must be asked for."""
    data = yaml.safe_load(RULES_YAML)
    del data["detect"]
    data["cameras"][0]["rules"] = [{"type": "left_behind", "id": "bags"}]
    with pytest.raises(ConfigError, match=r"cameras\.0\.rules\.0\.labels: backpack, handbag, suitcase are not in "
                                          r"detect\.labels, so the detector never reports them"):
        _load(tmp_path, data)
    data["cameras"][0]["rules"] = [{"type": "left_behind", "id": "any", "labels": "any"}]
    assert _load(tmp_path, data).cameras[0].rules[0].labels == "any"
    data["detect"] = {"labels": ["person"]}
    with pytest.raises(ConfigError, match=r"cameras\.0\.rules\.0\.labels: any leaves nothing to watch"):
        _load(tmp_path, data)


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Camera rules", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(RULES_YAML)
    data.update(yaml.safe_load(example))
    del data["detect"]
    cameras = _load(tmp_path, data).cameras
    assert [rule.type for rule in cameras[0].rules] == ["line", "zone", "loiter", "left_behind"]
