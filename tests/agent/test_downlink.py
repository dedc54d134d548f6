"""The real agent against a real Mosquitto: config documents and commands from the server's side.

The "server" is a plain aiomqtt client (support/fleet.py) that publishes with the wire contract and
reads the box's up branch; the agent runs in this process with the real detector on the sample clip
(two cameras), so the tests can also look at what it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import pytest

from polewatch.agent.config import AgentConfig, parse_config
from polewatch.agent.runtime import Agent
from polewatch.protocol import (
    AgentSettings,
    Command,
    CommandAckMessage,
    ConfigReportMessage,
    DesiredConfig,
    HealthMessage,
    build,
    encode,
)
from support import brokers
from support.agent_run import running
from support.brokers import USERS, BrokerProcess
from support.fleet import Fleet, eventually, fleet
from support.footage import SAMPLE_CLIP

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

CAMERAS = [{"id": "cam1", "url": str(SAMPLE_CLIP), "loop": True}, {"id": "cam2", "url": str(SAMPLE_CLIP), "loop": True}]
ZONE = {"type": "zone", "id": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "labels": ["person"]}


def local_config(broker: BrokerProcess, state: Path) -> AgentConfig:
    return parse_config(
        {
            "device_id": "pole-a",
            "state_dir": str(state),
            "mqtt": {"host": broker.host, "port": broker.port, "username": "pole-a", "password": USERS["pole-a"],
                     "keepalive_s": 5, "reconnect_max_s": 1},
            "cameras": CAMERAS,
            "detect": {"fps": 2},
            "health_interval_s": 1,
        }
    )


def document(version: int, **settings: Any) -> DesiredConfig:
    return DesiredConfig(version=version, config=AgentSettings.model_validate(settings))


def command(command_id: str, name: str, **args: Any) -> Command:
    return Command(command_id=command_id, name=name, args=args)


async def ack_of(f: Fleet, command_id: str, *, repeated: bool = False) -> CommandAckMessage:
    return await f.wait_for(
        CommandAckMessage, lambda m: m.body.command_id == command_id and m.body.repeated == repeated
    )


async def report_of(f: Fleet, version: int) -> ConfigReportMessage:
    return await f.wait_for(ConfigReportMessage, lambda m: m.body.version == version)


async def test_a_document_restarts_only_the_camera_it_changes_and_is_reported(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    async with fleet(mosquitto_broker) as f, running(local_config(mosquitto_broker, tmp_path / "state")) as agent:
        cam2 = {**CAMERAS[1], "rules": [ZONE]}
        await f.send(document(1, cameras=[CAMERAS[0], cam2], detect={"fps": 3}), retain=True)
        report = await report_of(f, 1)
        assert report.body.status == "applied" and report.body.applied_version == 1, report.body
        assert sorted(report.body.changed) == ["camera cam2 restarted", "detect.fps"]
        assert agent.camera_starts == {"cam1": 1, "cam2": 2}, "cam1 did not change and was not touched"
        assert agent.config.detect.fps == 3 and agent.config.detect.labels == agent.local_config.detect.labels
        assert [r.id for r in agent.cameras["cam2"].config.rules] == ["left"]
        health = await f.wait_for(HealthMessage, lambda m: m.body.config_version == 1)
        assert health.body.clock is not None and health.body.clock.steps == 0
        # A camera added and one removed, with the outbox limits: each applied where it lives.
        cam3 = {"id": "cam3", "url": str(SAMPLE_CLIP), "loop": True}
        await f.send(document(2, cameras=[CAMERAS[0], cam3], outbox={"max_bytes": "64MiB", "replay_rate": 50}))
        report = await report_of(f, 2)
        assert sorted(report.body.changed) == ["camera cam2 removed", "camera cam3 added", "detect.fps", "outbox"]
        assert set(agent.cameras) == {"cam1", "cam3"} and agent.camera_starts["cam1"] == 1
        assert agent.outbox.limits.max_bytes == 64 * 1024 * 1024 and agent.uplink.replay_rate == 50
        assert agent.config.detect.fps == 2, "a key the newer document leaves out is the local file's again"


@pytest.mark.parametrize(
    ("settings", "field", "problem"),
    [
        ({"cameras": [{**CAMERAS[0], "rules": [{**ZONE, "labels": ["dog"]}]}]}, "cameras.0.rules.0.labels",
         "dog is not in detect.labels"),
        ({"detect": {"fps": -1}}, "detect.fps", "greater than 0"),
        ({"mqtt": {"host": "evil.example"}}, "mqtt", "Extra inputs are not permitted"),
        ({"detect": {"model": "/tmp/other.onnx"}}, "detect.model", "Extra inputs are not permitted"),
    ],
    ids=["label-not-detected", "out-of-range", "broker-is-local", "local-path"],
)
async def test_a_bad_document_is_refused_with_the_field_and_the_old_config_runs_on(
    mosquitto_broker: BrokerProcess, tmp_path: Path, settings: dict[str, Any], field: str, problem: str
) -> None:
    async with fleet(mosquitto_broker) as f, running(local_config(mosquitto_broker, tmp_path / "state")) as agent:
        before = agent.config
        # Published raw: the server's own validation would stop most of these before they leave.
        payload = encode(build(document(1), device_id="pole-a", seq=1))
        raw = json.loads(payload)
        raw["body"]["config"] = settings
        await f.publish_raw("config", json.dumps(raw).encode())
        report = await report_of(f, 1)
        assert report.body.status == "refused" and report.body.field == field, report.body
        assert problem in (report.body.reason or "")
        assert report.body.applied_version is None
        assert agent.config == before and agent.camera_starts == {"cam1": 1, "cam2": 1}
        # Refused once is reported once: the same version again changes nothing and says nothing.
        await f.publish_raw("config", json.dumps(raw).encode())
        await f.send(command("after-refusal", "set_log_level", level="INFO"))
        await ack_of(f, "after-refusal")
        assert len(f.of(ConfigReportMessage)) == 1


async def test_the_applied_document_survives_a_restart_and_is_not_applied_twice(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    config = local_config(mosquitto_broker, state)
    async with fleet(mosquitto_broker) as f:
        async with running(config):
            await f.send(document(4, detect={"fps": 3}, health_interval_s=2), retain=True)
            assert (await report_of(f, 4)).body.status == "applied"
        # A new agent process on the same state folder, before it reaches the broker:
        restarted = Agent(config)
        assert restarted.config.detect.fps == 3 and restarted.config.health_interval_s == 2
        restarted.outbox.close()
        async with running(config) as agent:
            assert agent.config.detect.fps == 3
            # The retained document comes again on connect, before this command: by its ack, a
            # second report would have been sent.
            await f.send(command("probe-1", "set_log_level", level="INFO"))
            await ack_of(f, "probe-1")
            assert [m.body.version for m in f.of(ConfigReportMessage)] == [4]
            assert agent.camera_starts == {"cam1": 1, "cam2": 1}
            await f.send(document(3, detect={"fps": 1}))
            older = await report_of(f, 3)
            assert older.body.status == "refused" and older.body.field == "version"
            assert older.body.applied_version == 4 and agent.config.detect.fps == 3
            await f.send(document(5), retain=True)  # empty: back to the local file
            assert (await report_of(f, 5)).body.changed == ["detect.fps", "health_interval_s"]
            assert agent.config.detect.fps == 2


async def test_commands_run_once_and_are_answered_again_with_the_first_result(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    config = local_config(mosquitto_broker, tmp_path / "state")
    root = logging.getLogger()
    level = root.level
    try:
        async with fleet(mosquitto_broker) as f:
            async with running(config) as agent:
                restart = command("c-restart-1", "restart_camera", camera_id="cam1")
                await f.send(restart)
                done = await ack_of(f, "c-restart-1")
                assert done.body.status == "done" and done.body.result == {"camera_id": "cam1", "starts": 2}
                assert agent.camera_starts == {"cam1": 2, "cam2": 1}
                await f.send(restart)  # delivered again (a retry): a new message id, the same command id
                again = await ack_of(f, "c-restart-1", repeated=True)
                assert (again.body.status, again.body.result) == ("done", done.body.result)
                assert agent.camera_starts["cam1"] == 2, "not run twice"

                await f.send(command("c-snap-1", "snapshot", camera_id="cam2", max_width=320))
                snap = await ack_of(f, "c-snap-1")
                assert snap.body.status == "done" and snap.body.result is not None
                picture = Path(snap.body.result["path"])
                data = await asyncio.to_thread(picture.read_bytes)
                assert len(data) == snap.body.result["bytes"] > 1000
                assert hashlib.sha256(data).hexdigest() == snap.body.result["sha256"]
                image = cv2.imread(str(picture))
                assert image is not None and image.shape[:2] == (240, 320)  # the clip is 768x576
                assert picture.parent == config.state_dir / "snapshots"

                await f.send(command("c-log-1", "set_log_level", level="DEBUG"))
                log_ack = await ack_of(f, "c-log-1")
                assert log_ack.body.result == {"level": "DEBUG", "previous": logging.getLevelName(level)}
                assert root.level == logging.DEBUG
            # After a restart the journal still knows the command: answered, not run.
            async with running(config) as agent:
                await f.send(restart)
                await eventually(lambda: len([m for m in f.of(CommandAckMessage)
                                              if m.body.command_id == "c-restart-1"]) == 3, 30, "third ack")
                assert agent.camera_starts == {"cam1": 1, "cam2": 1}
    finally:
        root.setLevel(level)


async def test_bad_commands_and_garbage_are_refused_and_the_agent_goes_on(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    async with fleet(mosquitto_broker) as f, running(local_config(mosquitto_broker, tmp_path / "state")) as agent:
        past = datetime.now(timezone.utc) - timedelta(minutes=1)
        await f.send(Command(command_id="x-expired", name="restart_camera", args={"camera_id": "cam1"},
                             expires_at=past))
        await f.send(command("x-unknown", "reboot"))
        await f.send(command("x-args", "restart_camera"))
        await f.send(command("x-camera", "restart_camera", camera_id="cam9"))
        await f.send(command("x-level", "set_log_level", level="LOUD"))
        for garbage in (b"\xff\xfe not json", b"[1, 2]", b'{"kind": "command"}', b"null", b"{" * 5000):
            await f.publish_raw("command", garbage)
        await f.publish_raw("reboot_now", b'{"kind": "reboot_now"}')
        wrong_device = json.loads(encode(build(command("x-device", "restart_camera", camera_id="cam1"),
                                               device_id="pole-b", seq=1)))
        await f.publish_raw("command", json.dumps(wrong_device).encode())
        on_config_topic = encode(build(command("x-topic", "restart_camera", camera_id="cam1"), device_id="pole-a",
                                       seq=2))
        await f.publish_raw("config", on_config_topic)
        # Credential rotation is the agent's own (runtime wires it to the MQTT session): a password box
        # refuses a certificate, and a sealed login it has no key to open, staying on its login.
        await f.send(command("x-rotate-cert", "rotate_credentials", kind="certificate", certificate_pem="PEM"))
        sealed = {"ephemeral_key": "AAAA", "nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "AAAA"}
        await f.send(command("x-rotate-key", "rotate_credentials", kind="password", sealed_login=sealed))
        await f.send(command("x-fine", "restart_camera", camera_id="cam2"))

        expected = {
            "x-expired": "expired at",
            "x-unknown": "unknown command 'reboot'; this agent knows restart_camera, snapshot, set_log_level",
            "x-args": "args.camera_id: Field required",
            "x-camera": "unknown camera 'cam9'; this box has cam1, cam2",
            "x-level": "args.level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
            "x-device": "device_mismatch",
            "x-topic": "kind_mismatch",
            "x-rotate-cert": "this box logs in with a password; a certificate rotation does not apply",
            "x-rotate-key": "cannot be read",
        }
        for command_id, reason in expected.items():
            ack = await ack_of(f, command_id)
            assert ack.body.status == "refused" and reason in (ack.body.reason or ""), ack.body
        assert (await ack_of(f, "x-fine")).body.status == "done"
        assert agent.camera_starts == {"cam1": 1, "cam2": 2}, "only the valid command ran"
        assert agent.uplink.config.username == "pole-a" and agent.uplink.connected
        rejected = agent.downlink.rejected
        assert rejected["not_json"] == 2 and rejected["not_object"] == 2 and rejected["invalid_command"] == 1
        assert rejected["unknown_kind"] == 1  # the reboot_now topic
        assert rejected["device_mismatch"] == 1 and rejected["kind_mismatch"] == 1
        assert "internal_error" not in rejected


async def test_a_broker_restarted_without_its_sessions_still_reaches_the_agent(tmp_path: Path) -> None:
    broker = brokers.mosquitto(tmp_path / "mosquitto", persistence=False)
    try:
        async with running(local_config(broker, tmp_path / "state")) as agent:
            broker.restart()  # every session and subscription is forgotten
            await eventually(lambda: agent.uplink.subscriptions >= 2, 30, "the agent to subscribe again")
            async with fleet(broker) as f:
                await f.send(command("after-restart", "restart_camera", camera_id="cam1"))
                ack = await ack_of(f, "after-restart")
            assert ack.body.status == "done" and agent.camera_starts["cam1"] == 2
            assert agent.uplink.reconnects >= 1
    finally:
        broker.stop()
