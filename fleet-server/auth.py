"""Who is asking, and may they: authentication (session cookie or API token) and the per-route rule.

Every route carries exactly one rule, `Requires(permission)` or `Requires(PUBLIC)`, as a
dependency; `create_app` refuses to start with a route that has none, and the role-matrix test
walks them all. A request is authenticated by, in this order:

- `Authorization: Bearer pwt_...`: an API token (machines, scripts);
- the `polewatch_session` cookie: a console sign-in (HttpOnly, SameSite=Strict, so another site's
  page can neither read it nor make the browser send it along with a forged request).

No credentials is 401 (with `WWW-Authenticate`), credentials without the permission is 403.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.orm import Session

from .audit import Actor
from .models import ApiToken, LoginSession, User
from .people import TOKEN_PREFIX, digest
from .roles import Permission, allows
from .services import Services

COOKIE = "polewatch_session"
PUBLIC = None


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" or "token"
    id: int
    name: str
    role: str
    sites: list[str] = field(default_factory=list)
    session_hash: str | None = None  # the console session this request came with

    def actor(self, client: str | None) -> Actor:
        return Actor(f"{self.kind}:{self.name}", self.role, client)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _by_token(session: Session, secret: str) -> Principal:
    token = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest(secret))).first()
    now = datetime.now(timezone.utc)
    if token is None or token.revoked_at is not None:
        raise _unauthorized("this API token is unknown or revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise _unauthorized("this API token has expired: ask an admin for a new one")
    return Principal("token", token.id, token.name, token.role, list(token.sites))


def _by_cookie(session: Session, secret: str) -> Principal:
    key = digest(secret)
    row = session.execute(
        select(LoginSession, User).join(User, User.id == LoginSession.user_id).where(LoginSession.token_hash == key)
    ).first()
    if row is None:
        raise _unauthorized("not signed in: sign in at /login")
    login, user = row
    if login.revoked_at is not None or login.expires_at <= datetime.now(timezone.utc) or user.disabled:
        raise _unauthorized("your session has ended: sign in again at /login")
    return Principal("user", user.id, user.username, user.role, list(user.sites), session_hash=key)


def authenticate(request: Request, svc: Services) -> Principal:
    header = request.headers.get("authorization")
    cookie = request.cookies.get(COOKIE)
    with svc.sessions() as session:
        if header:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip().startswith(TOKEN_PREFIX):
                raise _unauthorized("Authorization must be 'Bearer pwt_...' (an API token)")
            return _by_token(session, secret.strip())
        if cookie:
            return _by_cookie(session, cookie)
    raise _unauthorized("not signed in: sign in at /login, or send an API token as 'Authorization: Bearer ...'")


class Requires:
    """The rule of one route: a permission, or PUBLIC. Used as `dependencies=[Depends(Requires(...))]`;
    routes read the principal back with `principal(request)`."""

    def __init__(self, permission: Permission | None) -> None:
        self.permission = permission

    def __call__(self, request: Request) -> None:
        if self.permission is None:
            return
        who = authenticate(request, request.app.state.services)
        if not allows(who.role, self.permission):
            raise HTTPException(
                status_code=403,
                detail=f"the {who.role} role may not do this (needs {self.permission.value})",
            )
        request.state.principal = who

    def __repr__(self) -> str:
        return f"Requires({self.permission.value if self.permission else 'PUBLIC'})"


def principal(request: Request) -> Principal:
    who: Principal | None = getattr(request.state, "principal", None)
    if who is None:  # a route reading the principal without a rule that sets it: a bug
        raise RuntimeError(f"{request.url.path}: no authenticated principal on a route that needs one")
    return who


def rule_of(route: APIRoute) -> Requires | None:
    rules = [d.dependency for d in route.dependencies if isinstance(d.dependency, Requires)]
    return rules[0] if len(rules) == 1 else None


def unruled_routes(routes: list[object]) -> list[str]:
    """Routes with no rule (or more than one): the app refuses to start with any."""
    return [
        f"{sorted(r.methods or ())} {r.path}" for r in routes if isinstance(r, APIRoute) and rule_of(r) is None
    ]
