"""Where a principal may look and act: technicians on their assigned sites, everyone else anywhere.

The permission (roles.py) says *what* a role may do; this says *where*. A technician's requests
are narrowed to the sites in their `sites` list: lists leave out everything elsewhere, a path that
names something elsewhere is a 404 as if it did not exist (the same answer as for an id that
really does not exist, so ids on other sites cannot be probed), and a body that points a change at
a site or pole elsewhere is a 403 that says so (the caller named it on purpose).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from .auth import principal
from .models import Pole, RegisteredDevice

SCOPED_ROLES = frozenset({"technician"})


def sites_of(request: Request) -> list[str] | None:
    """The sites this request is limited to; None: not limited."""
    who = principal(request)
    return sorted(who.sites) if who.role in SCOPED_ROLES else None


def devices_on(sites: list[str]) -> Select[Any]:
    """Ids of the registered devices hanging on a pole of one of `sites`."""
    return (
        select(RegisteredDevice.device_id)
        .join(Pole, Pole.pole_id == RegisteredDevice.pole_id)
        .where(Pole.site_id.in_(sites))
    )


def device_filter(request: Request) -> Select[Any] | None:
    """For the read side (queries.py): the device ids this request may see; None: all of them."""
    sites = sites_of(request)
    return devices_on(sites) if sites is not None else None


def site_of_device(session: Session, device_id: str) -> str | None:
    return session.scalar(
        select(Pole.site_id)
        .join(RegisteredDevice, RegisteredDevice.pole_id == Pole.pole_id)
        .where(RegisteredDevice.device_id == device_id)
    )


def site_of_pole(session: Session, pole_id: str) -> str | None:
    return session.scalar(select(Pole.site_id).where(Pole.pole_id == pole_id))


def hidden(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no {what} on your sites")


def refused(what: str, site: str | None) -> HTTPException:
    where = f"site {site!r}, which is not one of your sites" if site else "no site of yours"
    return HTTPException(status_code=403, detail=f"{what} is on {where}: ask an admin to assign you the site")


def check_site(sites: list[str] | None, site_id: str | None, what: str) -> None:
    """404 unless `site_id` is one of `sites` (or the request is not limited)."""
    if sites is not None and site_id not in sites:
        raise hidden(what)


def check_device(session: Session, sites: list[str] | None, device_id: str) -> None:
    if sites is not None and site_of_device(session, device_id) not in sites:
        raise hidden(f"device {device_id!r}")


def check_pole(session: Session, sites: list[str] | None, pole_id: str) -> None:
    if sites is not None and site_of_pole(session, pole_id) not in sites:
        raise hidden(f"pole {pole_id!r}")
