"""Sign-in, users, API tokens and the audit log over HTTP.

Handlers are plain `def`s (run in worker threads): hashing a password with Argon2 takes tens of
milliseconds of CPU and must not stall the event loop that carries MQTT and the live streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from . import audit, people
from .api import ERRORS, rule
from .auth import COOKIE, PUBLIC, client_address, principal
from .pagination import NO_NUL, IdCursor, Limit, RowIdPath, int_cursor
from .people import PeopleError
from .people_schemas import (
    AuditOut,
    AuditPage,
    IsoTime,
    LoginIn,
    MeOut,
    NewTokenOut,
    SitesIn,
    TokenIn,
    TokenOut,
    TokenPage,
    UserIn,
    UserOut,
    UserPage,
    UserPatch,
)
from .roles import GRANTS, Permission
from .schemas import ErrorOut
from .services import Services, ServicesDep

DENIED: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "Not signed in and no API token."},
    403: {"model": ErrorOut, "description": "Signed in, but this role may not do this."},
}
router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})


@contextmanager
def _change(svc: Services) -> Iterator[Session]:
    """One transaction for a change and its audit entry; a PeopleError becomes its HTTP error."""
    try:
        with svc.sessions.begin() as session:
            yield session
    except PeopleError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None


# --- sign-in -----------------------------------------------------------------------------------------


@router.post(
    "/auth/login",
    tags=["auth"],
    summary="Sign in with a password; sets the console's session cookie",
    dependencies=rule(PUBLIC),
    responses={429: {"model": ErrorOut, "description": "Too many attempts: wait `Retry-After` seconds."}},
)
def login(body: LoginIn, request: Request, response: Response, svc: ServicesDep) -> MeOut:
    client = client_address(request) or "unknown"
    wait = svc.login_limits.attempt(client, body.username)
    if wait is not None:
        raise HTTPException(
            status_code=429,
            detail=f"too many sign-in attempts: try again in {wait:.0f} s",
            headers={"Retry-After": str(int(wait))},
        )
    with svc.sessions.begin() as session:
        user = people.check_login(session, body.username, body.password)
        if user is None:
            svc.login_limits.failed(body.username)
            raise HTTPException(status_code=401, detail="wrong username or password, or the account is disabled")
        lifetime = timedelta(hours=svc.settings.session_hours)
        _row, secret = people.start_session(session, user, lifetime, client)
        me = _me("user", user.username, user.role, list(user.sites))
    response.set_cookie(
        COOKIE, secret, max_age=int(lifetime.total_seconds()), httponly=True, samesite="strict",
        secure=svc.settings.cookie_secure, path="/",
    )  # fmt: skip
    return me


@router.post("/auth/logout", tags=["auth"], summary="Sign out (ends this session)", dependencies=rule(Permission.SELF))
def logout(request: Request, svc: ServicesDep) -> JSONResponse:
    who = principal(request)
    if who.session_hash is not None:
        with svc.sessions.begin() as session:
            people.end_session(session, who.actor(client_address(request)), who.session_hash)
    response = JSONResponse({"detail": "signed out"})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/auth/me", tags=["auth"], summary="Who this request is signed in as", dependencies=rule(Permission.SELF))
def me(request: Request) -> MeOut:
    who = principal(request)
    return _me(who.kind, who.name, who.role, who.sites)


def _me(kind: str, name: str, role: str, sites: list[str]) -> MeOut:
    permissions = sorted(p.value for p in GRANTS.get(role, frozenset()))  # type: ignore[call-overload]
    return MeOut(kind=kind, name=name, role=role, sites=sites, permissions=permissions)


# --- users ---------------------------------------------------------------------------------------------


@router.get("/users", tags=["users"], summary="People, by id, paginated", dependencies=rule(Permission.USERS_MANAGE))
def list_users(svc: ServicesDep, limit: Limit = 50, cursor: IdCursor = None) -> UserPage:
    with svc.sessions() as session:
        rows, more = people.list_users(session, limit=limit, after=int_cursor(cursor))
        return UserPage(items=[UserOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


@router.post(
    "/users", tags=["users"], summary="Add a person", status_code=201, dependencies=rule(Permission.USERS_MANAGE),
    responses={409: {"model": ErrorOut, "description": "The username is taken."}},
)  # fmt: skip
def create_user(body: UserIn, request: Request, svc: ServicesDep) -> UserOut:
    actor = principal(request).actor(client_address(request))
    with _change(svc) as session:
        user = people.create_user(
            session, actor, username=body.username, password=body.password, role=body.role,
            display_name=body.display_name, sites=body.sites,
        )  # fmt: skip
        return UserOut.of(user)


@router.get(
    "/users/{user_id}", tags=["users"], summary="One person", dependencies=rule(Permission.USERS_MANAGE),
    responses={404: {"model": ErrorOut, "description": "No such user."}},
)  # fmt: skip
def get_user(user_id: RowIdPath, svc: ServicesDep) -> UserOut:
    with _change(svc) as session:
        return UserOut.of(people.get_user(session, user_id))


@router.patch(
    "/users/{user_id}", tags=["users"], summary="Change a person's role, sites, name or password, or disable them",
    dependencies=rule(Permission.USERS_MANAGE),
    responses={
        404: {"model": ErrorOut, "description": "No such user."},
        409: {"model": ErrorOut, "description": "It would leave no active admin."},
    },
)  # fmt: skip
def update_user(user_id: RowIdPath, body: UserPatch, request: Request, svc: ServicesDep) -> UserOut:
    actor = principal(request).actor(client_address(request))
    with _change(svc) as session:
        user = people.update_user(session, actor, user_id, **body.model_dump(exclude_unset=True))
        return UserOut.of(user)


@router.put(
    "/users/{user_id}/sites", tags=["users"], summary="Assign the sites a person (a technician) works on",
    dependencies=rule(Permission.USERS_MANAGE),
    responses={404: {"model": ErrorOut, "description": "No such user."}},
)  # fmt: skip
def assign_sites(user_id: RowIdPath, body: SitesIn, request: Request, svc: ServicesDep) -> UserOut:
    """Replaces the list; audited as `user.sites`. Takes effect on the person's next request."""
    actor = principal(request).actor(client_address(request))
    with _change(svc) as session:
        return UserOut.of(people.assign_sites(session, actor, user_id, body.sites))


