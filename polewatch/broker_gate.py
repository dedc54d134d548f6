"""Holds each client's CONNECT until the embedded broker has finished starting.

amqtt opens its listeners before its plugins' post-start step, in which the session plugin restores
the persistent sessions and subscriptions saved before a crash. A pole or the fleet server that
reconnects in that moment (they all retry the moment the port answers) either makes that step fail
("broker shouldn't have any sessions yet": every saved subscription is forgotten) or races it, and
the server's new subscription can end up on a session nobody reads: messages acknowledged to the
pole and never delivered. Waiting here, before amqtt creates the client's session, closes both.

Its own module, because amqtt loads plugins by import path and `polewatch.embedded_broker` usually
runs as `__main__`, which would make a second copy of `STARTED`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin

# Set by polewatch.embedded_broker.serve once Broker.start() has returned (plugins' post-start done).
STARTED = asyncio.Event()


class StartupGate(BaseAuthPlugin):  # type: ignore[misc]  # amqtt has no type hints
    """An authentication plugin without an opinion: it only makes the CONNECT wait for STARTED."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool | None:
        await STARTED.wait()
        return None  # the password file decides
