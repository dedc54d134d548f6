"""What one running server holds, shared by the ingest, the API and the live stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .feed import Feed
from .ingest import Ingest
from .login_limits import LoginLimits
from .settings import Settings
from .store import Store


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: Store
    feed: Feed
    ingest: Ingest
    login_limits: LoginLimits


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
