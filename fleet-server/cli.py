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
from pathlib import Path
from typing import Annotated

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
    http_host: Annotated[
        str, typer.Option(envvar="POLEWATCH_HTTP_HOST", help="Address to serve the API and console on.")
    ] = _DEFAULTS.http_host,
    http_port: Annotated[
        int,
        typer.Option(envvar="POLEWATCH_HTTP_PORT", help="Port for the API and console (0: any free port)."),
    ] = _DEFAULTS.http_port,
    log_level: Annotated[str, typer.Option(envvar="POLEWATCH_LOG_LEVEL", help="DEBUG, INFO, WARNING...")] = "INFO",
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
            http_host=http_host,
            http_port=http_port,
            log_level=log_level,
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


if __name__ == "__main__":
    app()