# --- API tokens ------------------------------------------------------------------------------------------


@router.get(
    "/tokens", tags=["tokens"], summary="API tokens (never their secrets), by id",
    dependencies=rule(Permission.TOKENS_MANAGE),
)  # fmt: skip
def list_tokens(svc: ServicesDep, limit: Limit = 50, cursor: IdCursor = None) -> TokenPage:
    with svc.sessions() as session:
        rows, more = people.list_tokens(session, limit=limit, after=int_cursor(cursor))
        return TokenPage(items=[TokenOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


@router.post(
    "/tokens", tags=["tokens"], summary="Make an API token for a machine (the secret is shown once)",
    status_code=201, dependencies=rule(Permission.TOKENS_MANAGE),
)  # fmt: skip
def create_token(body: TokenIn, request: Request, svc: ServicesDep) -> NewTokenOut:
    actor = principal(request).actor(client_address(request))
    with _change(svc) as session:
        token, secret = people.create_token(
            session, actor, name=body.name, role=body.role, sites=body.sites, expires_at=body.expires_at
        )
        return NewTokenOut(**TokenOut.of(token).model_dump(), token=secret)


@router.delete(
    "/tokens/{token_id}", tags=["tokens"], summary="Revoke an API token (at once, for every replica)",
    dependencies=rule(Permission.TOKENS_MANAGE), responses={404: {"model": ErrorOut, "description": "No such token."}},
)  # fmt: skip
def revoke_token(token_id: RowIdPath, request: Request, svc: ServicesDep) -> TokenOut:
    actor = principal(request).actor(client_address(request))
    with _change(svc) as session:
        return TokenOut.of(people.revoke_token(session, actor, token_id))


# --- audit log -------------------------------------------------------------------------------------------


@router.get(
    "/audit", tags=["audit"], summary="Every change by a person or a token, newest first",
    dependencies=rule(Permission.AUDIT_READ),
)  # fmt: skip
def list_audit(
    svc: ServicesDep,
    actor: Annotated[str | None, Query(max_length=120, pattern=NO_NUL, description="e.g. user:alice")] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=NO_NUL, description="e.g. user.create")] = None,
    target_type: Annotated[str | None, Query(max_length=32, pattern=NO_NUL, description="user, token")] = None,
    target_id: Annotated[str | None, Query(max_length=120, pattern=NO_NUL)] = None,
    since: Annotated[IsoTime | None, Query(description="Only entries at or after this time (ISO 8601, zoned).")] = None,
    until: Annotated[IsoTime | None, Query(description="Only entries before this time (ISO 8601, zoned).")] = None,
    limit: Limit = 50,
    cursor: IdCursor = None,
) -> AuditPage:
    with svc.sessions() as session:
        rows, more = audit.query(
            session, actor=actor, action=action, target_type=target_type, target_id=target_id, since=since,
            until=until, limit=limit, before=int_cursor(cursor),
        )  # fmt: skip
        return AuditPage(items=[AuditOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)
