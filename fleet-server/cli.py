"""`polewatch server ...`: run the fleet server, migrate its database, set up its broker.

Every flag mirrors a field of Settings and can also come from a POLEWATCH_* environment variable,
so a systemd unit or a container sets the environment and runs `polewatch server run`; the MQTT
password in particular belongs in POLEWATCH_MQTT_PASSWORD (flags show up in `ps`).

The heavy imports (FastAPI, uvicorn, SQLAlchemy, aiomqtt) happen inside the commands, so mounting
this Typer app in the main CLI costs nothing on a box that only runs the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .settings import Settings

app = typer.Typer(
    help="Fleet server: MQTT ingest, REST API and the operators' live console, in one process.",
    no_args_is_help=True,
)

_DEFAULTS = Settings()

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="POLEWATCH_DATABASE_URL",
        help="SQLAlchemy URL: sqlite:///path/to/file.sqlite3 or postgresql+psycopg://user@host/db",
    ),
]

HealthRawHours = Annotated[
    float,
    typer.Option(envvar="POLEWATCH_HEALTH_RAW_HOURS", help="Health history: keep every sample for this many hours."),
]
HealthFiveMinuteDays = Annotated[
    float,
    typer.Option(
        envvar="POLEWATCH_HEALTH_FIVE_MINUTE_DAYS",
        help="Then 5-minute min/max/average buckets for this many days; hourly buckets after that.",
    ),
]


@app.command()
def run(
    database_url: DatabaseUrl = _DEFAULTS.database_url,
    mqtt_host: Annotated[str, typer.Option(envvar="POLEWATCH_MQTT_HOST", help="Broker host.")] = _DEFAULTS.mqtt_host,
    mqtt_port: Annotated[int, typer.Option(envvar="POLEWATCH_MQTT_PORT", help="Broker port.")] = _DEFAULTS.mqtt_port,
    mqtt_username: Annotated[
        str,
        typer.Option(envvar="POLEWATCH_MQTT_USERNAME", help="Broker account of the server ('' for none)."),
    ] = _DEFAULTS.mqtt_username or "",
    mqtt_password: Annotated[
        str | None,
        typer.Option(envvar="POLEWATCH_MQTT_PASSWORD", help="Broker password; prefer the environment variable."),
    ] = None,
    mqtt_ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="POLEWATCH_MQTT_CA_FILE",
            help="Connect to the broker with TLS, verifying its certificate against this CA (PEM; broker-setup's "
            "ca.crt). Without it: plain MQTT, for a loopback-only listener.",
        ),
    ] = None,
    mqtt_client_id: Annotated[
        str,
        typer.Option(
            envvar="POLEWATCH_MQTT_CLIENT_ID",
            help="Fixed per replica: the broker keeps this id's session and queued messages.",
        ),
    ] = _DEFAULTS.mqtt_client_id,
    mqtt_shared_group: Annotated[
        str,
        typer.Option(
            envvar="POLEWATCH_MQTT_SHARED_GROUP",
            help="Run replicas: the MQTT shared-subscription group ($share/<group>/...) so each message "
            "goes to one replica. Mosquitto has shared subscriptions; the embedded amqtt broker does "
            "not ('' for a plain subscription, the default).",
        ),
    ] = "",
    http_host: Annotated[
        str, typer.Option(envvar="POLEWATCH_HTTP_HOST", help="Address to serve the API and console on.")
    ] = _DEFAULTS.http_host,
    http_port: Annotated[
        int,
        typer.Option(envvar="POLEWATCH_HTTP_PORT", help="Port for the API and console (0: any free port)."),
    ] = _DEFAULTS.http_port,
    log_level: Annotated[str, typer.Option(envvar="POLEWATCH_LOG_LEVEL", help="DEBUG, INFO, WARNING...")] = "INFO",
    session_hours: Annotated[
        float, typer.Option(envvar="POLEWATCH_SESSION_HOURS", help="How long a console sign-in lasts.")
    ] = _DEFAULTS.session_hours,
    cookie_secure: Annotated[
        bool,
        typer.Option(
            envvar="POLEWATCH_COOKIE_SECURE",
            help="Send the session cookie over HTTPS only: set it when a TLS proxy serves the console.",
        ),
    ] = _DEFAULTS.cookie_secure,
    health_raw_hours: HealthRawHours = _DEFAULTS.health_raw_hours,
    health_five_minute_days: HealthFiveMinuteDays = _DEFAULTS.health_five_minute_days,
    health_compact_interval: Annotated[
        float,
        typer.Option(
            envvar="POLEWATCH_HEALTH_COMPACT_INTERVAL",
            help="Seconds between health-history compactions by this replica (0: never; run compact-health).",
        ),
    ] = _DEFAULTS.health_compact_interval_s,
    dynsec_username: Annotated[
        str, typer.Option(envvar="POLEWATCH_DYNSEC_USERNAME", help="Enrolment: the broker's dynamic-security admin.")
    ] = _DEFAULTS.dynsec_username,
    dynsec_password: Annotated[
        str | None,
        typer.Option(
            envvar="POLEWATCH_DYNSEC_PASSWORD",
            help="Its password (from broker-setup's fleet-server.env); without it boxes cannot be enrolled or "
            "revoked. Prefer the environment variable.",
        ),
    ] = None,
    dynsec_host: Annotated[
        str | None,
        typer.Option(envvar="POLEWATCH_DYNSEC_HOST", help="Where the admin connects (default: --mqtt-host)."),
    ] = None,
    dynsec_port: Annotated[
        int | None, typer.Option(envvar="POLEWATCH_DYNSEC_PORT", help="Its port (default: --mqtt-port).")
    ] = None,
    enrolment_broker_host: Annotated[
        str | None,
        typer.Option(envvar="POLEWATCH_ENROLMENT_BROKER_HOST", help="The broker's host as boxes reach it (TLS name)."),
    ] = None,
    enrolment_broker_port: Annotated[
        int, typer.Option(envvar="POLEWATCH_ENROLMENT_BROKER_PORT", help="The broker's TLS port for boxes.")
    ] = _DEFAULTS.enrolment_broker_port,
    enrolment_ca_file: Annotated[
        str | None,
        typer.Option(envvar="POLEWATCH_ENROLMENT_CA_FILE", help="CA certificate boxes trust for the broker."),
    ] = None,
    enrolment_ca_key_file: Annotated[
        str | None,
        typer.Option(
            envvar="POLEWATCH_ENROLMENT_CA_KEY_FILE", help="That CA's key: sign each box's client certificate."
        ),
    ] = None,
    enrolment_public_url: Annotated[
        str | None,
        typer.Option(envvar="POLEWATCH_ENROLMENT_PUBLIC_URL", help="This server's URL as boxes reach it."),
    ] = None,
    enrolment_broker_cert_port: Annotated[
        int | None,
        typer.Option(
            envvar="POLEWATCH_ENROLMENT_BROKER_CERT_PORT",
            help="The broker's certificate listener: boxes then log in with their client certificate.",
        ),
    ] = None,
    broker_crl_file: Annotated[
        str | None,
        typer.Option(
            envvar="POLEWATCH_BROKER_CRL_FILE",
            help="The broker's crl.pem: a rotated box's old certificate is listed there once it acks the new one.",
        ),
    ] = None,
    broker_reload_command: Annotated[
        str | None,
        typer.Option(
            envvar="POLEWATCH_BROKER_RELOAD_COMMAND",
            help="Run after the CRL changed so the broker re-reads it, e.g. 'systemctl reload mosquitto'.",
        ),
    ] = None,
    rotation_lifetime_hours: Annotated[
        float,
        typer.Option(
            envvar="POLEWATCH_ROTATION_LIFETIME_HOURS",
            help="How long a box has to take a new credential before the rotation expires (it keeps the old).",
        ),
    ] = _DEFAULTS.rotation_lifetime_hours,
) -> None:
    """Serve the REST API and the console, and ingest MQTT, until Ctrl-C or SIGTERM."""
    from pydantic import SecretStr, ValidationError

    from . import startup_heap
    from .app import serve
    from .logs import setup_logging

    try:
        settings = Settings(
            database_url=database_url,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_username=mqtt_username or None,
            mqtt_password=SecretStr(mqtt_password) if mqtt_password else None,
            mqtt_ca_file=mqtt_ca_file,
            mqtt_client_id=mqtt_client_id,
            mqtt_shared_group=mqtt_shared_group or None,
            http_host=http_host,
            http_port=http_port,
            log_level=log_level,
            session_hours=session_hours,
            cookie_secure=cookie_secure,
            health_raw_hours=health_raw_hours,
            health_five_minute_days=health_five_minute_days,
            health_compact_interval_s=health_compact_interval,
            dynsec_username=dynsec_username,
            dynsec_password=SecretStr(dynsec_password) if dynsec_password else None,
            dynsec_host=dynsec_host,
            dynsec_port=dynsec_port,
            enrolment_broker_host=enrolment_broker_host,
            enrolment_broker_port=enrolment_broker_port,
            enrolment_ca_file=enrolment_ca_file,
            enrolment_ca_key_file=enrolment_ca_key_file,
            enrolment_broker_cert_port=enrolment_broker_cert_port,
            enrolment_public_url=enrolment_public_url,
            broker_crl_file=broker_crl_file,
            broker_reload_command=broker_reload_command,
            rotation_lifetime_hours=rotation_lifetime_hours,
        )
    except ValidationError as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    try:
        settings.mqtt_tls_context()
    except ssl.SSLError as exc:
        typer.echo(
            f"--mqtt-ca-file {mqtt_ca_file}: not a CA certificate in PEM form ({exc.reason or exc}); give the CA "
            "that signed the broker's certificate (broker-setup's ca.crt)",
            err=True,
        )
        raise typer.Exit(2) from None
    setup_logging(settings.log_level)

    def ready(url: str) -> None:
        startup_heap.freeze()
        typer.echo(f"Polewatch console: {url}  (API docs: {url}docs)")
        sys.stdout.flush()

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal it caught. Make
    # SIGTERM (systemd, docker stop) end like Ctrl-C, as a KeyboardInterrupt we expect, so both
    # leave with status 0 after the clean shutdown instead of dying by the signal.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, on_ready=ready))
    typer.echo("Polewatch fleet server stopped.")


@app.command()
def migrate(
    database_url: DatabaseUrl = _DEFAULTS.database_url,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create or upgrade the database schema (the server also does this at every start)."""
    from .db import current_revision, make_engine, safe_url, upgrade
    from .logs import setup_logging

    setup_logging("INFO")
    engine = make_engine(database_url)
    try:
        before = current_revision(engine)
        upgrade(engine, revision)
        after = current_revision(engine)
    finally:
        engine.dispose()
    state = "already at" if before == after else f"migrated from {before or 'empty'} to"
    typer.echo(f"{safe_url(database_url)}: {state} revision {after}")


