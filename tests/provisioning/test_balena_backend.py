"""Contract tests of the balena backend: the real balena-sdk and `requests`, the cloud answered by
requests-mock with the request shapes the SDK really sends (tests/support/balena_cloud.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests_mock
from typer.testing import CliRunner

from polewatch.cli import app
from polewatch.protocol.enrolment import BrokerGrant, EnrolmentGrant
from polewatch.provisioning.balena_backend import BalenaBackend
from polewatch.provisioning.deadline import DeadlineExceeded, call_with_deadline
from polewatch.provisioning.enrolment_flow import Camera, EnrolmentFlow
from polewatch.provisioning.fleet_backend import FleetBackendError, FleetDevice, NoBackend, box_uuid, fleet_device
from support.balena_cloud import FLEET, FLEET_ID, PROVISIONING_KEY, USER_ID, BalenaCloud, Sent

UUID = "3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b"
TOKEN = "user-api-key"
PASSWORD = "s3cret-mqtt-password"


def grant(password: str = PASSWORD) -> EnrolmentGrant:
    return EnrolmentGrant(
        device_id="bt-017-a1b2",
        pole_id="bt-017",
        site="bontang",
        box_fingerprint=UUID + "0" * 32,
        broker=BrokerGrant(host="mqtt.bontang.example", port=8883, tls=True, username="bt-017-a1b2", password=password),
        server_url="https://fleet.bontang.example",
        enrolled_at=datetime.now(timezone.utc),
    )


def device(password: str = PASSWORD) -> FleetDevice:
    return fleet_device(grant(password), uuid=UUID, district="Bontang Utara")


@pytest.fixture
def cloud() -> Iterator[BalenaCloud]:
    fake = BalenaCloud()
    with requests_mock.Mocker(case_sensitive=True) as mocker:
        fake.install(mocker)
        yield fake
    for event in fake.hang.values():
        event.set()  # let a deliberately hung SDK thread finish


def register(backend: BalenaBackend, dev: FleetDevice | None = None) -> str:
    return asyncio.run(backend.register(dev or device())).detail


def backend(**kwargs: object) -> BalenaBackend:
    return BalenaBackend(FLEET, TOKEN, **kwargs)  # type: ignore[arg-type]


def test_a_new_box_is_registered_with_its_variables_and_tags_in_the_sdks_request_shapes(cloud: BalenaCloud) -> None:
    detail = register(backend(device_type="raspberrypi5"))

    assert detail.startswith(f"device {UUID[:7]} registered in fleet {FLEET}")
    app_filter = f"(slug eq '{FLEET}') or (uuid eq '{FLEET}')"
    expected = [
        Sent("GET", f"/v7/device(uuid='{UUID}')",
             {"$select": "id", "$expand": "belongs_to__application($select=slug)"}, None, TOKEN),
        Sent("GET", "/actor/v1/whoami", {}, None, TOKEN),
        Sent("GET", "/v7/application", {"$filter": app_filter, "$select": "id"}, None, TOKEN),
        Sent("POST", "/api-key/v1/", {},
             {"actorType": "application", "actorTypeId": FLEET_ID, "roles": ["provisioning-api-key"],
              "name": None, "description": None, "expiryDate": None}, TOKEN),
        Sent("GET", "/v7/application",
             {"$filter": app_filter, "$select": "id",
              "$expand": "is_for__device_type($select=slug;$expand=is_of__cpu_architecture($select=slug))"},
             None, TOKEN),
        Sent("GET", "/v7/device_type",
             {"$orderby": "name asc", "$select": "slug", "$expand": "is_of__cpu_architecture($select=slug)",
              "$top": "1", "$filter": "device_type_alias/any(dta:dta/is_referenced_by__alias eq 'raspberrypi5')"},
             None, TOKEN),
        # The registration itself goes out with the fleet's provisioning key, not the user's.
        Sent("POST", "/device/register", {},
             {"user": USER_ID, "application": FLEET_ID, "uuid": UUID, "device_type": "raspberrypi5"},
             PROVISIONING_KEY),
        Sent("GET", "/v7/device_environment_variable", {"$orderby": "name asc", "$filter": "device eq 99"},
             None, TOKEN),
    ]  # fmt: skip
    assert cloud.sent[: len(expected)] == expected
    env = device().env
    env_posts = [s for s in cloud.sent if s.path == "/v7/device_environment_variable" and s.method == "POST"]
    assert [s.body for s in env_posts] == [{"device": 99, "name": n, "value": v} for n, v in env.items()]
    assert cloud.sent[len(expected) + len(env)] == Sent(
        "GET", "/v7/device_tag", {"$orderby": "tag_key asc", "$filter": "device eq 99"}, None, TOKEN
    )
    tag_posts = [s.body for s in cloud.sent if s.path == "/v7/device_tag" and s.method == "POST"]
    assert tag_posts == [
        {"device": 99, "tag_key": "pole", "value": "bt-017"},
        {"device": 99, "tag_key": "site", "value": "bontang"},
        {"device": 99, "tag_key": "district", "value": "Bontang Utara"},
    ]
    assert len(cloud.sent) == len(expected) + len(env) + 1 + 3
    assert cloud.env[99]["POLEWATCH_MQTT_PORT"] == "8883" and cloud.env[99]["POLEWATCH_MQTT_PASSWORD"] == PASSWORD


def test_without_a_device_type_the_fleets_is_used(cloud: BalenaCloud) -> None:
    register(backend())
    (registration,) = [s for s in cloud.sent if s.path == "/device/register"]
    assert registration.body["device_type"] == "raspberrypi5"
    assert not any(s.path == "/v7/device_type" for s in cloud.sent)


def test_a_rerun_finds_the_device_and_writes_nothing(cloud: BalenaCloud) -> None:
    register(backend())
    cloud.sent.clear()

    detail = register(backend())

    assert "already registered" in detail and "updated: nothing (already up to date)" in detail
    assert cloud.writes() == [], "a re-run must not register, set or tag anything again"
    assert [s.path for s in cloud.sent] == [
        f"/v7/device(uuid='{UUID}')", "/v7/device_environment_variable", "/v7/device_tag"
    ]
    assert len(cloud.devices) == 1


def test_a_changed_variable_is_updated_and_the_rest_left_alone(cloud: BalenaCloud) -> None:
    """The server issues a new MQTT password on every re-run: that variable exists, so pine's upsert
    gets 409 on create and PATCHes it; the unchanged ones are not written."""
    device_id = cloud.add_device(UUID, env={**device("old-password").env})

    detail = register(backend(), device("new-password"))

    assert "updated: POLEWATCH_MQTT_PASSWORD, tag pole, tag site, tag district" in detail
    env_writes = [s for s in cloud.writes() if s.path == "/v7/device_environment_variable"]
    assert env_writes == [
        Sent("POST", "/v7/device_environment_variable", {},
             {"device": device_id, "name": "POLEWATCH_MQTT_PASSWORD", "value": "new-password"}, TOKEN),
        Sent("PATCH", "/v7/device_environment_variable",
             {"$filter": f"(device eq {device_id}) and (name eq 'POLEWATCH_MQTT_PASSWORD')"},
             {"value": "new-password"}, TOKEN),
    ]  # fmt: skip
    assert cloud.env[device_id]["POLEWATCH_MQTT_PASSWORD"] == "new-password"
    assert "new-password" not in detail


def test_a_box_in_another_fleet_is_not_registered_again(cloud: BalenaCloud) -> None:
    cloud.add_device(UUID, fleet="samarinda_city/polewatch")
    with pytest.raises(FleetBackendError) as caught:
        register(backend())
    assert "already in balena fleet samarinda_city/polewatch, not bontang_city/polewatch" in caught.value.detail
    assert "balena device move" in caught.value.next_action
    assert cloud.writes() == []


def test_a_fleet_given_by_id_finds_the_device_without_a_slug_to_compare(cloud: BalenaCloud) -> None:
    cloud.add_device(UUID)
    assert "already registered in fleet 42" in register(BalenaBackend(str(FLEET_ID), TOKEN))
    assert not any(s.path == "/device/register" for s in cloud.sent)


def test_a_refused_token_says_to_check_the_key_and_changes_nothing(cloud: BalenaCloud) -> None:
    cloud.fail["device"] = (401, "Unauthorized")
    with pytest.raises(FleetBackendError) as caught:
        register(backend())
    assert caught.value.detail == "balena refused the API key (HTTP 401) while looking up the device"
    assert "BALENA_API_KEY" in caught.value.next_action and "nothing was changed" in caught.value.next_action
    assert cloud.writes() == []


def test_a_token_refused_at_whoami_is_a_key_problem_too(cloud: BalenaCloud) -> None:
    """/actor/v1/whoami goes through the SDK's other request path, which turns a 401 into NotLoggedIn."""
    cloud.fail["whoami"] = (401, "Unauthorized")
    with pytest.raises(FleetBackendError) as caught:
        register(backend())
    assert caught.value.detail == "balena did not accept the API key while registering the device"
    assert cloud.writes() == []


