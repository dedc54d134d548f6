"""What one fleet-server replica needs to know to run.

A plain pydantic model rather than a settings framework: the CLI maps its flags (and their
POLEWATCH_* environment variables) onto it, and tests build it directly, so there is exactly one
place where defaults live.
"""

from __future__ import annotations

import ssl

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

from .health_rollup import Policy as HealthPolicy

DEFAULT_DATABASE_URL = "sqlite:///var/fleet-server.sqlite3"


class Settings(BaseModel):
    """Configuration of one fleet-server process (HTTP API + console + MQTT ingest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL. SQLite (relative paths are from the working directory) "
        "or PostgreSQL (postgresql+psycopg://...).",
    )
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = "fleet-server"
    mqtt_password: SecretStr | None = Field(
        default=None, description="Kept out of reprs and logs; the CLI reads POLEWATCH_MQTT_PASSWORD."
    )
    mqtt_client_id: str = Field(
        default="polewatch-fleet-server-1",
        min_length=1,
        max_length=128,
        description="Fixed per replica so the broker keeps this replica's persistent session (and "
        "the QoS 1 messages queued while it was away). Up to 23 characters is what every MQTT "
        "3.1.1 broker must accept.",
    )
    mqtt_shared_group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Replicas: subscribe through the MQTT shared subscription $share/<group>/..., so "
        "the broker hands each message to one replica of the group. Only for brokers that have "
        "shared subscriptions (Mosquitto does; the embedded amqtt broker does not, and there a "
        "shared filter would silently match nothing). None: a plain subscription (one replica, or "
        "every replica sees everything and the idempotent store keeps one copy).",
    )
    mqtt_ca_file: FilePath | None = Field(
        default=None,
        description="Connect to the broker with TLS, trusting this CA (PEM) for the broker's certificate; its "
        "host name is checked against mqtt_host. None: plain MQTT (a loopback-only listener on the broker's host).",
    )
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=600)
    mqtt_reconnect_min_s: float = Field(
        default=0.5, gt=0, description="First reconnect delay; doubles per failed attempt."
    )
    mqtt_reconnect_max_s: float = Field(default=30.0, gt=0, description="Cap of the reconnect delay.")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port.")
    log_level: str = "INFO"
    alert_timezone: str = Field(
        default="Asia/Makassar", description="The command centre's time zone (WITA), for routing by time of day."
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60, description="One webhook attempt's time limit.")
    webhook_attempts: int = Field(default=5, ge=1, le=20, description="Attempts before a delivery is dead-lettered.")
    webhook_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay; doubles each attempt.")
    session_hours: float = Field(default=12, gt=0, le=24 * 30, description="How long a console sign-in lasts.")
    cookie_secure: bool = Field(
        default=False,
        description="Send the session cookie over HTTPS only: set it when the console is served through TLS.",
    )
    login_per_minute_per_client: int = Field(
        default=20, ge=1, description="Sign-in attempts one address may make per minute."
    )
    login_failures_per_user: int = Field(
        default=5, ge=1, description="Wrong passwords for one username per 15 minutes before it is held."
    )
    health_raw_hours: float = Field(
        default=48.0, gt=0, le=24 * 365, description="Health history: keep every sample for this long."
    )
    health_five_minute_days: float = Field(
        default=30.0, gt=0, le=3650, description="Then 5-minute buckets for this long; hourly buckets after that."
    )
    health_compact_interval_s: float = Field(
        default=600.0, ge=0, description="How often this replica folds aged health samples (0: never; use the CLI)."
    )
    alert_poll_s: float = Field(
        default=1.0, gt=0, le=60,
        description="Live alert streams look for alerts stored by other replicas this often (PostgreSQL also "
        "wakes them at once with LISTEN/NOTIFY; this is the fallback).",
    )  # fmt: skip
    # Enrolment (issue 6): the broker a new box is sent to, and the admin account that makes its account.
    dynsec_username: str = Field(default="polewatch-admin", description="The broker's dynamic-security admin.")
    dynsec_password: SecretStr | None = Field(
        default=None,
        description="Without it the server cannot enrol, revoke or replace boxes (POLEWATCH_DYNSEC_PASSWORD).",
    )
    dynsec_host: str | None = Field(default=None, description="Where the admin connects; default: mqtt_host.")
    dynsec_port: int | None = Field(default=None, ge=1, le=65535, description="Default: mqtt_port.")
    enrolment_broker_host: str | None = Field(
        default=None, description="The broker's host as boxes reach it (the name in its TLS certificate)."
    )
    enrolment_broker_port: int = Field(default=8883, ge=1, le=65535)
    enrolment_broker_tls: bool = True
    enrolment_ca_file: str | None = Field(
        default=None, description="CA certificate boxes must trust for the broker; sent in the grant."
    )
    enrolment_ca_key_file: str | None = Field(
        default=None, description="That CA's key: with it, each box's CSR is signed into a client certificate."
    )
    enrolment_public_url: str | None = Field(
        default=None, description="This server's URL as boxes reach it; default: the URL the box used."
    )
    enrolment_broker_cert_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="The broker's certificate listener: with it (and the CA key), boxes log in with their "
        "client certificate instead of a password.",
    )  # fmt: skip
    enrolment_per_minute_per_client: int = Field(default=10, ge=1, description="Enrolment attempts per address.")
    signing_key_file: str | None = Field(
        default=None,
        description="The fleet's command-signing key (Ed25519, PEM, mode 0600), made on first use; its public "
        "half goes to each box at enrolment. Default: beside the SQLite database, else var/command-signing-key.pem.",
    )

    # Credential rotation (credential_rotation.py).
    rotation_lifetime_hours: float = Field(
        default=24 * 7, gt=0, le=24 * 90,
        description="How long a box has to take a new credential; after that the rotation expires, the new "
        "credential is withdrawn and the old one stays.",
    )  # fmt: skip
    rotation_check_s: float = Field(default=5.0, gt=0, description="How often rotations' acks are looked for.")
    broker_crl_file: str | None = Field(
        default=None, description="The broker's crl.pem (on a shared path): a rotated box's old certificate is "
        "listed there once the box acks its new one. Without it, the server says which serial to list.",
    )  # fmt: skip
    broker_reload_command: str | None = Field(
        default=None, description="Run after the CRL changed, so the broker re-reads it (e.g. "
        "'systemctl reload mosquitto').",
    )  # fmt: skip

    @model_validator(mode="after")
    def _health_tiers(self) -> Settings:
        HealthPolicy(self.health_raw_hours, self.health_five_minute_days)  # raises on tiers out of order
        return self

    def health_policy(self) -> HealthPolicy:
        return HealthPolicy(self.health_raw_hours, self.health_five_minute_days)

    def mqtt_password_value(self) -> str | None:
        return self.mqtt_password.get_secret_value() if self.mqtt_password is not None else None

    def mqtt_tls_context(self) -> ssl.SSLContext | None:
        """For every connection the server makes to the broker: ingest, downlink and the admin account.

        Raises ssl.SSLError when the file is not a PEM certificate."""
        if self.mqtt_ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.mqtt_ca_file))

    def console_url(self, port: int | None = None) -> str:
        """The URL an operator opens; a wildcard bind address is shown as loopback."""
        host = self.http_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port if port is not None else self.http_port}/"
