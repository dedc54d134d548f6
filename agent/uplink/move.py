"""Following a signed `move_server` directive: check it, answer on the old broker, move, fall back.

Order matters, and each step is there for an operator watching a city's move:

1. The directive is checked against the key pinned at enrolment, its target, its validity window and
   the highest serial this box acted on (protocol/move.py). A refusal is answered (`command_ack`,
   status `refused`, the reason code first) and the box stays where it is, still delivering.
2. The new endpoint is written to the state folder (agent/endpoint.py) before anything else, so a
   power cut from here on still ends on the new broker.
3. The `done` answer goes out through the outbox, and the box waits (up to ACK_WAIT_S) until the OLD
   broker acknowledged it: the server that issued the move learns that this box is leaving. If the
   old link is down, the answer stays in the outbox and reaches the new broker instead.
4. The session switches (session.Uplink.switch): publishes in flight finish, nothing is sent twice,
   the outbox is untouched and whatever it holds is replayed to the new broker.
5. If the new broker accepts no connection within `move.fallback_after_s`, the box goes back to the
   broker it left and says so (`command_ack`, status `failed`, same command id): a mistyped host must
   not cut a pole off for good. It does not retry that directive by itself (ops fix the new broker and
   issue a new serial), so a broken target never makes the fleet flap between two centres.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from polewatch.protocol import CommandAck, MoveServerMessage
from polewatch.protocol.move import MoveDirective, MoveRefused, check_directive
from polewatch.protocol.signing import SignatureError, load_public_key

from ..config import MqttConfig
from ..endpoint import Endpoint, EndpointStore
from .journal import CommandJournal
from .outbox import Outbox

log = logging.getLogger("polewatch.agent.move")

NAME = "move_server"
# How long the `done` answer may take to be acknowledged by the broker being left.
ACK_WAIT_S = 15.0
POLL_S = 0.1


class Switchable(Protocol):
    """What the mover needs of the MQTT session (session.Uplink)."""

    config: MqttConfig
    connected: bool

    def switch(self, config: MqttConfig) -> None: ...

    async def wait_sent(self, seq: int, timeout: float) -> bool: ...


def _where(mqtt: MqttConfig) -> str:
    return f"{mqtt.host}:{mqtt.port}"


class Mover:
    def __init__(
        self,
        device_id: str,
        file_mqtt: MqttConfig,
        store: EndpointStore,
        uplink: Switchable,
        outbox: Outbox,
        journal: CommandJournal,
        *,
        key_file: Path | None,
        fallback_after_s: float,
        ack_wait_s: float = ACK_WAIT_S,
    ) -> None:
        self.device_id = device_id
        self.file_mqtt = file_mqtt
        self.store = store
        self.uplink = uplink
        self.outbox = outbox
        self.journal = journal
        self.fallback_after_s = fallback_after_s
        self.ack_wait_s = ack_wait_s
        self.key: Any | None = None
        self.key_problem = "this box has no command key (trust.command_key in its config)"
        if key_file is not None:
            try:
                self.key = load_public_key(key_file.read_bytes())
            except (OSError, SignatureError) as exc:
                self.key_problem = f"the command key {key_file} cannot be used: {exc}"
                log.error("command key unusable: signed directives will be refused",
                          extra={"path": str(key_file), "error": str(exc)})  # fmt: skip
        self.moves = 0
        self.fallbacks = 0
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        """After a restart in the middle of a move: watch the new broker again (full fallback time)."""
        active = self.store.state.active
        if active is not None and not active.confirmed:
            self._watch_new(active, self.uplink.config)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    async def handle(self, message: MoveServerMessage) -> None:
        body = message.body
        if self.journal.outcome(body.command_id) is not None:
            # The retained directive comes again on every connect: answered already.
            log.debug("move directive answered before", extra={"command_id": body.command_id})
            return
        try:
            if self.key is None:
                raise MoveRefused("no_trusted_key", self.key_problem)
            directive = check_directive(
                body.directive, body.signature, body.key_id, self.key, device_id=self.device_id,
                last_serial=self.store.state.last_serial, now=datetime.now(timezone.utc),
            )  # fmt: skip
            target = self._endpoint(directive, body.command_id)
            new_mqtt = target.apply(self.file_mqtt)
        except MoveRefused as exc:
            await self._answer(CommandAck(command_id=body.command_id, name=NAME, status="refused",
                                          reason=str(exc)[:2000], result={"refusal": exc.reason}))  # fmt: skip
            log.warning("move directive refused; staying", extra={"reason": exc.reason, "detail": exc.detail})
            return
        except ValueError as exc:
            await self._answer(CommandAck(command_id=body.command_id, name=NAME, status="refused",
                                          reason=f"unusable: {exc}"[:2000], result={"refusal": "unusable"}))
            return
        await self._move(directive, target, new_mqtt)

    def _endpoint(self, directive: MoveDirective, command_id: str) -> Endpoint:
        ca_file = None
        if directive.mqtt.tls and directive.mqtt.ca_pem:
            ca_file = str(self.store.save_ca(directive.serial, directive.mqtt.ca_pem))
        return Endpoint(serial=directive.serial, command_id=command_id, host=directive.mqtt.host,
                        port=directive.mqtt.port, tls=directive.mqtt.tls, ca_file=ca_file,
                        server_url=directive.server_url, moved_at=time.time())  # fmt: skip

    async def _move(self, directive: MoveDirective, target: Endpoint, new_mqtt: MqttConfig) -> None:
        old_mqtt = self.uplink.config
        self.store.moved(target)
        ack = CommandAck(command_id=target.command_id, name=NAME, status="done", result={
            "serial": directive.serial, "from": _where(old_mqtt), "to": _where(new_mqtt),
            "server_url": directive.server_url,
        })  # fmt: skip
        seq = await self._answer(ack)
        on_old = await self.uplink.wait_sent(seq, self.ack_wait_s)
        log.warning("moving to another broker by signed directive", extra={
            "serial": directive.serial, "from": _where(old_mqtt), "to": _where(new_mqtt),
            "ack_on_old_broker": on_old,
        })  # fmt: skip
        self.moves += 1
        self.uplink.switch(new_mqtt)
        self._watch_new(target, old_mqtt)

    def _watch_new(self, target: Endpoint, old_mqtt: MqttConfig) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.create_task(self._confirm_or_fall_back(target, old_mqtt), name="move-watch")

    async def _confirm_or_fall_back(self, target: Endpoint, old_mqtt: MqttConfig) -> None:
        deadline = time.monotonic() + self.fallback_after_s
        while time.monotonic() < deadline:
            cfg = self.uplink.config
            if self.uplink.connected and (cfg.host, cfg.port) == (target.host, target.port):
                self.store.confirmed()
                log.info("connected to the new broker; move confirmed",
                         extra={"serial": target.serial, "broker": f"{target.host}:{target.port}"})  # fmt: skip
                return
            await asyncio.sleep(POLL_S)
        self.store.fell_back()
        back = self.store.state.active
        back_mqtt = back.apply(self.file_mqtt) if back is not None else self.file_mqtt
        if (old_mqtt.host, old_mqtt.port) != (back_mqtt.host, back_mqtt.port):
            log.info("the broker before the move is not the one saved; going to the saved one",
                     extra={"saved": _where(back_mqtt), "before": _where(old_mqtt)})  # fmt: skip
        self.fallbacks += 1
        reason = (f"fallback: the new broker {target.host}:{target.port} accepted no connection within "
                  f"{self.fallback_after_s:g} s; back on {_where(back_mqtt)}. Fix the new broker and issue a new "
                  "move (a new serial); this one is not retried")  # fmt: skip
        log.error("new broker unreachable; going back", extra={"serial": target.serial, "reason": reason})
        self.uplink.switch(back_mqtt)
        await self._answer(CommandAck(command_id=target.command_id, name=NAME, status="failed", reason=reason,
                                      result={"serial": target.serial, "fallback_to": _where(back_mqtt)}))

    async def _answer(self, ack: CommandAck) -> int:
        self.journal.finished(ack)
        accepted = await self.outbox.put(ack)
        seq: int = accepted.message.seq
        return seq
