"""Ingest throughput: messages per second stored by the fleet server, against the raw rate at which
one aiomqtt subscriber receives the same messages from the same Mosquitto, in the same run.

Each round publishes N detection starts (each also raises an alert: the full write path) from a
pole's account at QoS 1 with a window of messages in flight, and times first publish -> last one
received (raw: a plain subscriber counting; stored: the server's ingest, until the N-th row is
committed). Rounds alternate raw and stored on a fresh database each time; medians are reported.
SQLite always; PostgreSQL when its server binaries are on the machine (tests/support/postgres.py).

    python bench/ingest.py [--messages N] [--rounds R] [--window W] [--same-process]

The publisher runs in a child process (the poles are not in the server's process); with
--same-process it shares this one's GIL with the subscriber or ingest being measured.

Goal: stored >= 0.8 x raw on SQLite. The last line is machine-readable:
    RESULT ingest raw_rate=... sqlite_rate=... sqlite_ratio=... sqlite_per_commit=... postgres_rate=...
           postgres_ratio=... postgres_per_commit=...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiomqtt
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from polewatch.fleet_server.models import Event
from polewatch.protocol import encode, topics
from support import brokers, postgres
from support.server import detection, running_ingest, settings_for

GOAL_RATIO = 0.8


async def publish_all(broker: brokers.BrokerProcess, payloads: list[bytes], window: int) -> None:
    """Publish from this process, as pole-a, `window` QoS 1 messages in flight."""
    topic = topics.up("pole-a", "detection")
    async with aiomqtt.Client(
        broker.host, broker.port, username="pole-a", password=brokers.USERS["pole-a"],
        identifier=f"bench-pub-{time.monotonic_ns()}", max_inflight_messages=window, timeout=120,
    ) as client:  # fmt: skip
        # `window` publishes wait for their PUBACK by design: a warning for each would cost both
        # rounds the same CPU for nothing (the agent's uplink sets the same threshold).
        client.pending_calls_threshold = 2 * window + 10
        gate = asyncio.Semaphore(window)

        async def one(payload: bytes) -> None:
            async with gate:
                await client.publish(topic, payload, qos=1)

        await asyncio.gather(*(one(p) for p in payloads))


Go = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def publisher(broker: brokers.BrokerProcess, payloads: list[bytes], window: int, same: bool) -> AsyncIterator[Go]:
    """Yields `go`, which publishes every payload and returns when the publisher is done.

    By default the publisher is a child process that is started, and imports, before `go`: the
    poles are not in the server's process, and in one process the publisher's and the receiver's
    CPU share one GIL, so the measure would be "publish + store" against "publish + count".
    `same`: publish from this process anyway (the bench's first form; see fleet-server/README.md).
    """
    if same:
        yield lambda: publish_all(broker, payloads, window)
        return
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        f.write(b"\n".join(payloads))  # compact JSON: no raw newline inside a payload
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--publish", broker.host, str(broker.port), f.name, str(window),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        if (await child.stdout.readline()).strip() != b"ready":
            raise RuntimeError("the publisher did not start")

        async def go() -> None:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            if await child.wait() != 0:
                raise RuntimeError(f"the publisher failed ({child.returncode})")

        yield go
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        os.unlink(f.name)


async def publish_child(host: str, port: int, path: str, window: int) -> None:
    """The child's side: imports done, say ready, publish on "go"."""
    with open(path, "rb") as f:  # noqa: ASYNC230 - before "ready": nothing is timed yet
        payloads = f.read().split(b"\n")
    broker = brokers.BrokerProcess(kind="mosquitto", workdir=Path(path).parent, port=port, command=[])
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await publish_all(broker, payloads, window)


async def raw_rate(broker: brokers.BrokerProcess, payloads: list[bytes], window: int, same: bool) -> float:
    async with aiomqtt.Client(broker.host, broker.port, username="tester", password=brokers.USERS["tester"],
                              identifier=f"bench-raw-{time.monotonic_ns()}") as sub:  # fmt: skip
        await sub.subscribe(topics.up("pole-a", "detection"), qos=1)
        done = asyncio.Event()
        count = 0

        async def read() -> None:
            nonlocal count
            async for _ in sub.messages:
                count += 1
                if count == len(payloads):
                    done.set()
                    return

        reader = asyncio.create_task(read())
        async with publisher(broker, payloads, window, same) as go:
            start = time.perf_counter()
            await go()
            await asyncio.wait_for(done.wait(), 120)
            elapsed = time.perf_counter() - start
        reader.cancel()
    return len(payloads) / elapsed


async def stored_rate(
    broker: brokers.BrokerProcess, url: str, payloads: list[bytes], window: int, sizes: list[float], same: bool
) -> float:
    """Until the ingest has counted the N-th message, which it does after the commit that stored it.

    Watching the ingest's own counter, not polling count(*) on the table: the poll ran in this
    process every 10 ms and took about a fifth of its CPU under the profiler, slowing the very thing
    it measured (the raw subscriber has no such tax). The rows are counted once at the end.
    """
    settings = settings_for(broker, url, mqtt_client_id=f"bench-{time.monotonic_ns() % 10**9}", mqtt_shared_group=None)
    async with running_ingest(settings) as run:
        stats = run.ingest.stats
        async with publisher(broker, payloads, window, same) as go:
            start = time.perf_counter()
            await go()
            while stats.accepted_by_kind["detection"] < len(payloads):
                if time.perf_counter() - start > 300:
                    raise RuntimeError("the ingest did not store every message within 300 s")
                await asyncio.sleep(0.005)
            rate = len(payloads) / (time.perf_counter() - start)

        def stored() -> int:
            with run.sessions() as s:
                return int(s.scalar(select(func.count()).select_from(Event)) or 0)

        if (rows := await asyncio.to_thread(stored)) != len(payloads):
            raise RuntimeError(f"{rows} events stored, {len(payloads)} sent")
        sizes.append(stats.batched / max(1, stats.batches))
    await forget_session(broker, settings.mqtt_client_id)
    return rate


async def forget_session(broker: brokers.BrokerProcess, client_id: str) -> None:
    """End the ingest's persistent session. Left behind, the broker would queue every later message
    for it: each round slower than the last, the raw ones too."""
    async with aiomqtt.Client(broker.host, broker.port, username="fleet-server", password=brokers.USERS["fleet-server"],
                              identifier=client_id, clean_session=True):  # fmt: skip
        pass


def batch(n: int, round_no: int) -> list[bytes]:
    return [encode(detection(label="person", event_id=f"r{round_no}-{i}")) for i in range(n)]


async def run(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    broker = brokers.mosquitto(tmp / "broker", save_every_change=False)
    pg: postgres.PostgresServer | None = None
    try:
        pg = postgres.start()
    except Exception as exc:  # no PostgreSQL binaries here: say so, measure SQLite
        print(f"PostgreSQL not measured: {exc}")
    rates: dict[str, list[float]] = {"raw": [], "sqlite": [], "postgres": []}
    sizes: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("rounds", total=args.rounds)
            for r in range(args.rounds):
                rates["raw"].append(await raw_rate(broker, batch(args.messages, r * 3), args.window, args.same_process))
                db = f"sqlite:///{tmp / f'fleet-{r}.db'}"
                payloads = batch(args.messages, r * 3 + 1)
                rates["sqlite"].append(
                    await stored_rate(broker, db, payloads, args.window, sizes["sqlite"], args.same_process)
                )
                if pg is not None:
                    url = pg.create_database("bench")
                    payloads = batch(args.messages, r * 3 + 2)
                    rates["postgres"].append(
                        await stored_rate(broker, url, payloads, args.window, sizes["postgres"], args.same_process)
                    )
                    pg.drop_database(url)
                progress.advance(task)
    finally:
        broker.stop()
        if pg is not None:
            pg.destroy()
    return rates, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="messages per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--window", type=int, default=100, help="QoS 1 messages in flight (default 100)")
    parser.add_argument("--same-process", action="store_true", help="publish from the measuring process")
    parser.add_argument("--publish", nargs=4, metavar=("HOST", "PORT", "FILE", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        host, port, path, window = args.publish
        asyncio.run(publish_child(host, int(port), path, int(window)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        rates, sizes = asyncio.run(run(args, Path(tmp)))
    raw = statistics.median(rates["raw"])
    where = "publisher in this process" if args.same_process else "publisher in a child process"
    table = Table(title=f"Ingest: {args.messages} detections per round, {args.rounds} rounds, medians; {where}")
    for column in ("path", "messages/s", "x raw", "x raw per round", "messages per commit"):
        table.add_column(column, justify="left" if column == "path" else "right")
    result = {"raw_rate": f"{raw:.0f}"}
    for name, label in (("raw", "raw aiomqtt subscriber (baseline)"), ("sqlite", "stored, SQLite"),
                        ("postgres", "stored, PostgreSQL")):  # fmt: skip
        if not rates[name]:
            table.add_row(label, "not measured", "-", "-", "-")
            continue
        rate = statistics.median(rates[name])
        # Each round's stored rate against the raw rate of the same round: the load on a shared
        # machine drifts between rounds, less so within one.
        rounds = [stored / base for stored, base in zip(rates[name], rates["raw"], strict=False)]
        per_commit = f"{statistics.median(sizes[name]):.0f}" if sizes.get(name) else "-"
        table.add_row(label, f"{rate:.0f}", f"{rate / raw:.2f}", " ".join(f"{r:.2f}" for r in rounds), per_commit)
        if name != "raw":
            result[f"{name}_rate"] = f"{rate:.0f}"
            result[f"{name}_ratio"] = f"{rate / raw:.2f}"
            result[f"{name}_per_commit"] = per_commit
    Console().print(table)
    ratio = float(result["sqlite_ratio"])
    print(f"goal: SQLite >= {GOAL_RATIO} x raw: {'met' if ratio >= GOAL_RATIO else 'NOT met'}")
    print("RESULT ingest " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
