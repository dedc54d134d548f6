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
) -> None:
    """Serve the REST API and the console, and ingest MQTT, until Ctrl-C or SIGTERM."""
    from pydantic import SecretStr, ValidationError

    from .app import serve
    from .logs import setup_logging

    try:
        settings = Settings(
            database_url=database_url,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_username=mqtt_username or None,
            mqtt_password=SecretStr(mqtt_password) if mqtt_password else None,
            mqtt_client_id=mqtt_client_id,
            mqtt_shared_group=mqtt_shared_group or None,
            http_host=http_host,
            http_port=http_port,
            log_level=log_level,
            session_hours=session_hours,
            cookie_secure=cookie_secure,
            dynsec_username=dynsec_username,
            dynsec_password=SecretStr(dynsec_password) if dynsec_password else None,
            dynsec_host=dynsec_host,
            dynsec_port=dynsec_port,
            enrolment_broker_host=enrolment_broker_host,
            enrolment_broker_port=enrolment_broker_port,
            enrolment_ca_file=enrolment_ca_file,
            enrolment_ca_key_file=enrolment_ca_key_file,
            enrolment_public_url=enrolment_public_url,
        )
    except ValidationError as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level)

    def ready(url: str) -> None:
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
            directory, hosts=host, tls_port=tls_port, local_port=local_port,
            require_certificate=require_certificate, plugin=plugin,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        typer.echo(f"broker-setup: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Broker files in {files.directory}:")
    typer.echo(f"  start the broker:   mosquitto -c {files.conf}")
    typer.echo(f"  boxes trust:        {files.ca_file}  (copied to each box at enrolment)")
    typer.echo(f"  server secrets:     {files.env_file}  (mode 0600; load it into the server's environment)")


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