@app.command("compact-health")
def compact_health(
    database_url: DatabaseUrl = _DEFAULTS.database_url,
    health_raw_hours: HealthRawHours = _DEFAULTS.health_raw_hours,
    health_five_minute_days: HealthFiveMinuteDays = _DEFAULTS.health_five_minute_days,
) -> None:
    """Fold aged health samples into 5-minute and hourly buckets now (the server also does it every
    --health-compact-interval). Safe beside running replicas: one compaction runs at a time."""
    from rich.console import Console

    from .db import make_engine, make_sessionmaker, safe_url, upgrade
    from .health_compaction import Report, compact
    from .health_rollup import Policy
    from .logs import setup_logging

    try:
        policy = Policy(health_raw_hours, health_five_minute_days)
    except ValueError as exc:
        typer.echo(f"compact-health: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging("WARNING")
    console = Console(stderr=True)
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with console.status("compacting health history...") as status:

            def progress(report: Report) -> None:
                status.update(
                    f"compacting health history: {report.raw_folded} raw samples and "
                    f"{report.five_minute_folded} 5-minute buckets folded"
                )

            report = compact(make_sessionmaker(engine), policy, holder=f"cli:{_cli_actor().name}", progress=progress)
    finally:
        engine.dispose()
    typer.echo(
        f"{safe_url(database_url)}: folded {report.raw_folded} raw samples into {report.five_minute_written} "
        f"5-minute buckets and {report.five_minute_folded} 5-minute buckets into {report.hourly_written} hourly ones"
    )


@app.command("broker-setup")
def broker_setup_command(
    directory: Annotated[Path, typer.Argument(help="Where to write the broker's files (kept across re-runs).")],
    host: Annotated[
        list[str],
        typer.Option("--host", help="A name or IP address the boxes use to reach the broker; repeat for more."),
    ],
    tls_port: Annotated[int, typer.Option(help="TLS listener for the boxes (and remote servers).")] = 8883,
    local_port: Annotated[
        int | None, typer.Option(help="Also a plain listener on 127.0.0.1, for a fleet server on the same host.")
    ] = None,
    require_certificate: Annotated[
        bool, typer.Option(help="Boxes must also present a client certificate from this CA (mutual TLS).")
    ] = False,
    cert_port: Annotated[
        int | None,
        typer.Option(help="Also a listener where boxes log in with their client certificate alone (e.g. 8884)."),
    ] = None,
    plugin: Annotated[
        Path | None, typer.Option(help="Path of mosquitto_dynamic_security.so (found automatically on Debian).")
    ] = None,
) -> None:
    """Write Mosquitto's configuration: TLS with a new CA, dynamic security, the server's accounts.

    Safe to re-run: the CA and the passwords are kept, the broker certificate is re-issued only when
    the host names change.
    """
    from .broker_access.setup import broker_setup

    try:
        files = broker_setup(
            directory,
            hosts=host,
            tls_port=tls_port,
            local_port=local_port,
            require_certificate=require_certificate,
            cert_port=cert_port,
            plugin=plugin,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        typer.echo(f"broker-setup: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Broker files in {files.directory}:")
    typer.echo(f"  start the broker:   mosquitto -c {files.conf}")
    typer.echo(f"  boxes trust:        {files.ca_file}  (copied to each box at enrolment)")
    if files.cert_port is not None:
        typer.echo(f"  certificate login:  port {files.cert_port}; revoked certificates in {files.crl_file} "
                   "(reload the broker when it changes: systemctl reload mosquitto)")  # fmt: skip
    typer.echo(f"  server secrets:     {files.env_file}  (mode 0600; load it into the server's environment)")


@app.command("revoke-certificate")
def revoke_certificate_command(
    directory: Annotated[Path, typer.Argument(help="The broker's directory (from broker-setup): its CA and crl.pem.")],
    certificate: Annotated[
        list[str],
        typer.Argument(help="Hex serial (the device.enrol audit entry's certificate_serial) or certificate file."),
    ],
) -> None:
    """Put box certificates on the broker's CRL, so its certificate listener refuses them at the handshake.

    Revoking the device (POST /api/registry/devices/{id}/revoke) already cuts the box off and takes
    every right away at once; the CRL makes its certificate fail before MQTT. Reload the broker after
    (systemctl reload mosquitto) to have it read the list.
    """
    from .broker_access import pki

    crl_file = directory / "crl.pem"
    try:
        serials = [pki.certificate_serial(text) for text in certificate]
        ca = pki.CertificateAuthority.load(directory / "ca.crt", directory / "ca.key")
        listed = pki.revoked_serials(crl_file)
    except (OSError, ValueError) as exc:
        typer.echo(f"revoke-certificate: {exc}", err=True)
        raise typer.Exit(2) from None
    pki.write_revocation_list(crl_file, ca, listed + serials)
    typer.echo(f"{crl_file}: {len(set(listed + serials))} revoked certificate(s); now reload the broker "
               "(systemctl reload mosquitto, or kill -HUP its pid)")  # fmt: skip


SigningKeyFile = Annotated[
    str | None,
    typer.Option(envvar="POLEWATCH_SIGNING_KEY_FILE",
                 help="The fleet's command-signing key (made 0600 on first use; default: beside a SQLite database)."),
]  # fmt: skip


@app.command("signing-key")
def signing_key_command(
    database_url: DatabaseUrl = _DEFAULTS.database_url,
    signing_key_file: SigningKeyFile = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Also write the public key here.")] = None,
) -> None:
    """Make the fleet's command-signing key if there is none, and print its public half and key id."""
    from .signing_key import key_path, public_key_pem

    settings = Settings(database_url=database_url, signing_key_file=signing_key_file)
    try:
        pem, kid = public_key_pem(settings)
    except (OSError, ValueError) as exc:
        typer.echo(f"signing-key: {exc}", err=True)
        raise typer.Exit(2) from None
    if output is not None:
        output.write_text(pem)
    typer.echo(f"key {kid} in {key_path(settings)} (private, 0600; back it up with the database)")
    typer.echo(pem, nl=False)


@app.command("move-fleet")
def move_fleet_command(
    mqtt_host: Annotated[str, typer.Option(help="The NEW broker's host as boxes reach it (its TLS name).")],
    mqtt_port: Annotated[int, typer.Option(help="The new broker's port.")] = 8883,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA certificate of the new broker (default: boxes keep the CA they trust).")
    ] = None,
    tls: Annotated[bool, typer.Option(help="--no-tls: plain MQTT to the new broker (private networks only).")] = True,
    server_url: Annotated[str | None, typer.Option(help="The new server's HTTP URL, recorded by each box.")] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Only this box (repeatable); default: the whole fleet.")
    ] = None,
    valid_days: Annotated[float, typer.Option(help="Boxes refuse the directive after this many days.")] = 30,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the boxes' answers before printing.")] = 0,
    database_url: DatabaseUrl = _DEFAULTS.database_url,
    signing_key_file: SigningKeyFile = None,
    broker_host: Annotated[
        str, typer.Option(envvar="POLEWATCH_MQTT_HOST", help="The broker this server publishes to now (the OLD one).")
    ] = _DEFAULTS.mqtt_host,
    broker_port: Annotated[int, typer.Option(envvar="POLEWATCH_MQTT_PORT", help="Its port.")] = _DEFAULTS.mqtt_port,
    broker_username: Annotated[
        str, typer.Option(envvar="POLEWATCH_MQTT_USERNAME", help="The server's broker account.")
    ] = _DEFAULTS.mqtt_username or "",
    broker_password: Annotated[
        str | None, typer.Option(envvar="POLEWATCH_MQTT_PASSWORD", help="Its password; prefer the environment.")
    ] = None,
) -> None:
    """Re-point the fleet to another broker: a signed directive, retained on every box's down branch.

    Boxes online now answer at once (on this broker) and move; boxes that are off get it when they
    come back. Each box's answer arrives through the running server's ingest: `--wait` polls the
    database for them, and GET /api/fleet/moves/<serial> shows them later.
    """
    import time

    from pydantic import SecretStr, ValidationError
    from rich.console import Console
    from rich.table import Table

    from . import fleet_move
    from .db import make_engine, make_sessionmaker, upgrade
    from .downlink import PublishError, publish

    try:
        ca_pem = ca_file.read_text() if ca_file is not None else None
        body = fleet_move.MoveIn(mqtt_host=mqtt_host, mqtt_port=mqtt_port, tls=tls, ca_pem=ca_pem,
                                 server_url=server_url, devices=device, valid_for_s=int(valid_days * 86400))
        settings = Settings(database_url=database_url, signing_key_file=signing_key_file, mqtt_host=broker_host,
                            mqtt_port=broker_port, mqtt_username=broker_username or None,
                            mqtt_password=SecretStr(broker_password) if broker_password else None)  # fmt: skip
    except (OSError, ValidationError) as exc:
        typer.echo(f"move-fleet: {exc}", err=True)
        raise typer.Exit(2) from None
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        try:
            with sessions.begin() as session:
                serial, outgoing = fleet_move.prepare(session, settings, _cli_actor(), body)
        except fleet_move.MoveError as exc:
            typer.echo(f"move-fleet: {exc.detail}", err=True)
            raise typer.Exit(1) from None
        error = None
        try:
            asyncio.run(publish(settings, outgoing))
        except PublishError as exc:
            error = str(exc)
        with sessions.begin() as session:
            fleet_move.mark_published(session, serial, error)
        deadline = time.monotonic() + wait
        while True:
            with sessions() as session:
                result = fleet_move.status(session, serial)
            assert result is not None
            if time.monotonic() >= deadline or all(d.acked_at for d in result.devices):
                break
            time.sleep(0.5)
    finally:
        engine.dispose()
    table = Table(title=f"move {serial} to {result.mqtt} (key {result.key_id}, target {result.target})")
    for column in ("device", "published", "answer", "reason"):
        table.add_column(column)
    for d in result.devices:
        table.add_row(d.device_id, "yes" if d.published_at else f"NO: {d.publish_error}",
                      d.status if d.acked_at else "not yet", d.reason or "")  # fmt: skip
    Console().print(table)
    if error:
        typer.echo(f"move-fleet: not published ({error}); the move is recorded: issue it again when the broker "
                   "is back", err=True)  # fmt: skip
        raise typer.Exit(1)