def test_a_server_error_says_it_is_balenas_side_and_to_run_again(cloud: BalenaCloud) -> None:
    cloud.fail["application"] = (503, "Service Unavailable")
    with pytest.raises(FleetBackendError) as caught:
        register(backend())
    assert caught.value.detail == "balena API failed with HTTP 503 while registering the device"
    assert "run `polewatch provision enrol` again; nothing is registered twice" in caught.value.next_action
    assert len(cloud.devices) == 0


def test_a_failed_registration_is_not_taken_for_a_device(cloud: BalenaCloud) -> None:
    """balena-sdk returns /device/register's error body instead of raising; the backend checks it."""
    cloud.fail["register"] = (500, '{"error": "Internal Server Error"}')
    with pytest.raises(FleetBackendError) as caught:
        register(backend())
    assert caught.value.detail.startswith("balena did not register the device:")
    assert not any(s.path == "/v7/device_environment_variable" for s in cloud.sent)


def test_an_unknown_fleet_says_which_option_to_check(cloud: BalenaCloud) -> None:
    with pytest.raises(FleetBackendError) as caught:
        register(BalenaBackend("bontang_city/typo", TOKEN))
    assert caught.value.detail == "balena fleet bontang_city/typo was not found"
    assert "--balena-fleet" in caught.value.next_action
    assert not any(s.path == "/device/register" for s in cloud.sent)


