"""Drive Mosquitto's dynamic-security plugin: create, rotate, revoke and remove accounts.

The plugin takes JSON commands on `$CONTROL/dynamic-security/v1` and answers each, in order, on
`.../response`, echoing our `correlationData`; the broker applies them at once (a disabled or deleted
client is disconnected the same moment). Every call here waits for its answer and raises
`DynsecError` with the plugin's own words when a command fails, so a caller never believes a box was
revoked when it was not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiomqtt

from . import policy

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"


class DynsecError(RuntimeError):
    """The broker refused a command (or did not answer); the text is what the plugin said."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"broker refused {command}: {error}")
        self.command = command
        self.error = error


@dataclass(frozen=True)
class BrokerAccount:
    """An account as the plugin reports it."""

    username: str
    clientid: str | None
    disabled: bool
    roles: tuple[str, ...]


class DynsecAdmin:
    """One admin connection to the broker's security plugin; use as `async with DynsecAdmin(...)`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        tls_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._client = aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=f"polewatch-dynsec-{uuid.uuid4().hex[:8]}",
            tls_context=tls_context,
            timeout=timeout_s,
        )
        self._timeout_s = timeout_s
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> DynsecAdmin:
        await self._client.__aenter__()
        await self._client.subscribe(RESPONSE_TOPIC, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        async for message in self._client.messages:
            try:
                responses = json.loads(bytes(message.payload or b"")).get("responses", [])
            except (ValueError, AttributeError):
                log.warning("unreadable dynamic-security response", extra={"payload": str(message.payload)[:200]})
                continue
            for response in responses:
                future = self._waiting.pop(str(response.get("correlationData")), None)
                if future is not None and not future.done():
                    future.set_result(response)

    async def execute(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in one message and return their answers; raise on the first refusal."""
        answers = await self.try_execute(commands)
        for command, answer in zip(commands, answers, strict=True):
            if "error" in answer:
                raise DynsecError(str(command["command"]), str(answer["error"]))
        return answers

    async def try_execute(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Like `execute`, but refusals come back as answers with an `error` key."""
        loop = asyncio.get_running_loop()
        tagged, futures = [], []
        for command in commands:
            tag = uuid.uuid4().hex
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting[tag] = future
            tagged.append({**command, "correlationData": tag})
            futures.append(future)
        async with self._lock:
            await self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s))
        except asyncio.TimeoutError:
            names = ", ".join(str(c["command"]) for c in commands)
            raise DynsecError(
                names,
                f"no answer within {self._timeout_s:g} s: is the dynamic-security "
                "plugin loaded, and is this account its admin?",
            ) from None
        finally:
            for command in tagged:
                self._waiting.pop(command["correlationData"], None)

    async def ensure_device(self, device_id: str, password: str) -> None:
        """Create the box's role and account, or bring an existing one to this password, enabled.

        Idempotent, so a technician's re-run or a retried enrolment never fails half-way or makes a
        second identity: the account is the device id, bound to the client id of the same name. Logins
        left from earlier rotations are deleted: the box enrolled again holds only this one.
        """
        role = policy.device_role(device_id)
        answers = await self.try_execute(
            [{"command": "createRole", "rolename": role, "acls": policy.device_acls(device_id)}]
        )
        if "error" in answers[0] and "exists" not in str(answers[0]["error"]).lower():
            raise DynsecError("createRole", str(answers[0]["error"]))
        answers = await self.try_execute(
            [
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "clientid": device_id,
                    "roles": [{"rolename": role}],
                }
            ]
        )
        if "error" not in answers[0]:
            await self._drop_rotated(device_id)
            return
        if "exists" not in str(answers[0]["error"]).lower():
            raise DynsecError("createClient", str(answers[0]["error"]))
        await self.execute(
            [
                {
                    "command": "modifyClient",
                    "username": device_id,
                    "password": password,
                    "clientid": device_id,
                    "roles": [{"rolename": role}],
                },
                {"command": "enableClient", "username": device_id},
            ]
        )
        await self._drop_rotated(device_id)

    async def _drop_rotated(self, device_id: str) -> None:
        for login in await self.logins(device_id):
            if login != device_id:
                await self.delete_login(login)

    async def logins(self, device_id: str) -> list[str]:
        """Every broker login of the box: its enrolment one (the device id) and rotated ones."""
        answer = await self.execute([{"command": "listClients"}])
        return [str(u) for u in answer[0]["data"]["clients"] if policy.is_login_of(str(u), device_id)]

    async def add_login(self, device_id: str, username: str, password: str) -> None:
        """A second login for the box during a rotation: bound to the same client id, with the same role,
        so both its old and its new login work until the box has switched."""
        if not policy.is_login_of(username, device_id):
            raise ValueError(f"{username!r} is not a login name for device {device_id!r}")
        await self.execute(
            [{"command": "createClient", "username": username, "password": password, "clientid": device_id,
              "roles": [{"rolename": policy.device_role(device_id)}]}]
        )  # fmt: skip

    async def delete_login(self, username: str) -> None:
        """Delete one login (already gone is not an error); the box's role stays."""
        answer = (await self.try_execute([{"command": "deleteClient", "username": username}]))[0]
        error = str(answer.get("error", ""))
        if error and "not found" not in error.lower():
            raise DynsecError("deleteClient", error)

    async def set_password(self, device_id: str, password: str) -> None:
        """Rotate: the new password works for the next connection; the live one is not cut."""
        await self.execute([{"command": "setClientPassword", "username": device_id, "password": password}])

    async def revoke(self, device_id: str) -> None:
        """Disable the account and take its role away: the broker disconnects the box now and refuses
        its password from now on. Taking the role matters for certificate logins, which Mosquitto 2.0
        lets in without asking the plugin (a disabled flag does not stop them): without a role such a
        box may publish and subscribe to nothing. The CRL then refuses it at the handshake."""
        role = policy.device_role(device_id)
        for login in await self.logins(device_id) or [device_id]:
            await self.execute(
                [
                    {"command": "disableClient", "username": login},
                    {"command": "removeClientRole", "username": login, "rolename": role},
                ]
            )

    async def reinstate(self, device_id: str) -> None:
        role = policy.device_role(device_id)
        for login in await self.logins(device_id) or [device_id]:
            await self.execute(
                [
                    {"command": "addClientRole", "username": login, "rolename": role},
                    {"command": "enableClient", "username": login},
                ]
            )

    async def remove(self, device_id: str) -> None:
        """Delete account and role (decommissioning); already gone is not an error."""
        for login in await self.logins(device_id):
            if login != device_id:
                await self.delete_login(login)
        answers = await self.try_execute(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": policy.device_role(device_id)},
            ]
        )
        for command, answer in zip(("deleteClient", "deleteRole"), answers, strict=True):
            error = str(answer.get("error", ""))
            if error and "not found" not in error.lower():
                raise DynsecError(command, error)

    async def account(self, username: str) -> BrokerAccount | None:
        answer = (await self.try_execute([{"command": "getClient", "username": username}]))[0]
        if "error" in answer:
            if "not found" in str(answer["error"]).lower():
                return None
            raise DynsecError("getClient", str(answer["error"]))
        client = answer["data"]["client"]
        return BrokerAccount(
            username=client["username"],
            clientid=client.get("clientid"),
            disabled=bool(client.get("disabled", False)),
            roles=tuple(r["rolename"] for r in client.get("roles", [])),
        )