@app.command("rotate-credentials")
def rotate_credentials_command(
    device: Annotated[str, typer.Argument(help="The device id (box-...).")],
    server: Annotated[
        str, typer.Option(envvar="POLEWATCH_SERVER_URL", help="The fleet server's URL.")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str, typer.Option(envvar="POLEWATCH_TOKEN", help="An ops or admin API token (polewatch server token add).")
    ] = "",
) -> None:
    """Rotate a box's broker credential through the running server (which holds the broker's admin account
    and the CA): the box gets a new password (sealed to its key) or certificate, and the old one is retired
    only once the box acks from the new one. Follow it with GET /api/devices/DEVICE/credentials."""
    import httpx

    if not token:
        typer.echo("rotate-credentials: give an ops token with --token or POLEWATCH_TOKEN", err=True)
        raise typer.Exit(2)
    url = f"{server.rstrip('/')}/api/devices/{device}/credentials/rotate"
    try:
        response = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    except httpx.HTTPError as exc:
        typer.echo(f"rotate-credentials: cannot reach {server}: {exc}", err=True)
        raise typer.Exit(1) from None
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 202:
        typer.echo(f"rotate-credentials: {device}: {body.get('detail') or response.text} "
                   f"(HTTP {response.status_code})", err=True)  # fmt: skip
        raise typer.Exit(1)
    new = body.get("new_login") or f"certificate {body.get('new_serial')}"
    typer.echo(
        f"{device}: {body['kind']} rotation {body['id']} pending (command {body['command_id']}); new credential: "
        f"{new}. The old one keeps working until the box acks from the new one, at the latest until "
        f"{body['expires_at']}."
    )


