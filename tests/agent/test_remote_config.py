"""Merging a remote document over the box's file, and the state files that keep it across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from polewatch.agent.config import AgentConfig, parse_config
from polewatch.agent.remote_config import ConfigRefused, RemoteConfigStore, effective_config
from polewatch.agent.uplink.journal import CommandJournal
from polewatch.protocol import AgentSettings, CommandAck


def local(tmp_path: Path) -> AgentConfig:
    return parse_config(
        {
            "device_id": "pole-17",
            "state_dir": str(tmp_path),
            "mqtt": {"host": "broker", "password": "s3cret"},
            "cameras": [{"id": "cam1", "url": "rtsp://a", "reference": "/var/lib/polewatch/ref/cam1.png"}],
            "detect": {"fps": 5, "threads": 2, "labels": ["person", "car"]},
            "outbox": {"max_bytes": "128MiB", "ttl_s": {"telemetry": 3600}},
        }
    )


def test_objects_merge_by_key_and_lists_replace_keeping_local_only_settings(tmp_path: Path) -> None:
    settings = AgentSettings.model_validate(
        {"cameras": [{"id": "cam1", "url": "rtsp://b"}, {"id": "cam2", "url": "rtsp://c"}],
         "detect": {"fps": 2}, "outbox": {"ttl_s": {"alert": 60}}, "log_level": None}
    )
    config = effective_config(local(tmp_path), settings)
    assert [c.url for c in config.cameras] == ["rtsp://b", "rtsp://c"]
    assert config.cameras[0].reference == Path("/var/lib/polewatch/ref/cam1.png")
    assert config.cameras[1].reference is None
    assert (config.detect.fps, config.detect.threads, config.detect.labels) == (2, 2, ["person", "car"])
    assert config.outbox.max_bytes == 128 * 1024 * 1024
    assert (config.outbox.ttl_s.telemetry, config.outbox.ttl_s.alert) == (3600, 60)
    assert config.log_level == "INFO" and config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"


def test_a_document_that_only_fails_against_the_local_file_is_refused_with_the_field(tmp_path: Path) -> None:
    rule = {"type": "zone", "id": "z", "polygon": [[0, 0], [1, 0], [1, 1]], "labels": ["bus"]}
    settings = AgentSettings.model_validate({"cameras": [{"id": "cam1", "url": "rtsp://a", "rules": [rule]}]})
    with pytest.raises(ConfigRefused) as exc:
        effective_config(local(tmp_path), settings)
    assert exc.value.field == "cameras.0.rules.0.labels" and "bus is not in detect.labels" in str(exc.value)


def test_the_store_keeps_the_applied_document_and_survives_damage(tmp_path: Path) -> None:
    store = RemoteConfigStore(tmp_path)
    store.save_applied(7, AgentSettings.model_validate({"detect": {"fps": 1}}))
    store.save_refused(8, "detect.fps: too high")
    again = RemoteConfigStore(tmp_path)
    assert again.applied_version == 7 and again.applied is not None and again.applied.detect is not None
    assert again.applied.detect.model_fields_set == {"fps"}, "saved as sent, without defaults filled in"
    assert again.refused is not None and again.refused.version == 8
    again.save_applied(9, AgentSettings())
    assert RemoteConfigStore(tmp_path).refused is None
    for damage in (b"\x00\x01garbage", b'{"applied": {"version": "x"}}', b"[]"):
        (tmp_path / "remote-config.json").write_bytes(damage)
        damaged = RemoteConfigStore(tmp_path)
        assert damaged.applied is None and damaged.applied_version is None
        assert not (tmp_path / "remote-config.json").exists(), "moved aside"
    assert len(list(tmp_path.glob("remote-config.json.bad-*"))) >= 1


def test_the_journal_answers_a_command_cut_short_by_a_restart_as_failed(tmp_path: Path) -> None:
    journal = CommandJournal(tmp_path)
    journal.running("c-1", "snapshot")
    journal.finished(CommandAck(command_id="c-2", name="restart_camera", status="done", result={"starts": 2}))
    after = CommandJournal(tmp_path)
    cut = after.outcome("c-1")
    assert cut is not None and cut.status == "failed" and "not run again" in (cut.reason or "")
    done = after.outcome("c-2")
    assert done is not None and (done.status, done.result) == ("done", {"starts": 2})
    assert after.outcome("c-3") is None
    small = CommandJournal(tmp_path / "small", keep=3)
    for i in range(5):
        small.finished(CommandAck(command_id=f"k-{i}", status="done"))
    assert len(CommandJournal(tmp_path / "small", keep=3)) == 3 and small.outcome("k-0") is None
    (tmp_path / "commands.json").write_text("not json")
    assert len(CommandJournal(tmp_path)) == 0
