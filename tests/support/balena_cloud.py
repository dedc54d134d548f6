"""A stand-in for the balena cloud API, at the HTTP level, for contract tests of the balena backend.

The balena cloud cannot be reached from CI, so balena-sdk's real requests (the real SDK, the real
`requests` stack) are answered by requests-mock. The routes below are the exact request shapes
balena-sdk 17 sends for what the backend does (read from the SDK's source and recorded from it:
pine's OData URLs on /v7, /actor/v1/whoami, /api-key/v1/, /device/register); an SDK that changed
them would miss every route here and fail the tests with "No mock address". Each request is kept
as (method, decoded path and query, JSON body, bearer token) for the tests to assert.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import requests_mock
from requests_mock.request import _RequestObjectProxy as Request
from requests_mock.response import _Context as Context

API = "https://api.balena-cloud.com"
FLEET = "bontang_city/polewatch"
FLEET_ID = 42
USER_ID = 5
PROVISIONING_KEY = "provisioning-key-from-balena"


@dataclass(frozen=True)
class Sent:
    """One request as the API saw it. The query is compared as a mapping: pine does not keep the
    order of OData options from one run to the next."""

    method: str
    path: str  # percent-decoded
    query: dict[str, str]
    body: Any
    token: str

    @property
    def target(self) -> str:
        return self.path + ("?" + "&".join(f"{k}={v}" for k, v in self.query.items()) if self.query else "")


@dataclass
class BalenaCloud:
    """One fleet, its devices with their variables and tags, and what the SDK sent."""

    sent: list[Sent] = field(default_factory=list)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # uuid -> {"id", "fleet"}
    env: dict[int, dict[str, str]] = field(default_factory=dict)
    tags: dict[int, dict[str, str]] = field(default_factory=dict)
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # route name -> (status, body)
    hang: dict[str, threading.Event] = field(default_factory=dict)  # route name -> released when set
    hang_s: float = 10.0
    next_id: int = 99

    def add_device(self, uuid: str, *, fleet: str = FLEET, env: dict[str, str] | None = None) -> int:
        device_id = self.next_id
        self.next_id += 1
        self.devices[uuid] = {"id": device_id, "fleet": fleet}
        self.env[device_id] = dict(env or {})
        self.tags[device_id] = {}
        return device_id

    def writes(self) -> list[Sent]:
        return [s for s in self.sent if s.method != "GET"]

    def install(self, mocker: requests_mock.Mocker) -> None:
        routes = {
            "device": ("GET", r"/v7/device\(uuid='(?P<uuid>[0-9a-f]+)'\)\?"),
            "whoami": ("GET", r"/actor/v1/whoami$"),
            "application": ("GET", r"/v7/application\?"),
            "api_key": ("POST", r"/api-key/v1/$"),
            "device_type": ("GET", r"/v7/device_type\?"),
            "register": ("POST", r"/device/register$"),
            "env_list": ("GET", r"/v7/device_environment_variable\?"),
            "env_create": ("POST", r"/v7/device_environment_variable$"),
            "env_update": ("PATCH", r"/v7/device_environment_variable\?"),
            "tag_list": ("GET", r"/v7/device_tag\?"),
            "tag_create": ("POST", r"/v7/device_tag$"),
        }
        for name, (method, pattern) in routes.items():
            mocker.register_uri(method, re.compile(re.escape(API) + pattern), text=self._handler(name))

    def _handler(self, name: str) -> Any:
        def handle(request: Request, context: Context) -> str:
            path, _, query = request.url.removeprefix(API).partition("?")
            target = unquote(request.url.removeprefix(API))
            body = json.loads(request.body) if request.body else None
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            self.sent.append(Sent(request.method, unquote(path), dict(parse_qsl(query)), body, token))
            if name in self.hang:
                self.hang[name].wait(self.hang_s)
            if name in self.fail:
                context.status_code, text = self.fail[name]
                return text
            answer = getattr(self, f"_{name}")(target, body)
            if isinstance(answer, tuple):
                context.status_code, answer = answer
            return json.dumps(answer)

        return handle

    def _device(self, target: str, body: Any) -> Any:
        match = re.search(r"uuid='([0-9a-f]+)'", target)
        assert match is not None
        device = self.devices.get(match.group(1))
        if device is None:
            return {"d": []}
        return {"d": [{"id": device["id"], "belongs_to__application": [{"slug": device["fleet"]}]}]}

    def _whoami(self, target: str, body: Any) -> Any:
        return {"id": 7, "actorType": "user", "actorTypeId": USER_ID, "email": "ops@bontang.example", "username": "ops"}

    def _application(self, target: str, body: Any) -> Any:
        if f"slug eq '{FLEET}'" not in target:
            return {"d": []}
        app: dict[str, Any] = {"id": FLEET_ID}
        if "$expand=is_for__device_type" in target:
            app["is_for__device_type"] = [{"slug": "raspberrypi5", "is_of__cpu_architecture": [{"slug": "aarch64"}]}]
        return {"d": [app]}

    def _api_key(self, target: str, body: Any) -> Any:
        return PROVISIONING_KEY

    def _device_type(self, target: str, body: Any) -> Any:
        match = re.search(r"is_referenced_by__alias eq '([^']+)'", target)
        assert match is not None
        slug = match.group(1)
        arch = "amd64" if slug.startswith("generic-amd64") else "aarch64"
        return {"d": [{"slug": slug, "is_of__cpu_architecture": [{"slug": arch}]}]}

    def _register(self, target: str, body: Any) -> Any:
        device_id = self.add_device(body["uuid"])
        return 201, {"id": device_id, "uuid": body["uuid"], "api_key": "device-api-key-secret"}

    def _env_list(self, target: str, body: Any) -> Any:
        device_id = int(re.search(r"device eq (\d+)", target).group(1))  # type: ignore[union-attr]
        values = self.env.get(device_id, {})
        return {"d": [{"id": i, "name": n, "value": v} for i, (n, v) in enumerate(sorted(values.items()))]}

    def _env_create(self, target: str, body: Any) -> Any:
        values = self.env.setdefault(body["device"], {})
        if body["name"] in values:  # what the API answers to a duplicate: pine's upsert then PATCHes
            return 409, '"device" and "name" must be unique.'
        values[body["name"]] = body["value"]
        return 201, {"id": 1, **body}

    def _env_update(self, target: str, body: Any) -> Any:
        match = re.search(r"\$filter=\(device eq (\d+)\) and \(name eq '([^']+)'\)", target)
        assert match is not None, target
        self.env[int(match.group(1))][match.group(2)] = body["value"]
        return 200, "OK"

    def _tag_list(self, target: str, body: Any) -> Any:
        device_id = int(re.search(r"device eq (\d+)", target).group(1))  # type: ignore[union-attr]
        values = self.tags.get(device_id, {})
        return {"d": [{"id": i, "tag_key": k, "value": v} for i, (k, v) in enumerate(sorted(values.items()))]}

    def _tag_create(self, target: str, body: Any) -> Any:
        self.tags.setdefault(body["device"], {})[body["tag_key"]] = body["value"]
        return 201, {"id": 1, **body}
