"""Polewatch fleet server: takes in what the poles report over MQTT, stores it, and shows it to
command-centre operators (REST API + a live web console).

Never imports polewatch.agent: the two sides share only polewatch.protocol. The names below are
imported lazily so that `import polewatch.fleet_server.cli` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:
    from .app import create_app, serve

__all__ = ["Settings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
