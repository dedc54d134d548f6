"""Fixtures that start the real parts the tests need."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import brokers
from support.brokers import BrokerProcess

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real broker of each kind, on a random loopback port, with the accounts in brokers.USERS."""
    if request.param == "amqtt":
        pytest.importorskip("amqtt", reason="the embedded broker needs the demo extra")
    handle = brokers.start(request.param, tmp_path / request.param)
    yield handle
    handle.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    handle = brokers.mosquitto(tmp_path / "mosquitto")
    yield handle
    handle.stop()


@pytest.fixture
def two_brokers(tmp_path: Path) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    """Two Mosquittos: the command centre a fleet leaves and the one it moves to."""
    a = brokers.mosquitto(tmp_path / "broker-a")
    try:
        b = brokers.mosquitto(tmp_path / "broker-b")
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(params=["mosquitto", "amqtt"])
def tls_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of each kind whose only listener speaks TLS, with a CA and certificate from the
    project's PKI: for tests of the whole stack, which should connect the way production does."""
    if request.param == "amqtt":
        pytest.importorskip("amqtt", reason="the embedded broker needs the demo extra")
    handle = brokers.start(request.param, tmp_path / request.param, tls=brokers.project_tls(tmp_path))
    yield handle
    handle.stop()


@pytest.fixture
def tls_mosquitto_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    handle = brokers.mosquitto(tmp_path / "mosquitto", tls=brokers.project_tls(tmp_path))
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repository: the reference models and the full footage."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: this test needs the shared reference models and footage")
    return SHARED
