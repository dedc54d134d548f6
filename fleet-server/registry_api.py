"""The registry over HTTP: sites, poles, devices (with health), groups, tags, history, roll-ups.

Reads need fleet:read; poles and the boxes on them poles:manage; sites, groups and the rest
registry:manage. Technicians are narrowed to their sites (scope.py): lists leave the rest out, a
path elsewhere is a 404, a body pointing elsewhere a 403. Each change and its audit entry are one
transaction. Handlers are plain `def`s (worker threads), like the rest of the database routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy.orm import Session

from polewatch.protocol.topics import DEVICE_ID_PATTERN

from . import registry, registry_health, scope
from .api import DENIED, ERRORS, rule
from .audit import Actor
from .auth import client_address, principal
from .models import RegisteredDevice
from .pagination import IdCursor, Limit, int_cursor
from .registry import RegistryError
from .registry_schemas import (
    DeviceIn,
    DevicePatch,
    GroupIn,
    GroupOut,
    GroupPage,
    HistoryOut,
    HistoryPage,
    MoveIn,
    PlacePatch,
    PoleIn,
    PoleOut,
    PolePage,
    PolePatch,
    RegisteredDeviceOut,
    RegisteredDevicePage,
    RollupOut,
    SiteIn,
    SiteOut,
    SitePage,
    TagsIn,
)
from .roles import Permission
from .schemas import ErrorOut
from .services import Services, ServicesDep

NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": ErrorOut, "description": "No such entry."}}
CONFLICT: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorOut, "description": "No such entry."},
    409: {"model": ErrorOut, "description": "The change conflicts with the registry: `detail` says how."},
}
router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})

SlugPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
SlugCursor = Annotated[
    str | None, Query(pattern=DEVICE_ID_PATTERN, description="`next` of the previous page; none for the first.")
]
SlugFilter = Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)]
READ = rule(Permission.FLEET_READ)
MANAGE = rule(Permission.REGISTRY_MANAGE)
POLES = rule(Permission.POLES_MANAGE)


def actor_of(request: Request) -> Actor:
    return principal(request).actor(client_address(request))


@contextmanager
def change(svc: Services) -> Iterator[Session]:
    """One transaction for a change and its audit entry; a RegistryError becomes its HTTP error."""
    try:
        with svc.sessions.begin() as session:
            yield session
    except RegistryError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None


@contextmanager
def reading(svc: Services) -> Iterator[Session]:
    try:
        with svc.sessions() as session:
            yield session
    except RegistryError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None


def device_out(session: Session, devices: list[RegisteredDevice]) -> list[RegisteredDeviceOut]:
    tags = registry.tags_of(session, [d.device_id for d in devices])
    health = registry_health.health_of(session, devices)
    return [RegisteredDeviceOut.of(d, tags[d.device_id], health[d.device_id]) for d in devices]


# --- sites -----------------------------------------------------------------------------------------------


@router.get("/sites", tags=["registry"], summary="Sites, by id, paginated", dependencies=READ)
def list_sites(request: Request, svc: ServicesDep, limit: Limit = 50, cursor: SlugCursor = None) -> SitePage:
    with reading(svc) as session:
        rows, more = registry.list_sites(session, limit=limit, after=cursor, sites=scope.sites_of(request))
        return SitePage(items=[SiteOut.of(r) for r in rows], next=rows[-1].site_id if more and rows else None)


@router.post(
    "/sites", tags=["registry"], summary="Add a site", status_code=201, dependencies=MANAGE, responses=CONFLICT
)
def create_site(body: SiteIn, request: Request, svc: ServicesDep) -> SiteOut:
    with change(svc) as session:
        fields = body.model_dump(exclude={"site_id"}, exclude_none=True)
        return SiteOut.of(registry.create_site(session, actor_of(request), body.site_id, fields))


@router.get("/sites/{site_id}", tags=["registry"], summary="One site", dependencies=READ, responses=NOT_FOUND)
def get_site(site_id: SlugPath, request: Request, svc: ServicesDep) -> SiteOut:
    scope.check_site(scope.sites_of(request), site_id, f"site {site_id!r}")
    with reading(svc) as session:
        return SiteOut.of(registry.get_site(session, site_id))


@router.patch("/sites/{site_id}", tags=["registry"], summary="Change a site", dependencies=MANAGE, responses=NOT_FOUND)
def update_site(site_id: SlugPath, body: PlacePatch, request: Request, svc: ServicesDep) -> SiteOut:
    with change(svc) as session:
        changes = body.model_dump(exclude_unset=True)
        if changes.get("name", "") is None:
            raise HTTPException(status_code=422, detail="a site's name cannot be removed")
        return SiteOut.of(registry.update_site(session, actor_of(request), site_id, changes))


@router.get(
    "/sites/{site_id}/health", tags=["registry"], summary="Health roll-up of one site's devices and cameras",
    dependencies=READ, responses=NOT_FOUND,
)  # fmt: skip
def site_health(site_id: SlugPath, request: Request, svc: ServicesDep) -> RollupOut:
    scope.check_site(scope.sites_of(request), site_id, f"site {site_id!r}")
    with reading(svc) as session:
        registry.get_site(session, site_id)
        return RollupOut.of(registry_health.rollup(session, site_id=site_id))


@router.get(
    "/fleet/health", tags=["registry"],
    summary="Health roll-up of the fleet (technicians: their sites): devices, cameras, blind spots",
    dependencies=READ,
)  # fmt: skip
def fleet_health(request: Request, svc: ServicesDep) -> RollupOut:
    sites = scope.sites_of(request)
    with reading(svc) as session:
        if sites is None:
            return RollupOut.of(registry_health.rollup(session))
        # A technician's "fleet" is their sites: the sum of those sites' roll-ups.
        parts = [RollupOut.of(registry_health.rollup(session, site_id=site)) for site in sites]
    return RollupOut(
        devices={k: sum(p.devices.get(k, 0) for p in parts) for k in ("ok", "degraded", "offline", "never_seen")},
        cameras={k: sum(p.cameras.get(k, 0) for p in parts) for k in ("up", "degraded", "down")},
        blind_spots=[spot for p in parts for spot in p.blind_spots][:500],
        blind_spots_total=sum(p.blind_spots_total for p in parts),
    )


# --- poles -----------------------------------------------------------------------------------------------


@router.get("/poles", tags=["registry"], summary="Poles, by id, paginated", dependencies=READ)
def list_poles(
    request: Request, svc: ServicesDep, site_id: SlugFilter = None, limit: Limit = 50, cursor: SlugCursor = None
) -> PolePage:
    with reading(svc) as session:
        rows, more = registry.list_poles(
            session, site_id=site_id, limit=limit, after=cursor, sites=scope.sites_of(request)
        )
        return PolePage(items=[PoleOut.of(r) for r in rows], next=rows[-1].pole_id if more and rows else None)


@router.post(
    "/poles", tags=["registry"], summary="Add a pole to a site", status_code=201, dependencies=POLES,
    responses=CONFLICT,
)  # fmt: skip
def create_pole(body: PoleIn, request: Request, svc: ServicesDep) -> PoleOut:
    sites = scope.sites_of(request)
    if sites is not None and body.site_id not in sites:
        raise scope.refused(f"pole {body.pole_id!r}", body.site_id)
    with change(svc) as session:
        fields = body.model_dump(exclude={"pole_id", "site_id"}, exclude_none=True)
        return PoleOut.of(registry.create_pole(session, actor_of(request), body.pole_id, body.site_id, fields))


@router.get("/poles/{pole_id}", tags=["registry"], summary="One pole", dependencies=READ, responses=NOT_FOUND)
def get_pole(pole_id: SlugPath, request: Request, svc: ServicesDep) -> PoleOut:
    with reading(svc) as session:
        scope.check_pole(session, scope.sites_of(request), pole_id)
        return PoleOut.of(registry.get_pole(session, pole_id))


@router.patch("/poles/{pole_id}", tags=["registry"], summary="Change a pole", dependencies=POLES, responses=NOT_FOUND)
def update_pole(pole_id: SlugPath, body: PolePatch, request: Request, svc: ServicesDep) -> PoleOut:
    sites = scope.sites_of(request)
    with change(svc) as session:
        scope.check_pole(session, sites, pole_id)
        changes = body.model_dump(exclude_unset=True)
        if sites is not None and "site_id" in changes and changes["site_id"] not in sites:
            raise scope.refused(f"the new place of pole {pole_id!r}", changes["site_id"])
        if any(changes.get(k, "") is None for k in ("name", "site_id")):
            raise HTTPException(status_code=422, detail="a pole's name and site cannot be removed")
        return PoleOut.of(registry.update_pole(session, actor_of(request), pole_id, changes))


@router.get(
    "/poles/{pole_id}/history", tags=["registry"], summary="Boxes installed, moved, removed, replaced on a pole",
    dependencies=READ, responses=NOT_FOUND,
)  # fmt: skip
def pole_history(
    pole_id: SlugPath, request: Request, svc: ServicesDep, limit: Limit = 50, cursor: IdCursor = None
) -> HistoryPage:
    with reading(svc) as session:
        registry.get_pole(session, pole_id)
        scope.check_pole(session, scope.sites_of(request), pole_id)
        rows, more = registry.history(session, pole_id=pole_id, limit=limit, before=int_cursor(cursor))
        return HistoryPage(items=[HistoryOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


# --- devices ---------------------------------------------------------------------------------------------


@router.get(
    "/registry/devices", tags=["registry"], summary="Registered devices with their health, by id, paginated",
    dependencies=READ,
)  # fmt: skip
def list_devices(
    request: Request,
    svc: ServicesDep,
    site_id: SlugFilter = None,
    pole_id: SlugFilter = None,
    group_id: SlugFilter = None,
    tag: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    status: Literal["active", "revoked"] | None = None,
    limit: Limit = 50,
    cursor: SlugCursor = None,
) -> RegisteredDevicePage:
    with reading(svc) as session:
        rows, more = registry.list_devices(
            session, site_id=site_id, pole_id=pole_id, group_id=group_id, tag=tag, status=status, limit=limit,
            after=cursor, sites=scope.sites_of(request),
        )  # fmt: skip
        return RegisteredDevicePage(items=device_out(session, rows), next=rows[-1].device_id if more and rows else None)


@router.post(
    "/registry/devices", tags=["registry"], summary="Register a device (optionally on a pole)", status_code=201,
    dependencies=POLES, responses=CONFLICT,
)  # fmt: skip
def register_device(body: DeviceIn, request: Request, svc: ServicesDep) -> RegisteredDeviceOut:
    actor = actor_of(request)
    sites = scope.sites_of(request)
    with change(svc) as session:
        if sites is not None:
            site = scope.site_of_pole(session, body.pole_id) if body.pole_id else None
            if site not in sites:
                raise scope.refused(f"device {body.device_id!r} (a technician registers a box on a pole)", site)
        fields = body.model_dump(exclude={"device_id", "pole_id", "tags"}, exclude_none=True)
        device = registry.register_device(session, actor, body.device_id, body.pole_id, fields)
        if body.tags:
            registry.set_tags(session, actor, body.device_id, body.tags)
        return device_out(session, [device])[0]


@router.get(
    "/registry/devices/{device_id}", tags=["registry"], summary="One registered device with its health",
    dependencies=READ, responses=NOT_FOUND,
)  # fmt: skip
def get_device(device_id: SlugPath, request: Request, svc: ServicesDep) -> RegisteredDeviceOut:
    with reading(svc) as session:
        registry.get_device(session, device_id)
        scope.check_device(session, scope.sites_of(request), device_id)
        return device_out(session, [registry.get_device(session, device_id)])[0]


@router.patch(
    "/registry/devices/{device_id}", tags=["registry"], summary="Change a device's hardware, versions, cameras",
    dependencies=POLES, responses=NOT_FOUND,
)  # fmt: skip
def update_device(device_id: SlugPath, body: DevicePatch, request: Request, svc: ServicesDep) -> RegisteredDeviceOut:
    with change(svc) as session:
        scope.check_device(session, scope.sites_of(request), device_id)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("cameras", []) is None:
            changes["cameras"] = []
        device = registry.update_device(session, actor_of(request), device_id, changes)
        return device_out(session, [device])[0]


@router.post(
    "/registry/devices/{device_id}/move", tags=["registry"], summary="Move a device to another pole, or take it down",
    dependencies=POLES, responses=CONFLICT,
)  # fmt: skip
def move_device(device_id: SlugPath, body: MoveIn, request: Request, svc: ServicesDep) -> RegisteredDeviceOut:
    sites = scope.sites_of(request)
    with change(svc) as session:
        scope.check_device(session, sites, device_id)
        if sites is not None and body.pole_id is not None:
            target = scope.site_of_pole(session, body.pole_id)
            if target not in sites:
                raise scope.refused(f"pole {body.pole_id!r}", target)
        device = registry.move_device(session, actor_of(request), device_id, body.pole_id)
        return device_out(session, [device])[0]


@router.put(
    "/registry/devices/{device_id}/tags", tags=["registry"], summary="Set a device's tags (replaces them)",
    dependencies=POLES, responses=NOT_FOUND,
)  # fmt: skip
def set_tags(device_id: SlugPath, body: TagsIn, request: Request, svc: ServicesDep) -> RegisteredDeviceOut:
    with change(svc) as session:
        scope.check_device(session, scope.sites_of(request), device_id)
        registry.set_tags(session, actor_of(request), device_id, body.tags)
        return device_out(session, [registry.get_device(session, device_id)])[0]


@router.get(
    "/registry/devices/{device_id}/history", tags=["registry"], summary="A device's installs, moves, replacements",
    dependencies=READ, responses=NOT_FOUND,
)  # fmt: skip
def device_history(
    device_id: SlugPath, request: Request, svc: ServicesDep, limit: Limit = 50, cursor: IdCursor = None
) -> HistoryPage:
    with reading(svc) as session:
        registry.get_device(session, device_id)
        scope.check_device(session, scope.sites_of(request), device_id)
        rows, more = registry.history(session, device_id=device_id, limit=limit, before=int_cursor(cursor))
        return HistoryPage(items=[HistoryOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


# --- groups ----------------------------------------------------------------------------------------------


@router.get("/groups", tags=["registry"], summary="Device groups, by id, paginated", dependencies=READ)
def list_groups(svc: ServicesDep, limit: Limit = 50, cursor: SlugCursor = None) -> GroupPage:
    with reading(svc) as session:
        rows, more = registry.list_groups(session, limit=limit, after=cursor)
        return GroupPage(items=[GroupOut.of(r) for r in rows], next=rows[-1].group_id if more and rows else None)


@router.post(
    "/groups", tags=["registry"], summary="Add a device group", status_code=201, dependencies=MANAGE,
    responses=CONFLICT,
)  # fmt: skip
def create_group(body: GroupIn, request: Request, svc: ServicesDep) -> GroupOut:
    with change(svc) as session:
        group = registry.create_group(session, actor_of(request), body.group_id, body.name, body.description)
        return GroupOut.of(group)


@router.put(
    "/groups/{group_id}/members/{device_id}", tags=["registry"], summary="Put a device in a group (repeat: no-op)",
    dependencies=MANAGE, responses=NOT_FOUND,
)  # fmt: skip
def add_member(group_id: SlugPath, device_id: SlugPath, request: Request, svc: ServicesDep) -> GroupOut:
    with change(svc) as session:
        registry.set_member(session, actor_of(request), group_id, device_id, member=True)
        return GroupOut.of(registry.get_group(session, group_id))


@router.delete(
    "/groups/{group_id}/members/{device_id}", tags=["registry"], summary="Take a device out of a group",
    dependencies=MANAGE, responses=NOT_FOUND,
)  # fmt: skip
def remove_member(group_id: SlugPath, device_id: SlugPath, request: Request, svc: ServicesDep) -> GroupOut:
    with change(svc) as session:
        registry.set_member(session, actor_of(request), group_id, device_id, member=False)
        return GroupOut.of(registry.get_group(session, group_id))
