"""Configuration documents as data: the layering rules, validation with the agent's own model, the diff."""

from __future__ import annotations

import pytest

from polewatch.fleet_server.configuration import Change, ConfigInvalid, diff, effective, merge, validate


def test_layers_merge_most_specific_last_objects_key_by_key_lists_whole() -> None:
    fleet = {"detect": {"fps": 5, "labels": ["person", "car"]}, "log_level": "INFO", "health_interval_s": 30}
    group = {"detect": {"fps": 2}, "cameras": [{"id": "cam1", "url": "rtsp://a/1"}]}
    device = {"cameras": [{"id": "cam9", "url": "rtsp://b/9"}], "log_level": None, "health_interval_s": 10}
    out = effective([fleet, group, device])
    assert out == {
        "detect": {"fps": 2, "labels": ["person", "car"]},  # fps from the group, labels kept from the fleet
        "cameras": [{"id": "cam9", "url": "rtsp://b/9"}],  # a list replaces whole
        "log_level": "INFO",  # a top-level null in a layer means "not set here"
        "health_interval_s": 10,
    }
    assert effective([None, None, None]) == {}
    # merge never changes its inputs (layers are stored rows)
    assert group == {"detect": {"fps": 2}, "cameras": [{"id": "cam1", "url": "rtsp://a/1"}]}
    assert merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_validation_names_the_field_as_the_agent_would() -> None:
    assert validate({"detect": {"fps": 2}}).detect is not None
    with pytest.raises(ConfigInvalid) as typo:
        validate({"detect": {"fsp": 2}})
    assert typo.value.field == "detect.fsp" and "Extra inputs" in typo.value.problem
    with pytest.raises(ConfigInvalid) as broker:
        validate({"mqtt": {"host": "evil"}})  # identity and broker stay in the box's own file
    assert broker.value.field == "mqtt"
    rule = {"id": "z", "type": "zone", "labels": ["dog"], "polygon": [[0, 0], [1, 0], [1, 1]]}
    with pytest.raises(ConfigInvalid) as labels:
        validate({"cameras": [{"id": "cam1", "url": "rtsp://x/1", "rules": [rule]}], "detect": {"labels": ["person"]}},
                 device_id="pole-a")  # fmt: skip
    assert labels.value.field == "cameras.0.rules.0.labels"
    assert str(labels.value).startswith("device pole-a: cameras.0.rules.0.labels: dog is not in detect.labels")


def test_diff_walks_objects_and_compares_other_values_whole() -> None:
    before = {"detect": {"fps": 5, "labels": ["person"]}, "log_level": "INFO"}
    after = {"detect": {"fps": 2, "labels": ["person"]}, "health_interval_s": 10}
    assert diff(before, after) == [
        Change("detect.fps", 5, 2),
        Change("health_interval_s", None, 10),
        Change("log_level", "INFO", None),
    ]
    assert diff(after, after) == []
