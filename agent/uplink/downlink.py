"""What the server sends the box: its config document and its commands.

Every message on the box's down branch is answered through the outbox (so the answer survives an
outage like any event): a config document with a `config_report` (applied, or refused naming the
field and the problem, in which case the box keeps running what it ran), a command with a
`command_ack` (done, refused or failed, with the reason and the result), a signed move directive
with a `command_ack` too (agent/uplink/move.py). Nothing a server, a
misconfigured tool or an attacker with broker access publishes there can stop the agent: anything
that is not a valid message costs a log line and a counter, and is answered whenever it carries
enough (a command id, a config version) to be answered.

Messages are handled one at a time, in arrival order, by a task of their own that outlives broker
sessions, so a link lost while a camera restarts does not leave it half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from polewatch.protocol import (
    COMMAND_ARGS,
    COMMAND_ID_PATTERN,
    COMMANDS,
    DOWN_KINDS,
    AgentSettings,
    Body,
    CommandAck,
    CommandMessage,
    ConfigMessage,
    ConfigReport,
    MessageError,
    MoveServerMessage,
    decode,
    topics,
)
from polewatch.protocol.commands import RotateCredentialsArgs

from ..config import AgentConfig
from ..remote_config import ConfigRefused, RemoteConfigStore, effective_config, refusal
from .journal import CommandJournal
from .move import Mover

log = logging.getLogger("polewatch.agent.downlink")

# Messages waiting to be handled; beyond this a flood is dropped (counted), the agent goes on.
QUEUE_LIMIT = 1000
_COMMAND_ID = re.compile(COMMAND_ID_PATTERN)


class CommandRefused(Exception):
    """A command that cannot run as asked (an unknown camera, say): refused, with this reason."""


class Controls(Protocol):
    """What the downlink needs of the running agent (agent/runtime/agent.py implements it)."""

    async def apply_config(self, config: AgentConfig) -> list[str]:
        """Switch to `config`, restarting only what changed; returns what changed."""
        ...

    async def run_command(self, name: str, args: BaseModel, command_id: str) -> dict[str, Any]:
        """Run one validated command; raises CommandRefused, or anything else for a failure."""
        ...


class CredentialRotation(Protocol):
    """Runs `rotate_credentials` (credentials.CredentialRotator): it needs the MQTT session, not the cameras."""

    async def rotate(self, args: RotateCredentialsArgs) -> dict[str, Any]: ...


class Sink(Protocol):
    async def put(self, body: Body) -> object: ...


class Downlink:
    """Handles the down branch of one box: `submit` from the MQTT session, `run` as a task."""

    def __init__(
        self,
        device_id: str,
        local_config: AgentConfig,
        controls: Controls,
        outbox: Sink,
        *,
        store: RemoteConfigStore | None = None,
        journal: CommandJournal | None = None,
        mover: Mover | None = None,
    ) -> None:
        self.device_id = device_id
        self.local_config = local_config
        self.controls = controls
        self.outbox = outbox
        self.store = store or RemoteConfigStore(local_config.state_dir)
        self.journal = journal or CommandJournal(local_config.state_dir)
        self.mover = mover
        self.credentials: CredentialRotation | None = None  # set once the MQTT session exists
        self.rejected: Counter[str] = Counter()  # reason code -> messages not understood
        self.handled = 0
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_LIMIT)

    # --- from the MQTT session ------------------------------------------------------------------

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue one received message; never blocks and never raises."""
        try:
            self._queue.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self._reject("queue_full", topic, payload, f"more than {QUEUE_LIMIT} down messages waiting; dropped")

    async def run(self) -> None:
        while True:
            topic, payload = await self._queue.get()
            try:
                await self.handle(topic, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must cost one message, never the agent (or the link, or the cameras).
                self.rejected["internal_error"] += 1
                log.exception("down message could not be handled", extra={"topic": topic})
            finally:
                self.handled += 1
                self._queue.task_done()

    async def idle(self) -> None:
        """Wait until every message submitted so far is handled (for tests and a clean stop)."""
        await self._queue.join()

    # --- one message ----------------------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        try:
            parsed = topics.parse(topic)
        except topics.TopicError as exc:
            self._reject("bad_topic", topic, payload, str(exc))
            return
        if parsed.device_id != self.device_id or parsed.direction != "down":
            self._reject("not_for_us", topic, payload, f"not this box's down branch ({self.device_id})")
            return
        if not payload:
            # Clearing the retained document: nothing to apply. (To return to the local file, the
            # server publishes a newer version with an empty document.)
            log.info("retained config cleared by the server; keeping the applied one", extra={"topic": topic})
            return
        try:
            message = decode(payload, parsed, kinds=DOWN_KINDS)
        except MessageError as exc:
            self._reject(exc.reason, topic, payload, str(exc))
            await self._answer_malformed(payload, exc)
            return
        if isinstance(message, ConfigMessage):
            await self._config(message)
        elif isinstance(message, CommandMessage):
            await self._command(message)
        elif isinstance(message, MoveServerMessage):
            if self.mover is None:
                self._reject("unknown_kind", topic, payload, "this downlink does not follow move directives")
            else:
                await self.mover.handle(message)

    async def _answer_malformed(self, payload: bytes, exc: MessageError) -> None:
        """Answer a message we cannot take if it names what it is about: the server learns why."""
        raw = _loads(payload)
        body = raw.get("body") if isinstance(raw, dict) else None
        if not isinstance(body, dict):
            return
        command_id = body.get("command_id")
        version = body.get("version")
        if isinstance(command_id, str) and _COMMAND_ID.match(command_id):
            if self.journal.outcome(command_id) is not None:
                return  # answered already, under a valid envelope
            name = body.get("name") if isinstance(body.get("name"), str) else None
            ack = CommandAck(command_id=command_id, name=name and name[:64], status="refused",
                             reason=f"{exc.reason}: {exc}"[:2000])
            self.journal.finished(ack)
            await self.outbox.put(ack)
        elif isinstance(version, int) and not isinstance(version, bool) and version >= 1:
            if not self._config_is_new(version):
                return
            field: str | None = None
            reason = f"{exc.reason}: {exc}"
            document = body.get("config")
            if isinstance(document, dict):
                try:
                    AgentSettings.model_validate(document)
                except ValidationError as invalid:
                    refused = refusal(invalid, prefix="")
                    field, reason = refused.field, str(refused)
            await self._refuse_config(version, reason[:2000], field)

    # --- config ---------------------------------------------------------------------------------

    async def _config(self, message: ConfigMessage) -> None:
        version = message.body.version
        if not self._config_is_new(version):
            return
        applied = self.store.applied_version or 0
        if version < applied:
            await self._refuse_config(
                version, f"version {version} is older than the applied version {applied}; publish a newer one",
                "version",
            )
            return
        try:
            config = effective_config(self.local_config, message.body.config)
        except ConfigRefused as exc:
            await self._refuse_config(version, str(exc)[:2000], exc.field)
            return
        try:
            changed = await self.controls.apply_config(config)
        except Exception as exc:
            log.exception("config could not be applied", extra={"version": version})
            await self._refuse_config(version, f"could not be applied: {exc}"[:2000], None)
            return
        self.store.save_applied(version, message.body.config)
        log.info("config applied", extra={"version": version, "changed": changed})
        await self.outbox.put(ConfigReport(version=version, status="applied", applied_version=version, changed=changed))

    def _config_is_new(self, version: int) -> bool:
        """False for the version applied or last refused: the broker redelivers the retained document on
        every connect, and it was answered already."""
        if version == (self.store.applied_version or 0):
            log.debug("config version already applied", extra={"version": version})
            return False
        if self.store.refused is not None and self.store.refused.version == version:
            log.debug("config version already refused", extra={"version": version})
            return False
        return True

    async def _refuse_config(self, version: int, reason: str, field: str | None) -> None:
        log.warning("config refused", extra={"version": version, "field": field, "reason": reason})
        self.store.save_refused(version, reason)
        await self.outbox.put(
            ConfigReport(version=version, status="refused", reason=reason, field=field,
                         applied_version=self.store.applied_version)
        )

    # --- commands -------------------------------------------------------------------------------

    async def _command(self, message: CommandMessage) -> None:
        command = message.body
        seen = self.journal.outcome(command.command_id)
        if seen is not None:
            log.info("command seen before; answering again, not running it",
                     extra={"command_id": command.command_id, "status": seen.status})
            self.journal.finished(seen)
            await self.outbox.put(seen.model_copy(update={"repeated": True}))
            return
        ack = await self._outcome(command.command_id, command.name, command.args, command.expires_at)
        self.journal.finished(ack)
        log.info("command answered", extra={"command_id": ack.command_id, "command": ack.name, "status": ack.status,
                                            "reason": ack.reason})
        await self.outbox.put(ack)

    async def _outcome(
        self, command_id: str, name: str, raw_args: dict[str, Any], expires_at: datetime | None
    ) -> CommandAck:
        def refused(reason: str) -> CommandAck:
            return CommandAck(command_id=command_id, name=name, status="refused", reason=reason[:2000])

        now = datetime.now(timezone.utc)
        if expires_at is not None and now > expires_at:
            return refused(f"expired at {expires_at.isoformat()}; the box's clock reads {now.isoformat()}")
        model = COMMAND_ARGS.get(name)
        if model is None:
            return refused(f"unknown command {name!r}; this agent knows {', '.join(COMMANDS)}")
        try:
            args = model.model_validate(raw_args)
        except ValidationError as exc:
            return refused(str(refusal(exc, prefix="args.")))
        self.journal.running(command_id, name)
        try:
            if isinstance(args, RotateCredentialsArgs) and self.credentials is not None:
                result = await self.credentials.rotate(args)
            else:
                result = await self.controls.run_command(name, args, command_id)
        except CommandRefused as exc:
            return refused(str(exc))
        except Exception as exc:
            log.exception("command failed", extra={"command_id": command_id, "command": name})
            return CommandAck(command_id=command_id, name=name, status="failed",
                              reason=f"{type(exc).__name__}: {exc}"[:2000])
        return CommandAck(command_id=command_id, name=name, status="done", result=result)

    def _reject(self, reason: str, topic: str, payload: bytes, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning(
            "down message rejected",
            extra={"reason": reason, "topic": topic, "detail": detail[:300],
                   "payload_head": payload[:120].decode("utf-8", "replace")},
        )


def _loads(payload: bytes) -> Any:
    with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return json.loads(payload)
    return None
