"""Registering the box in a balena fleet through balena-sdk (the optional `balena` extra).

The SDK is synchronous and sends its requests without a timeout, so every call runs on its own
thread under a hard deadline (`deadline.call_with_deadline`): a hung API costs the technician
`deadline_s` seconds and a clear next step, never a frozen command. Every step reads before it
writes, so a re-run (the usual answer to any failure at the pole) finds the device instead of
registering a second one, and writes only the variables and tags whose values differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from .deadline import DeadlineExceeded, call_with_deadline
from .fleet_backend import FleetBackendError, FleetDevice, FleetResult

T = TypeVar("T")
log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'polewatch[balena]'"
RERUN = "run `polewatch provision enrol` again; nothing is registered twice"


class BalenaBackend:
    """One balena fleet (by slug, e.g. `bontang_city/polewatch`) reached with one API key."""

    name = "balena"

    def __init__(
        self,
        fleet: str,
        token: str,
        *,
        device_type: str | None = None,
        host: str = "balena-cloud.com",
        deadline_s: float = 20.0,
    ) -> None:
        if not token.strip():
            raise ValueError("the balena API key is empty")
        self.fleet = fleet
        self.device_type = device_type
        self.host = host
        self.deadline_s = deadline_s
        self._token = token.strip()

    async def register(self, device: FleetDevice) -> FleetResult:
        sdk = await self._call(self._connect, "loading balena-sdk")
        models = sdk.models

        found = await self._call(lambda: self._lookup(sdk, device.uuid), "looking up the device")
        if found is None:
            made = await self._call(
                lambda: models.device.register(self.fleet, device.uuid, self.device_type), "registering the device"
            )
            # The SDK returns the API's error body instead of raising when /device/register fails.
            if not isinstance(made, dict) or not isinstance(made.get("id"), int):
                raise FleetBackendError(
                    f"balena did not register the device: {str(made)[:200]}",
                    f"check the fleet and the key, then {RERUN}",
                )
            balena_id, what = made["id"], "registered"
            log.info("balena: registered %s in %s", device.uuid, self.fleet)
        else:
            balena_id, in_fleet = found
            # Compared by slug; a fleet given by its numeric id cannot be compared this way.
            if in_fleet is not None and "/" in self.fleet and in_fleet.lower() != self.fleet.lower():
                raise FleetBackendError(
                    f"this box (uuid {device.uuid[:7]}) is already in balena fleet {in_fleet}, not {self.fleet}",
                    "move it in the balena dashboard (or `balena device move`), or pass that fleet; then run again",
                )
            what = "already registered"

        have_env = await self._call(
            lambda: {v["name"]: v["value"] for v in models.device.env_var.get_all_by_device(balena_id)},
            "reading the device's variables",
        )
        env_set = []
        for name, value in device.env.items():
            if have_env.get(name) == value:
                continue
            await self._call(partial(models.device.env_var.set, balena_id, name, value), f"setting {name}")
            log.info("balena: set %s on %s", device.shown(name), device.uuid)
            env_set.append(name)

        have_tags = await self._call(
            lambda: {t["tag_key"]: t["value"] for t in models.device.tags.get_all({"$filter": {"device": balena_id}})},
            "reading the device's tags",
        )
        tags_set = []
        for key, value in device.tags.items():
            if have_tags.get(key) == value:
                continue
            await self._call(partial(models.device.tags.set, balena_id, key, value), f"setting tag {key}")
            log.info("balena: tagged %s %s=%s", device.uuid, key, value)
            tags_set.append(key)

        changed = ", ".join(env_set + [f"tag {k}" for k in tags_set]) or "nothing (already up to date)"
        return FleetResult("passed", f"device {device.uuid[:7]} {what} in fleet {self.fleet}; updated: {changed}")

    def _connect(self) -> Any:
        try:
            from balena import Balena
        except ModuleNotFoundError:
            raise FleetBackendError("balena-sdk is not installed", INSTALL_HINT) from None
        # data_directory False: settings and the key stay in memory, nothing is written to ~/.balena.
        sdk = Balena({"data_directory": False, "balena_host": self.host})
        sdk.auth.login_with_token(self._token)  # stores the key; the first request checks it
        return sdk

    def _lookup(self, sdk: Any, uuid: str) -> tuple[int, str | None] | None:
        """The device's balena id and its fleet's slug, or None when balena does not know it."""
        from balena import exceptions

        try:
            device = sdk.models.device.get(
                uuid, {"$select": ["id"], "$expand": {"belongs_to__application": {"$select": "slug"}}}
            )
        except exceptions.DeviceNotFound:
            return None
        fleets = device.get("belongs_to__application") or [{}]
        return int(device["id"]), fleets[0].get("slug")

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        """One SDK call off the event loop under the deadline; every failure becomes a step failure."""
        try:
            return await call_with_deadline(fn, self.deadline_s, f"balena API ({what})")
        except FleetBackendError:
            raise
        except DeadlineExceeded:
            raise FleetBackendError(
                f"balena API did not answer in {self.deadline_s:g} s ({what})",
                f"check the box's link or {RERUN}",
            ) from None
        except Exception as exc:
            raise self._explain(exc, what) from None

    def _explain(self, exc: Exception, what: str) -> FleetBackendError:
        from balena import exceptions

        key_hint = (
            "check the API key (--balena-token-file or BALENA_API_KEY; balena dashboard: Preferences, "
            "Access tokens) and that its user may manage the fleet; nothing was changed"
        )
        if isinstance(exc, exceptions.RequestError):
            status = exc.status_code
            if status in (401, 403):
                return FleetBackendError(f"balena refused the API key (HTTP {status}) while {what}", key_hint)
            if status is not None and status >= 500:
                return FleetBackendError(
                    f"balena API failed with HTTP {status} while {what}",
                    f"balena's side: wait a few minutes, then {RERUN}",
                )
            return FleetBackendError(f"balena API refused {what}: HTTP {status} {str(exc.body)[:200]}", RERUN)
        if isinstance(exc, exceptions.NotLoggedIn | exceptions.Unauthorized):
            return FleetBackendError(f"balena did not accept the API key while {what}", key_hint)
        if isinstance(exc, exceptions.ApplicationNotFound):
            return FleetBackendError(
                f"balena fleet {self.fleet} was not found",
                "check --balena-fleet (the fleet's slug, e.g. bontang_city/polewatch) and that the key's user is "
                "a member of it",
            )
        if isinstance(exc, exceptions.InvalidDeviceType):
            return FleetBackendError(
                f"balena does not accept device type {self.device_type} for fleet {self.fleet}",
                "check --balena-device-type (e.g. raspberrypi5, jetson-orin-nano-devkit-nvme), or leave it out "
                "to use the fleet's",
            )
        if isinstance(exc, OSError):  # requests' connection errors are OSErrors
            return FleetBackendError(
                f"could not reach the balena API while {what}: {exc}", f"check the box's link, then {RERUN}"
            )
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return FleetBackendError(f"balena API error while {what}: {message}", RERUN)
