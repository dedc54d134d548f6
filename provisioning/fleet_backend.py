"""Where a box is registered besides our own fleet server: nowhere, or a fleet manager such as balena.

Cities that run their boxes on balenaOS get their software through balena releases, so the box
must also exist in their balena fleet, with the settings its containers read and the tags ops
filter by. Enrolment talks to such a manager only through `FleetBackend`, so the flow stays the
same for plain Linux boxes (`NoBackend`) and for balena (`balena_backend.BalenaBackend`, installed
with the optional `balena` extra), and a later manager is one more class.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from polewatch.protocol.enrolment import EnrolmentGrant

# balena accepts 32 or 62 lowercase hex characters as a device UUID.
_UUID_RE = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{62})$")


@dataclass(frozen=True)
class FleetDevice:
    """What enrolment knows about the box when it registers it with a fleet manager."""

    uuid: str
    device_id: str
    env: Mapping[str, str]
    tags: Mapping[str, str]
    secret_env: frozenset[str] = field(default_factory=frozenset)

    def shown(self, name: str) -> str:
        """An environment variable as it may appear in a log or on the checklist."""
        return f"{name}=***" if name in self.secret_env else f"{name}={self.env[name]}"


@dataclass(frozen=True)
class FleetResult:
    """What the backend did, in words for the checklist (never a secret)."""

    state: Literal["passed", "skipped"]
    detail: str


class FleetBackendError(RuntimeError):
    """The fleet manager could not be brought in line; `next_action` tells the technician what to do."""

    def __init__(self, detail: str, next_action: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.next_action = next_action


class FleetBackend(Protocol):
    name: str

    async def register(self, device: FleetDevice) -> FleetResult:
        """Make the manager's record of the box match `device`; running it again changes nothing."""
        ...


class NoBackend:
    """A box that is not managed by any fleet manager: our own server is all there is."""

    name = "none"

    async def register(self, device: FleetDevice) -> FleetResult:
        return FleetResult("skipped", "no fleet manager for this box (balena: --balena-fleet SLUG)")


def box_uuid(box_fingerprint: str) -> str:
    """The box's UUID in a fleet manager: the one balenaOS gave it, else derived from its own key.

    Derived from the key's fingerprint, it is the same on every re-run (so the device is found, not
    registered twice) and says nothing the server does not already know.
    """
    given = os.environ.get("BALENA_DEVICE_UUID", "").strip().lower()
    if _UUID_RE.match(given):
        return given
    return box_fingerprint.lower()[:32]


def fleet_device(grant: EnrolmentGrant, *, uuid: str, district: str | None = None) -> FleetDevice:
    """The environment and tags a box's containers and ops need, from the server's grant.

    The MQTT password is in the environment because a balena container starts from it; it is
    marked secret so it is never printed. Each re-run gets a new password from the server, so that
    one variable is updated on every run.
    """
    broker = grant.broker
    env = {
        "POLEWATCH_SERVER_URL": grant.server_url,
        "POLEWATCH_DEVICE_ID": grant.device_id,
        "POLEWATCH_MQTT_HOST": broker.host,
        "POLEWATCH_MQTT_PORT": str(broker.port),
        "POLEWATCH_MQTT_TLS": "1" if broker.tls else "0",
        "POLEWATCH_MQTT_USERNAME": broker.username,
        "POLEWATCH_MQTT_PASSWORD": broker.password,
    }
    tags = {"pole": grant.pole_id}
    if grant.site:
        tags["site"] = grant.site
    if district:
        tags["district"] = district
    return FleetDevice(
        uuid=uuid, device_id=grant.device_id, env=env, tags=tags, secret_env=frozenset({"POLEWATCH_MQTT_PASSWORD"})
    )
