"""Where the box connects after a move: kept in the state folder, over the config file's `mqtt` block.

A signed move (agent/uplink/move.py) must survive a restart, or a power cut after the move would
send the box back to a command centre that no longer exists; and the config file is written by the
technician's tool and may be read-only. So the move is kept in `<state_dir>/endpoint.json`, and it
takes precedence over `mqtt.host`, `mqtt.port` and `mqtt.tls.ca_file` of the config file; the rest of
the `mqtt` block (account, client certificate, keepalive) still comes from the file. Deleting the
file returns the box to the file's broker at the next start.

The file also remembers the highest move serial seen, so a replayed directive is refused even after
a fallback, and the endpoint the box came from, so it can go back if the new broker never answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import MqttConfig, TlsConfig
from .state_files import move_aside, read_json, write_json

log = logging.getLogger("polewatch.agent.endpoint")

ENDPOINT_FILE = "endpoint.json"


class Endpoint(BaseModel):
    """A broker the box was moved to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serial: int = Field(ge=1)
    command_id: str
    host: str
    port: int
    tls: bool
    ca_file: str | None = Field(default=None, description="The CA from the directive; None: the file's CA.")
    server_url: str | None = None
    moved_at: float
    confirmed: bool = Field(default=False, description="The box has connected to it since the move.")

    def apply(self, mqtt: MqttConfig) -> MqttConfig:
        """`mqtt` (the file's block) with this endpoint's host, port and CA."""
        tls: TlsConfig | None = None
        if self.tls:
            current = mqtt.tls
            ca = Path(self.ca_file) if self.ca_file else (current.ca_file if current else None)
            if ca is None:
                raise ValueError("TLS asked for without a CA, and the config file has none")
            tls = TlsConfig(ca_file=ca, cert_file=current.cert_file if current else None,
                            key_file=current.key_file if current else None)  # fmt: skip
        return mqtt.model_copy(update={"host": self.host, "port": self.port, "tls": tls})


class EndpointState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    last_serial: int = Field(default=0, ge=0, description="The highest move serial this box acted on.")
    active: Endpoint | None = Field(default=None, description="None: the config file's broker.")
    previous: Endpoint | None = Field(default=None, description="Where the box was before `active` (None: the file).")


class EndpointStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / ENDPOINT_FILE
        self.state = EndpointState()
        raw = read_json(self.path)
        if raw is not None:
            try:
                self.state = EndpointState.model_validate(raw)
            except ValidationError as exc:
                move_aside(self.path, f"not an endpoint record: {exc.error_count()} problems")

    def effective(self, mqtt: MqttConfig) -> MqttConfig:
        """The broker to connect to: the moved-to endpoint over the file's block, or the file's alone."""
        active = self.state.active
        if active is None:
            return mqtt
        try:
            config = active.apply(mqtt)
        except ValueError as exc:
            log.error("the saved move does not fit the config file; using the file's broker",
                      extra={"serial": active.serial, "problem": str(exc)})  # fmt: skip
            return mqtt
        log.info("connecting to the broker of a signed move (endpoint.json overrides mqtt in the config file)",
                 extra={"serial": active.serial, "broker": f"{active.host}:{active.port}", "path": str(self.path)})
        return config

    def save_ca(self, serial: int, pem: str) -> Path:
        path = self.state_dir / "move" / f"ca-{serial}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pem)
        return path

    def moved(self, endpoint: Endpoint) -> None:
        self._save(EndpointState(last_serial=max(self.state.last_serial, endpoint.serial), active=endpoint,
                                 previous=self.state.active))  # fmt: skip

    def confirmed(self) -> None:
        if self.state.active is not None and not self.state.active.confirmed:
            active = self.state.active.model_copy(update={"confirmed": True})
            self._save(self.state.model_copy(update={"active": active}))

    def fell_back(self) -> None:
        """Back to where the box was before the last move; the serial stays used."""
        self._save(EndpointState(last_serial=self.state.last_serial, active=self.state.previous, previous=None))

    def _save(self, state: EndpointState) -> None:
        write_json(self.path, state.model_dump(mode="json"))
        self.state = state
