"""The JSON shapes of sign-in, users, API tokens and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from .models import ApiToken, AuditEntry, User
from .pagination import NO_NUL, Page
from .passwords import MAX_LENGTH, MIN_LENGTH
from .roles import Role


def _not_a_number(value: Any) -> Any:
    """Pydantic would read 1700000000 as a Unix time; the API promises ISO 8601 text only."""
    numeric = isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    if isinstance(value, int | float) or numeric:
        raise ValueError("expected a time in ISO 8601 with a zone, e.g. 2026-11-23T02:14:00Z")
    return value


IsoTime = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]

Username = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
SiteId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
SiteList = Field(default=None, max_length=500, description="Technicians: the site ids they work on.")


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=MAX_LENGTH)


class MeOut(BaseModel):
    kind: str = Field(description="user (signed in) or token (an API token)")
    name: str
    role: Role
    sites: list[str]
    permissions: list[str] = Field(
        default_factory=list, description="What the role may do (roles.py), so the console shows only those actions."
    )


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Username
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)
    role: Role
    display_name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    sites: list[SiteId] | None = SiteList


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    display_name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    sites: list[SiteId] | None = SiteList
    disabled: StrictBool | None = None
    password: str | None = Field(default=None, min_length=MIN_LENGTH, max_length=MAX_LENGTH)


class SitesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sites: list[SiteId] = Field(max_length=500, description="The site ids the person works on; [] for none.")


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str | None
    role: Role
    sites: list[str]
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: User) -> UserOut:
        return cls(
            id=row.id, username=row.username, display_name=row.display_name, role=row.role,
            sites=list(row.sites), disabled=row.disabled, created_at=row.created_at, updated_at=row.updated_at,
        )  # fmt: skip


class UserPage(Page[UserOut]):
    """By id."""


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    role: Role
    sites: list[SiteId] | None = SiteList
    expires_at: IsoTime | None = Field(default=None, description="ISO 8601 with a zone; none: until revoked.")


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    sites: list[str]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenOut:
        return cls(
            id=row.id, name=row.name, role=row.role, sites=list(row.sites),
            created_by=row.created_by, created_at=row.created_at, expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )  # fmt: skip


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret, shown this once: send it as 'Authorization: Bearer <token>'.")


class TokenPage(Page[TokenOut]):
    """By id."""


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="user:<name>, token:<name> or cli:<os user>")
    actor_role: str | None
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    client: str | None

    @classmethod
    def of(cls, row: AuditEntry) -> AuditOut:
        return cls(
            id=row.id, at=row.at, actor=row.actor, actor_role=row.actor_role, action=row.action,
            target_type=row.target_type, target_id=row.target_id, before=row.before, after=row.after,
            client=row.client,
        )  # fmt: skip


class AuditPage(Page[AuditOut]):
    """Newest first."""
