"""Timestamps on both engines: written as UTC, read back timezone-aware, compared alike whether
bound or rendered inline. SQLite has no time zone type, and UtcDateTime formats its text itself
(models.py), so these are the rules that formatting must keep."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError

from polewatch.fleet_server.db import make_engine, make_sessionmaker, upgrade
from polewatch.fleet_server.models import Device

WITA = timezone(timedelta(hours=8))  # Balikpapan and Bontang


def test_timestamps_are_stored_in_utc_and_read_back_aware(database: str) -> None:
    engine = make_engine(database)
    try:
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        at = datetime(2026, 11, 24, 9, 30, 15, 123456, tzinfo=WITA)
        with sessions.begin() as s:
            s.add(Device(device_id="box-1", first_seen=at, last_seen=at, online=False))
        with sessions() as s:
            device = s.get(Device, "box-1")
            assert device is not None
            assert device.last_seen == at and device.last_seen.tzinfo == timezone.utc
            assert (device.last_seen.hour, device.last_seen.microsecond) == (1, 123456)
            # To the microsecond, whether the value is bound or written into the SQL text.
            after = select(Device.device_id).where(Device.last_seen > at - timedelta(microseconds=1))
            assert s.scalars(after).all() == ["box-1"]
            assert s.scalars(select(Device.device_id).where(Device.last_seen > at)).all() == []
            inline = str(after.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            assert s.scalars(text(inline)).all() == ["box-1"]
        with pytest.raises(StatementError, match="naive datetime"), sessions.begin() as s:
            s.add(Device(device_id="box-2", first_seen=at.replace(tzinfo=None), last_seen=at, online=False))
        with sessions() as s:
            assert s.get(Device, "box-2") is None
    finally:
        engine.dispose()
