"""An MQTT broker that needs no system package, for the demo and the tests' second broker.

amqtt is pure Python and speaks MQTT 3.1.1 only; it is far too slow for a city fleet, so production
runs Mosquitto (see README). It keeps queued QoS 1 messages of a persistent session only for
clients that authenticated, so this wrapper always turns on password-file authentication.

With `--tls-cert-file`/`--tls-key-file` its one listener speaks TLS only (the demo's: a CA and broker
certificate from the project's own PKI, see `polewatch.demo`); without them it speaks plain MQTT, which
the tests' unit-level agent and ingest checks use on loopback.

Run as its own process (`python -m polewatch.embedded_broker`) so that the demo and the tests can
kill and restart it like a real broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """Write an amqtt password file (argon2 hashes) for `users` (name -> password)."""
    hasher = PasswordHash((Argon2Hasher(),))
    lines = [f"{name}:{hasher.hash(password)}" for name, password in users.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)


@dataclass(frozen=True)
class ListenerTls:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # verifies a client certificate when one is presented


def listener_config(host: str, port: int) -> dict[str, object]:
    """An "external" listener: amqtt registers it but opens no socket; `serve` opens it (see there)."""
    return {"type": "external", "bind": f"{host}:{port}"}


def server_tls(tls: ListenerTls) -> ssl.SSLContext:
    """What amqtt itself makes for a TLS listener: the broker's certificate, client certificates
    verified against the CA when presented."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


async def serve(host: str, port: int, password_file: Path, sessions_db: Path, tls: ListenerTls | None = None) -> None:
    from amqtt.broker import Broker  # imported here: amqtt is only in the demo extra

    config = {
        "listeners": {"default": listener_config(host, port)},
        "plugins": {
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)},
            # Sessions and subscriptions survive a crash of the broker. Without this a restarted
            # broker has forgotten the server's subscription, and whatever a pole replays before the
            # server has re-subscribed is acknowledged and then dropped: lost.
            "amqtt.contrib.persistence.SessionDBPlugin": {
                "connection": f"sqlite+aiosqlite:///{sessions_db}",
                "clear_on_shutdown": False,
            },
        },
    }
    broker = Broker(config)
    await broker.start()
    # The port opens only now. amqtt opens its own listeners before the session plugin restores the
    # saved sessions; a client (the fleet server retries the moment the port answers) that connected
    # in between got a new session while its restored subscription stayed on the restored, offline
    # one: "already subscribed", and every message for it queued there, never delivered.
    server = await asyncio.start_server(
        functools.partial(broker.stream_connected, listener_name="default"), host, port, reuse_address=True,
        ssl=server_tls(tls) if tls is not None else None,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"embedded broker listening on {host}:{port} ({'TLS' if tls else 'plain MQTT'})", flush=True)
    await stop.wait()
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(broker.shutdown(), timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument(
        "--sessions-db", type=Path, help="SQLite file for persistent sessions (default: beside the password file)"
    )
    parser.add_argument("--tls-cert-file", type=Path, help="The broker's certificate (PEM): the listener speaks TLS")
    parser.add_argument("--tls-key-file", type=Path, help="Its private key (PEM)")
    parser.add_argument("--tls-ca-file", type=Path, help="CA that verifies client certificates, when presented")
    args = parser.parse_args()
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        parser.error("--tls-cert-file and --tls-key-file go together: give both for TLS, neither for plain MQTT")
    tls = ListenerTls(args.tls_cert_file, args.tls_key_file, args.tls_ca_file) if args.tls_cert_file else None
    for given in (args.tls_cert_file, args.tls_key_file, args.tls_ca_file):
        if given is not None and not given.is_file():
            parser.error(f"{given} does not exist: make the broker's TLS files first (polewatch demo does)")
    logging.basicConfig(level=logging.WARNING)
    sessions_db = args.sessions_db or args.password_file.with_name("broker-sessions.sqlite3")
    asyncio.run(serve(args.host, args.port, args.password_file, sessions_db, tls))


if __name__ == "__main__":
    main()
