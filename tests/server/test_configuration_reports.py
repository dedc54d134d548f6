"""What boxes say about configuration and commands, through a real Mosquitto and the real ingest, on both
databases: reports and acks stored once, malformed ones rejected with their reason without harming their
neighbours, and a late (older) report never overriding a newer one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from polewatch.fleet_server.models import CommandAckRow, ConfigReportRow, DeviceConfig
from polewatch.protocol import CommandAck, ConfigReport, ConfigReportMessage, build
from support.brokers import BrokerProcess
from support.server import count, pole, running_ingest, settings_for, wait_for

pytestmark = pytest.mark.mqtt


async def test_reports_are_stored_once_bad_ones_rejected_and_late_ones_kept_as_history(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    settings = settings_for(mosquitto_broker, database)
    async with running_ingest(settings) as run, pole(mosquitto_broker, "pole-a") as box:
        newer = build(ConfigReport(version=3, status="applied", applied_version=3), device_id="pole-a", seq=10)
        older = build(ConfigReport(version=2, status="refused", reason="detect.fps: too high", field="detect.fps",
                                   applied_version=1), device_id="pole-a", seq=9)  # fmt: skip
        # The older report was made an hour earlier and reaches the server last (an outbox draining).
        an_hour_earlier = newer.sent_at - timedelta(hours=1)
        older = ConfigReportMessage.model_validate({**older.model_dump(), "sent_at": an_hour_earlier})
        await box.send(newer)
        await box.send(newer)  # a QoS 1 redelivery
        await box.raw("config_report", b'{"v":1,"kind":"config_report","body":{"status":"maybe"}}')
        await box.raw("command_ack", b"not json")
        await box.send(older)
        await box.send(build(CommandAck(command_id="c-unknown", status="refused", reason="unknown command"),
                             device_id="pole-a", seq=11))  # fmt: skip

        await wait_for(lambda: count(run.sessions, ConfigReportRow) == 2 and count(run.sessions, CommandAckRow) == 1,
                       what="two reports and one ack stored")  # fmt: skip
        # The counters follow the commit (a batch is counted once stored): wait for them too.
        await wait_for(lambda: run.ingest.stats.snapshot().duplicates >= 1, what="the redelivery counted")
        stats = run.ingest.stats.snapshot()
        assert stats.duplicates == 1
        assert stats.rejected_by_reason.get("invalid_config_report") == 1
        assert stats.rejected_by_reason.get("not_json") == 1
        with run.sessions() as s:
            state = s.get(DeviceConfig, "pole-a")
            assert state is not None
            # The newest report by the box's clock is the state; the late one is history, and its
            # refusal is still the last refusal the box made.
            assert (state.applied_version, state.report_version, state.report_status) == (3, 3, "applied")
            assert (state.refusal_version, state.refusal_field) == (2, "detect.fps")
            versions = s.scalars(sa.select(ConfigReportRow.version).order_by(ConfigReportRow.id)).all()
            assert versions == [3, 2]
            assert state.report_sent_at is not None and state.report_sent_at <= datetime.now(timezone.utc)
