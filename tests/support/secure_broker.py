"""Mosquitto set up the way production is: TLS, dynamic security, the log on a topic.

The files come from the project's own `broker_setup` (what `polewatch server broker-setup` writes), so
the tests exercise the configuration a city would run, not a test-only one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from polewatch.fleet_server.broker_access.broker_log import BrokerLogReader, SecurityEvent
from polewatch.fleet_server.broker_access.mosquitto_files import PLUGIN_CANDIDATES
from polewatch.fleet_server.broker_access.policy import BROKER_LOG_TOPIC
from polewatch.fleet_server.broker_access.setup import BrokerFiles, broker_setup
from polewatch.protocol import topics

from .brokers import BrokerProcess
from .ports import free_port, wait_for_port
from .required import require_binary, require_file


@dataclass
class SecureBroker:
    process: BrokerProcess
    files: BrokerFiles

    @property
    def tls_port(self) -> int:
        return self.files.tls_port

    @property
    def local_port(self) -> int:
        assert self.files.local_port is not None
        return self.files.local_port

    @property
    def cert_port(self) -> int:
        assert self.files.cert_port is not None, "start the broker with cert_port=True"
        return self.files.cert_port

    def tls_context(self, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.files.ca_file))
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file or cert_file))
        return context

    def reload(self) -> None:
        """SIGHUP, what `systemctl reload mosquitto` sends: the broker re-reads its CRL."""
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.stop()


def start_secure_mosquitto(
    workdir: Path, *, require_certificate: bool = False, cert_port: bool = False
) -> SecureBroker:
    binary = require_binary(
        "mosquitto", "install Debian's package (apt-get install mosquitto)", candidates=("/usr/sbin/mosquitto",)
    )
    plugin = require_file(PLUGIN_CANDIDATES, "Mosquitto's dynamic-security plugin comes with mosquitto >= 2.0")
    files = broker_setup(
        workdir,
        hosts=["127.0.0.1", "localhost"],
        tls_port=free_port(),
        local_port=free_port(),
        require_certificate=require_certificate,
        cert_port=free_port() if cert_port else None,
        plugin=Path(plugin),
    )
    process = BrokerProcess(
        kind="mosquitto", workdir=workdir, port=files.tls_port, command=[binary, "-c", str(files.conf)]
    )
    process.start()
    assert files.local_port is not None
    wait_for_port(files.local_port, timeout=20)
    if files.cert_port is not None:
        wait_for_port(files.cert_port, timeout=20)
    return SecureBroker(process, files)


async def read_until_cut_off(client: aiomqtt.Client) -> None:
    """Read a box's messages until the broker disconnects it (then aiomqtt raises MqttError)."""
    async for _ in client.messages:
        pass


class ServerWatch:
    """The fleet server's view of a secured broker: every up branch, and the broker's log read into
    security events (what the server shows an operator about refused boxes)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, bytes]] = []
        self.events: list[SecurityEvent] = []
        self._reader = BrokerLogReader()

    async def run(self) -> None:
        async for message in self.client.messages:
            topic, payload = str(message.topic), bytes(message.payload or b"")
            if topic.startswith("$SYS/broker/log/"):
                event = self._reader.feed(topic, payload.decode(errors="replace"))
                if event is not None:
                    self.events.append(event)
            else:
                self.messages.append((topic, payload))

    async def wait_for(self, what: str, check: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events={self.events} messages={self.messages}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def server_watch(secure: SecureBroker) -> AsyncIterator[ServerWatch]:
    """Connected with the server's own account on the loopback listener, reading in the background."""
    files = secure.files
    async with aiomqtt.Client(
        "127.0.0.1", secure.local_port, username=files.server.username, password=files.server.password,
        identifier="polewatch-fleet-server-1",
    ) as client:  # fmt: skip
        await client.subscribe(topics.all_up(), qos=1)
        await client.subscribe(BROKER_LOG_TOPIC, qos=0)
        watch = ServerWatch(client)
        task = asyncio.create_task(watch.run())
        try:
            yield watch
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def subscription_refused(granted: object) -> bool:
    """True when the broker refused every topic of a SUBACK (reason code 0x80)."""
    values = [getattr(g, "value", g) for g in granted]  # type: ignore[attr-defined]
    return all(v == 0x80 for v in values)