user_app = typer.Typer(help="People who sign in to the console and the API.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for machines and scripts.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")

RoleOption = Annotated[
    str,
    typer.Option(help="admin (people), ops (fleet), technician (their sites), operator (alerts), viewer (read-only)."),
]
SiteOption = Annotated[list[str] | None, typer.Option("--site", help="A site the technician works on (repeatable).")]


def _cli_actor() -> Any:
    import getpass

    from .audit import Actor

    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor(f"cli:{who}", None, None)


def _people_change(database_url: str, change: Callable[[Any], Any]) -> Any:
    """Migrate, then run `change` in one transaction; a refused change exits 1 with the reason."""
    from .db import make_engine, make_sessionmaker, upgrade
    from .people import PeopleError

    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with make_sessionmaker(engine).begin() as session:
            return change(session)
    except PeopleError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="The sign-in name.")],
    role: RoleOption = "viewer",
    database_url: DatabaseUrl = _DEFAULTS.database_url,
    display_name: Annotated[str | None, typer.Option(help="The name the console shows.")] = None,
    site: SiteOption = None,
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from standard input instead of asking (for scripts).")
    ] = False,
) -> None:
    """Add a person (e.g. the first admin: `polewatch server user add alice --role admin`)."""
    from .people import create_user
    from .roles import ROLES

    if role not in ROLES:
        typer.echo(f"error: unknown role {role!r}: one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    actor = _cli_actor()

    def change(session: Any) -> str:
        user = create_user(
            session, actor, username=username, password=password, role=role, display_name=display_name, sites=site
        )
        return f"added {user.role} {user.username!r} (id {user.id})"

    typer.echo(_people_change(database_url, change))


@token_app.command("add")
def token_add(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. 'grafana'.")],
    role: RoleOption = "viewer",
    database_url: DatabaseUrl = _DEFAULTS.database_url,
    site: SiteOption = None,
) -> None:
    """Make an API token and print its secret (shown this once; send it as 'Authorization: Bearer ...')."""
    from .people import create_token
    from .roles import ROLES

    if role not in ROLES:
        typer.echo(f"error: unknown role {role!r}: one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    actor = _cli_actor()
    typer.echo(_people_change(database_url, lambda s: create_token(s, actor, name=name, role=role, sites=site)[1]))


if __name__ == "__main__":
    app()
