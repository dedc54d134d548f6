"""Users, API tokens and console sessions: the changes, each with its audit entry.

Plain functions over a Session, shared by the HTTP API and the `polewatch server user|token`
commands, so both paths check the same rules and write the same audit entries. The caller owns the
transaction: a change and its audit entry commit together or not at all.

Secrets (session cookies, API tokens) are random 256-bit values shown once; only their SHA-256 is
stored, so a copy of the database lets nobody sign in.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, passwords
from .audit import Actor
from .models import ApiToken, LoginSession, User
from .roles import ROLES

TOKEN_PREFIX = "pwt_"


class PeopleError(Exception):
    """A change that cannot be made, with the HTTP status that says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def now() -> datetime:
    return datetime.now(timezone.utc)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PeopleError(422, f"unknown role {role!r}: one of {', '.join(ROLES)}")


def _check_password(password: str) -> None:
    if not passwords.MIN_LENGTH <= len(password) <= passwords.MAX_LENGTH:
        raise PeopleError(
            422, f"a password needs {passwords.MIN_LENGTH} to {passwords.MAX_LENGTH} characters"
        )


def user_view(user: User) -> dict[str, Any]:
    """What the audit log keeps of a user: everything but the password hash."""
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "sites": list(user.sites),
        "disabled": user.disabled,
    }


def token_view(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "sites": list(token.sites),
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


# --- users -----------------------------------------------------------------------------------------


def create_user(
    session: Session,
    actor: Actor,
    *,
    username: str,
    password: str,
    role: str,
    display_name: str | None = None,
    sites: list[str] | None = None,
) -> User:
    _check_role(role)
    _check_password(password)
    stamp = now()
    user = User(
        username=username,
        display_name=display_name,
        role=role,
        sites=sorted(set(sites or [])),
        password_hash=passwords.hash_password(password),
        disabled=False,
        created_at=stamp,
        updated_at=stamp,
    )
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise PeopleError(409, f"a user named {username!r} exists already") from None
    audit.record(session, actor, "user.create", "user", user.id, after=user_view(user))
    return user


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise PeopleError(404, f"no user with id {user_id}")
    return user


def update_user(
    session: Session,
    actor: Actor,
    user_id: int,
    *,
    role: str | None = None,
    display_name: str | None = None,
    sites: list[str] | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> User:
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise PeopleError(404, f"no user with id {user_id}")
    before = user_view(user)
    if role is not None:
        _check_role(role)
        user.role = role
    if display_name is not None:
        user.display_name = display_name
    if sites is not None:
        user.sites = sorted(set(sites))
    if disabled is not None:
        user.disabled = disabled
    if password is not None:
        _check_password(password)
        user.password_hash = passwords.hash_password(password)
    if (user.disabled or user.role != "admin") and before["role"] == "admin" and not before["disabled"]:
        _keep_one_admin(session, user.id)
    after = user_view(user)
    if after == before and password is None:
        return user  # nothing changed: nothing to log
    user.updated_at = now()
    if user.disabled or password is not None:
        _end_sessions(session, user.id)  # a disabled account or a new password signs everyone out
    changes = {"password": "changed"} if password is not None else {}
    audit.record(session, actor, "user.update", "user", user.id, before=before, after={**after, **changes})
    return user


def _keep_one_admin(session: Session, leaving: int) -> None:
    others = session.scalars(
        select(User.id).where(User.role == "admin", User.disabled.is_(False), User.id != leaving)
    ).first()
    if others is None:
        raise PeopleError(409, "this is the last active admin: make another admin first")


def _end_sessions(session: Session, user_id: int) -> None:
    stamp = now()
    for row in session.scalars(
        select(LoginSession).where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
    ):
        row.revoked_at = stamp


def list_users(session: Session, *, limit: int, after: int | None) -> tuple[list[User], bool]:
    q = select(User).order_by(User.id).limit(limit + 1)
    if after is not None:
        q = q.where(User.id > after)
    rows = list(session.scalars(q))
    return rows[:limit], len(rows) > limit


# --- API tokens ------------------------------------------------------------------------------------


def create_token(
    session: Session,
    actor: Actor,
    *,
    name: str,
    role: str,
    sites: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token; the secret is returned here and never again."""
    _check_role(role)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        role=role,
        sites=sorted(set(sites or [])),
        token_hash=digest(secret),
        created_by=actor.name[:100],
        created_at=now(),
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    audit.record(session, actor, "token.create", "token", token.id, after=token_view(token))
    return token, secret


def revoke_token(session: Session, actor: Actor, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id, with_for_update=True)
    if token is None:
        raise PeopleError(404, f"no token with id {token_id}")
    if token.revoked_at is None:  # revoking twice is a no-op, not an error, and logs nothing new
        before = token_view(token)
        token.revoked_at = now()
        audit.record(session, actor, "token.revoke", "token", token.id, before=before, after=token_view(token))
    return token


def list_tokens(session: Session, *, limit: int, after: int | None) -> tuple[list[ApiToken], bool]:
    q = select(ApiToken).order_by(ApiToken.id).limit(limit + 1)
    if after is not None:
        q = q.where(ApiToken.id > after)
    rows = list(session.scalars(q))
    return rows[:limit], len(rows) > limit


# --- console sessions --------------------------------------------------------------------------------


def check_login(session: Session, username: str, password: str) -> User | None:
    """The user when the password is right and the account enabled; None otherwise (same cost)."""
    user = session.scalars(select(User).where(User.username == username)).first()
    ok = passwords.verify(password, user.password_hash if user is not None else None)
    if not ok or user is None or user.disabled:
        return None
    return user


def start_session(session: Session, user: User, lifetime: timedelta, client: str | None) -> tuple[LoginSession, str]:
    secret = secrets.token_urlsafe(32)
    stamp = now()
    # Housekeeping on the way: sessions that ended can never be used again (the audit log keeps
    # the sign-ins and sign-outs), so the table holds only live ones.
    session.execute(
        delete(LoginSession).where(or_(LoginSession.expires_at <= stamp, LoginSession.revoked_at.is_not(None)))
    )
    row = LoginSession(token_hash=digest(secret), user_id=user.id, created_at=stamp, expires_at=stamp + lifetime)
    session.add(row)
    actor = Actor(f"user:{user.username}", user.role, client)
    audit.record(session, actor, "session.login", "user", user.id)
    return row, secret


def end_session(session: Session, actor: Actor, token_hash: str) -> None:
    row = session.get(LoginSession, token_hash, with_for_update=True)
    if row is not None and row.revoked_at is None:
        row.revoked_at = now()
        audit.record(session, actor, "session.logout", "user", row.user_id)