def test_a_hung_api_hits_the_deadline_and_the_command_goes_on(cloud: BalenaCloud) -> None:
    cloud.hang["device"] = threading.Event()
    started = time.monotonic()
    with pytest.raises(FleetBackendError) as caught:
        register(backend(deadline_s=0.3))
    elapsed = time.monotonic() - started
    assert caught.value.detail == "balena API did not answer in 0.3 s (looking up the device)"
    assert "check the box's link" in caught.value.next_action
    assert "nothing is registered twice" in caught.value.next_action
    assert elapsed < 3, f"the deadline did not hold: {elapsed:.1f} s (the SDK's request hangs {cloud.hang_s} s)"
    assert cloud.writes() == []


def test_secrets_never_reach_the_log_or_the_checklist(cloud: BalenaCloud, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="polewatch.provisioning"):
        detail = register(backend())
    assert "POLEWATCH_MQTT_PASSWORD=***" in caplog.text and "POLEWATCH_MQTT_HOST=mqtt.bontang.example" in caplog.text
    for secret in (PASSWORD, TOKEN, PROVISIONING_KEY, "device-api-key-secret"):
        assert secret not in caplog.text and secret not in detail


def test_the_deadline_does_not_wait_for_the_stuck_thread_at_loop_shutdown() -> None:
    """asyncio.to_thread would time out too, but asyncio.run would then join the stuck worker."""
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"did not answer in 0\.2 s"):
        asyncio.run(call_with_deadline(lambda: release.wait(30), 0.2, "stuck call"))
    assert time.monotonic() - started < 2
    release.set()


def test_the_enrolment_flow_shows_the_balena_step_in_the_checklist(cloud: BalenaCloud, tmp_path: Path) -> None:
    flow = EnrolmentFlow(
        server_url="https://fleet.bontang.example", code="K7QF-9XM2-PAH4", state_dir=tmp_path,
        config_path=tmp_path / "a.yaml", cameras=[Camera("cam1", "x")], label_dir=tmp_path,
        fleet=backend(), district="Bontang Utara",
    )  # fmt: skip
    step = flow._fleet_step(grant())
    assert (step.name, step.state) == ("fleet manager", "passed") and "registered in fleet" in step.detail
    assert cloud.tags[99] == {"pole": "bt-017", "site": "bontang", "district": "Bontang Utara"}

    cloud.fail["device"] = (401, "Unauthorized")
    step = flow._fleet_step(grant())
    assert step.state == "failed" and "HTTP 401" in step.detail and "BALENA_API_KEY" in step.next_action

    flow.fleet = NoBackend()
    step = flow._fleet_step(grant())
    assert step.state == "skipped" and "--balena-fleet" in step.detail


def test_the_box_uuid_is_balenaos_own_or_derived_from_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BALENA_DEVICE_UUID", raising=False)
    assert box_uuid("AB" * 32) == "ab" * 16
    monkeypatch.setenv("BALENA_DEVICE_UUID", "c" * 32)
    assert box_uuid("ab" * 32) == "c" * 32
    monkeypatch.setenv("BALENA_DEVICE_UUID", "not-a-uuid")
    assert box_uuid("ab" * 32) == "ab" * 16


runner = CliRunner()
ENROL = ["provision", "enrol", "K7QF-9XM2-PAH4", "--server", "http://127.0.0.1:9", "--camera", "cam1=x.mp4"]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--balena-fleet", FLEET], "--balena-fleet needs an API key", 2),
        (["--balena-fleet", "polewatch"], "expected the fleet's slug", 2),
        (["--balena-fleet", FLEET, "--balena-token-file", "/nonexistent/key"], "cannot read /nonexistent/key", 2),
        (["--balena-token-file", "/tmp/key"], "need --balena-fleet SLUG", 2),
    ],
)
def test_enrol_refuses_bad_balena_options_before_doing_anything(
    args: list[str], message: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BALENA_API_KEY", raising=False)
    result = runner.invoke(app, [*ENROL, "--state-dir", str(tmp_path / "state"), *args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not (tmp_path / "state").exists(), "nothing may be done on the box when the options are wrong"


def test_enrol_without_balena_sdk_says_which_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "balena" else real_find_spec(name, *a)
    )
    monkeypatch.setenv("BALENA_API_KEY", TOKEN)
    result = runner.invoke(app, [*ENROL, "--state-dir", str(tmp_path / "state"), "--balena-fleet", FLEET])
    assert result.exit_code == 3, result.output
    assert "pip install 'polewatch[balena]'" in result.output
    assert not (tmp_path / "state").exists()
