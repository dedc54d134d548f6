"""The JSON shapes of the registry: sites, poles, registered devices with their health, groups,
history and roll-ups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from polewatch.protocol.topics import DEVICE_ID_PATTERN

from .models import DeviceGroup, Pole, PoleHistoryEntry, RegisteredDevice, Site
from .pagination import NO_NUL, Page
from .registry_health import DeviceHealth, Rollup

Slug = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, description="Letters, digits, _ . - (up to 64).")]
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
LongText = Annotated[str, Field(max_length=300, pattern=NO_NUL)]
Area = Annotated[str, Field(max_length=100, pattern=NO_NUL)]
Latitude = Annotated[float, Field(ge=-90, le=90, strict=True)]  # strict: `false` is not 0.0
Longitude = Annotated[float, Field(ge=-180, le=180, strict=True)]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Version = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
CameraId = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlacePatch(_In):
    name: Text | None = None
    address: LongText | None = None
    district: Area | None = Field(default=None, description="Kecamatan.")
    kelurahan: Area | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None


class SiteIn(PlacePatch):
    site_id: Slug
    name: Text


class PoleIn(PlacePatch):
    pole_id: Slug
    site_id: Slug
    name: Text


class PolePatch(PlacePatch):
    site_id: Slug | None = None


class _Place(BaseModel):
    name: str
    address: str | None
    district: str | None
    kelurahan: str | None
    latitude: float | None
    longitude: float | None
    created_at: datetime


class SiteOut(_Place):
    site_id: str

    @classmethod
    def of(cls, row: Site) -> SiteOut:
        return cls.model_validate(row, from_attributes=True)


class PoleOut(_Place):
    pole_id: str
    site_id: str

    @classmethod
    def of(cls, row: Pole) -> PoleOut:
        return cls.model_validate(row, from_attributes=True)


class SitePage(Page[SiteOut]):
    pass


class PolePage(Page[PoleOut]):
    pass


class DevicePatch(_In):
    hardware: Annotated[str, Field(max_length=255, pattern=NO_NUL)] | None = None
    agent_version: Version | None = None
    model_version: Version | None = None
    cameras: list[CameraId] | None = Field(default=None, max_length=16)


class DeviceIn(DevicePatch):
    device_id: Slug
    pole_id: Slug | None = Field(default=None, description="The pole it is installed on; none: in the store room.")
    tags: list[Tag] = Field(default_factory=list, max_length=32)


class MoveIn(_In):
    pole_id: Slug | None = Field(description="The pole it goes to; null: taken down.")


class TagsIn(_In):
    tags: list[Tag] = Field(max_length=32)


class HealthOut(BaseModel):
    state: Literal["ok", "degraded", "offline", "never_seen"]
    online: bool
    last_seen: datetime | None
    cameras: dict[str, Literal["up", "degraded", "down"]]

    @classmethod
    def of(cls, health: DeviceHealth) -> HealthOut:
        return cls(state=health.state, online=health.online, last_seen=health.last_seen, cameras=health.cameras)


class RegisteredDeviceOut(BaseModel):
    device_id: str
    pole_id: str | None
    status: Literal["active", "revoked"]
    hardware: str | None
    agent_version: str | None
    model_version: str | None
    cameras: list[str]
    tags: list[str]
    registered_at: datetime
    revoked_at: datetime | None
    health: HealthOut

    @classmethod
    def of(cls, row: RegisteredDevice, tags: list[str], health: DeviceHealth) -> RegisteredDeviceOut:
        return cls(
            device_id=row.device_id, pole_id=row.pole_id, status=row.status, hardware=row.hardware,
            agent_version=row.agent_version, model_version=row.model_version, cameras=list(row.cameras), tags=tags,
            registered_at=row.registered_at, revoked_at=row.revoked_at, health=HealthOut.of(health),
        )  # fmt: skip


class RegisteredDevicePage(Page[RegisteredDeviceOut]):
    pass


class HistoryOut(BaseModel):
    id: int
    at: datetime
    device_id: str
    pole_id: str | None
    action: Literal["installed", "moved", "removed", "replaced", "revoked"]
    from_pole_id: str | None
    other_device_id: str | None = Field(description="installed: the box this one took over from.")
    actor: str

    @classmethod
    def of(cls, row: PoleHistoryEntry) -> HistoryOut:
        return cls.model_validate(row, from_attributes=True)


class HistoryPage(Page[HistoryOut]):
    pass


class GroupIn(_In):
    group_id: Slug
    name: Text
    description: Annotated[str, Field(max_length=500, pattern=NO_NUL)] | None = None


class GroupOut(BaseModel):
    group_id: str
    name: str
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: DeviceGroup) -> GroupOut:
        return cls.model_validate(row, from_attributes=True)


class GroupPage(Page[GroupOut]):
    pass


class BlindSpot(BaseModel):
    device_id: str
    camera_id: str


class RollupOut(BaseModel):
    devices: dict[str, int] = Field(description="Active devices by state: ok, degraded, offline, never_seen.")
    cameras: dict[str, int] = Field(description="Cameras by state: up, degraded, down.")
    blind_spots: list[BlindSpot] = Field(description="Cameras not up (first 500, by device).")
    blind_spots_total: int

    @classmethod
    def of(cls, rollup: Rollup) -> RollupOut:
        devices = {s: rollup.devices.get(s, 0) for s in ("ok", "degraded", "offline", "never_seen")}
        cameras = {s: rollup.cameras.get(s, 0) for s in ("up", "degraded", "down")}
        spots = [BlindSpot(device_id=d, camera_id=c) for d, c in rollup.blind_spots[:500]]
        return cls(devices=devices, cameras=cameras, blind_spots=spots, blind_spots_total=len(rollup.blind_spots))
