"""The down kinds (config, command) and their answers (config_report, command_ack) in the contract."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from polewatch.protocol import (
    CORE_KINDS,
    DOWN_KINDS,
    KINDS,
    UP_KINDS,
    AgentSettings,
    Command,
    CommandAck,
    CommandMessage,
    ConfigMessage,
    ConfigReport,
    DesiredConfig,
    MessageError,
    build,
    decode,
    encode,
    topics,
)
from polewatch.protocol.commands import COMMAND_ARGS, SnapshotArgs


def test_down_messages_round_trip_on_the_down_branch_only() -> None:
    document = DesiredConfig(version=3, config=AgentSettings.model_validate({"detect": {"fps": 2}}))
    message = build(document, device_id="pole-17", seq=9)
    topic = topics.parse(topics.down("pole-17", "config"))
    decoded = decode(encode(message), topic, kinds=DOWN_KINDS)
    assert isinstance(decoded, ConfigMessage) and decoded.body.config.detect is not None
    assert decoded.body.config.detect.fps == 2
    assert json.loads(encode(message))["body"]["config"] == {"detect": {"fps": 2.0}}, "only the keys set"
    with pytest.raises(MessageError) as wrong_way:
        decode(encode(message), topics.parse(topics.up("pole-17", "config")), kinds=KINDS)
    assert wrong_way.value.reason == "direction_mismatch"
    ack = build(CommandAck(command_id="c-1", status="done", result={"x": 1}), device_id="pole-17", seq=10)
    with pytest.raises(MessageError) as up_on_down:
        decode(encode(ack), topics.parse(topics.down("pole-17", "command_ack")), kinds=KINDS)
    assert up_on_down.value.reason == "direction_mismatch"


def test_new_kinds_are_not_core_kinds_so_older_receivers_count_them_as_unknown() -> None:
    assert set(DOWN_KINDS) | set(UP_KINDS) == set(KINDS) and not set(DOWN_KINDS) & set(UP_KINDS)
    assert not {"config", "command", "config_report", "command_ack"} & set(CORE_KINDS)
    report = build(ConfigReport(version=2, status="refused", reason="detect.fps: too high", field="detect.fps"),
                   device_id="pole-17", seq=1)
    with pytest.raises(MessageError) as exc:
        decode(encode(report))
    assert exc.value.reason == "unknown_kind"
    assert decode(encode(report), kinds=UP_KINDS) == report


def test_a_command_with_an_unknown_name_still_decodes_so_the_box_can_refuse_it_by_id() -> None:
    message = build(Command(command_id="c-9", name="reboot", args={"now": True}), device_id="pole-17", seq=1)
    decoded = decode(encode(message), kinds=DOWN_KINDS)
    assert isinstance(decoded, CommandMessage) and decoded.body.name == "reboot"
    with pytest.raises(ValidationError):
        Command(command_id="has space", name="snapshot")
    assert set(COMMAND_ARGS) == {"restart_camera", "snapshot", "set_log_level", "rotate_credentials"}
    with pytest.raises(ValidationError):
        SnapshotArgs.model_validate({"camera_id": "cam1", "quality": 1000})


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"device_id": "pole-99"}, "device_id"),
        ({"mqtt": {"host": "x"}}, "mqtt"),
        ({"state_dir": "/tmp"}, "state_dir"),
        ({"cameras": [{"id": "cam1", "url": "rtsp://x", "reference": "/etc/passwd"}]}, "reference"),
        ({"detect": {"threads": 4}}, "threads"),
        ({"cameras": []}, "cameras"),
        ({"detect": {"labels": ["car"]}, "cameras": [{"id": "c", "url": "rtsp://x", "privacy": {"blur_labels": []},
            "rules": [{"type": "line", "id": "l", "points": [[0, 0], [1, 1]], "labels": ["person"]}]}]},
         "cameras.0.rules.0.labels: person is not in detect.labels"),
        # People are blurred by default: a detector that cannot see them could not blur them.
        ({"detect": {"labels": ["car"]}, "cameras": [{"id": "c", "url": "rtsp://x"}]},
         "cameras.0.privacy.blur_labels: person not in detect.labels"),
    ],
)
def test_the_server_can_validate_a_document_before_publishing_it(document: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AgentSettings.model_validate(document)
    assert problem in str(exc.value)


def test_the_json_schema_describes_every_kind_with_the_document_model() -> None:
    from polewatch.protocol import json_schema

    schema = json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(KINDS)
    assert "AgentSettings" in schema["$defs"] and "CameraSettings" in schema["$defs"]
