"""Who may do what: the five roles and the permissions each one has.

Routes ask for a permission, never for a role, so a new role or a changed duty is one line here
and the route table stays as it is. The role-matrix test walks every route with every role.

- admin: people and machines' credentials, the audit log; sees everything.
- ops: the fleet (registry, configuration, updates, moving it to another centre) and the ingest's internals.
- technician: provisioning (poles, the boxes on them, enrolment codes), on the sites they are
  assigned to only (scope.py narrows every request of theirs to those sites).
- operator: the command centre's alerts and live feed.
- viewer: reads, changes nothing.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args

Role = Literal["admin", "ops", "technician", "operator", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)


class Permission(str, Enum):
    FLEET_READ = "fleet:read"  # devices, detections, camera health, the live stream
    INGEST_READ = "ingest:read"  # the ingest's counters
    USERS_MANAGE = "users:manage"  # people: create, change role or sites, disable
    TOKENS_MANAGE = "tokens:manage"  # machines' API tokens: create, revoke
    AUDIT_READ = "audit:read"
    CONFIG_WRITE = "config:write"  # configuration documents, groups, rollback, publish
    COMMANDS_SEND = "commands:send"  # restart a camera, take a snapshot, set the log level
    ALERTS_READ = "alerts:read"  # alerts, their steps, the alert stream, agencies, deliveries
    ALERTS_HANDLE = "alerts:handle"  # acknowledge, assign, resolve, false alarm; retry a delivery
    ROUTING_MANAGE = "routing:manage"  # agencies and routing rules
    SELF = "self"  # one's own session: who am I, sign out
    REGISTRY_MANAGE = "registry:manage"  # sites, poles, devices, groups, tags; revoke and replace boxes
    ENROLMENT_MANAGE = "enrolment:manage"  # enrolment codes for poles (technicians: on their own sites)
    POLES_MANAGE = (
        "poles:manage"  # poles and the boxes on them: add, change, register, move, tag (technicians: their sites)
    )
    FLEET_MOVE = "fleet:move"  # re-point every box to another command centre (a signed move)


_EVERYONE = frozenset({Permission.FLEET_READ, Permission.SELF})

GRANTS: dict[Role, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "ops": _EVERYONE
    | {
        Permission.INGEST_READ,
        Permission.CONFIG_WRITE,
        Permission.COMMANDS_SEND,
        Permission.REGISTRY_MANAGE,
        Permission.POLES_MANAGE,
        Permission.ENROLMENT_MANAGE,
        Permission.ALERTS_READ,
        Permission.FLEET_MOVE,
    },
    "technician": _EVERYONE | {Permission.ENROLMENT_MANAGE, Permission.POLES_MANAGE},
    "operator": _EVERYONE | {Permission.ALERTS_READ, Permission.ALERTS_HANDLE, Permission.ROUTING_MANAGE},
    "viewer": _EVERYONE | {Permission.ALERTS_READ},
}


def allows(role: str, permission: Permission) -> bool:
    return permission in GRANTS.get(role, frozenset())  # type: ignore[call-overload]
