"""What the durable outbox costs, measured beside a bare aiomqtt publish loop in the same run.

1. Accept rate: messages per second made durable (committed and fsync'd, group commit) and answered,
   for three producer patterns: 1000 producers that each wait for every single `put` before the
   next (the headline `accept_rate`: sustained), 64 "cameras" that each `put_many` a frame's worth
   of 10 events, and a burst of N `put`s issued at once.
2. Replay rate: a backlog of N messages in the outbox is sent to a real Mosquitto at QoS 1 with no
   pace limit (the uplink as after an outage), against a bare aiomqtt loop publishing the same N
   payloads with the same in-flight window. Goal: replay >= 0.7 x raw.
3. Disk writes per 1,000 messages for the whole life of a message (accepted, replayed, acknowledged,
   deleted, checkpointed), as the outbox counts them (write-ahead-log frames + checkpointed pages)
   and, where Linux reports it, as the kernel counts them for this process (/proc/self/io
   write_bytes: pages this process dirtied in the page cache; the file system's journal is not
   included). Also the worst case: one message per commit (a quiet pole).

    python bench/outbox.py [--messages N] [--rounds R] [--dir PATH] [--mosquitto PATH]

The databases live in a temporary folder in --dir (default: the system's temporary folder; point
it at the disk a real install would use, not at a RAM disk, for meaningful fsync and write counts).
Raw publishing and replay alternate for R rounds (default 3); the medians are reported.

The last line is machine-readable:
    RESULT outbox accept_rate=... raw_publish_rate=... replay_rate=... replay_ratio=... bytes_per_1000=... ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import aiomqtt
from rich.console import Console
from rich.table import Table

from polewatch.agent.config import MqttConfig, OutboxConfig
from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.session import INFLIGHT, Uplink
from polewatch.protocol import Box, Detection, build, encode, topics

DEVICE = "pole-bench"
BODY = Detection(
    event_id="cam1-7f3a-12",
    phase="start",
    camera_id="cam1",
    label="person",
    score=0.81,
    box=Box(x1=0.41, y1=0.22, x2=0.47, y2=0.51),
    frame_time=datetime.now(timezone.utc),
    frame_width=768,
    frame_height=576,
)


def kernel_write_bytes() -> int | None:
    """Bytes this process caused to be written to storage, as Linux counts them (None elsewhere)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mosquitto(binary: str, workdir: Path) -> Iterator[int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("mosquitto did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def new_outbox(folder: Path, name: str, **config: object) -> Outbox:
    path = folder / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Outbox(path, DEVICE, config=OutboxConfig(max_bytes="1GiB", **config))  # type: ignore[arg-type]


# --- 1. accept rate -------------------------------------------------------------------------------------


async def accept_burst(folder: Path, n: int) -> tuple[float, Outbox]:
    box = new_outbox(folder, "burst")
    started = time.perf_counter()
    results = await asyncio.gather(*(box.put(BODY) for _ in range(n)))
    elapsed = time.perf_counter() - started
    assert all(r.durable for r in results)
    return n / elapsed, box


async def accept_frames(folder: Path, n: int, producers: int = 64, per_frame: int = 10) -> tuple[float, int]:
    box = new_outbox(folder, "frames")
    frames = n // (producers * per_frame)

    async def camera() -> None:
        for _ in range(frames):
            results = await box.put_many([BODY] * per_frame)
            assert all(r.durable for r in results)

    started = time.perf_counter()
    await asyncio.gather(*(camera() for _ in range(producers)))
    elapsed = time.perf_counter() - started
    commits = box.commits
    box.close()
    return frames * producers * per_frame / elapsed, commits


async def accept_closed_loop(folder: Path, n: int, producers: int = 1000) -> float:
    box = new_outbox(folder, "closed")
    each = n // producers

    async def producer() -> None:
        for _ in range(each):
            assert (await box.put(BODY)).durable

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    elapsed = time.perf_counter() - started
    box.close()
    return each * producers / elapsed


# --- 2. replay vs raw publish ------------------------------------------------------------------------------


async def raw_publish(port: int, payloads: list[bytes]) -> float:
    topic = topics.up(DEVICE, "detection")
    todo = iter(payloads)

    async def worker(client: aiomqtt.Client) -> None:
        for payload in todo:
            await client.publish(topic, payload, qos=1)

    # INFLIGHT workers sharing one iterator: at most INFLIGHT unacknowledged publishes, as the uplink.
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-raw", max_inflight_messages=INFLIGHT) as client:
        client.pending_calls_threshold = 2 * INFLIGHT + 10  # as the uplink: no warning per publish
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(INFLIGHT)))
        elapsed = time.perf_counter() - started
    return len(payloads) / elapsed


async def until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out: the replay did not finish")
        await asyncio.sleep(0.001)


async def replay(port: int, box: Outbox, n: int) -> float:
    assert box.pending_count() == n
    uplink = Uplink(MqttConfig(host="127.0.0.1", port=port, reconnect_max_s=1.0), box, device_id=DEVICE,
                    agent_version="bench", replay_rate=None)
    task = asyncio.create_task(uplink.run())
    try:
        await until(lambda: uplink.connected)
        started = time.perf_counter()
        await until(lambda: uplink.replayed >= n)
        elapsed = time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await box.flush_async()
    return n / elapsed


# --- 3. disk writes -------------------------------------------------------------------------------------------


async def trickle(folder: Path, n: int) -> tuple[int, int | None]:
    """One message per commit, each acknowledged as the uplink does (deletes batched): a quiet pole."""
    box = new_outbox(folder, "trickle", group_commit_ms=0)
    kernel_before = kernel_write_bytes()
    for _ in range(n):
        accepted = await box.put(BODY)
        box.discard([accepted.seq])
    await box.flush_async()
    box.checkpoint()
    written = box.bytes_written()
    box.close()
    kernel_after = kernel_write_bytes()
    kernel = None if kernel_before is None or kernel_after is None else kernel_after - kernel_before
    return written, kernel


async def main_async(args: argparse.Namespace, folder: Path, console: Console) -> None:
    n = args.messages
    payload_size = len(encode(build(BODY, device_id=DEVICE, seq=1)))

    burst_rates, frame_rates, closed_rates, raw_rates, replay_rates = [], [], [], [], []
    written_per_message, kernel_per_message, commits = [], [], 0
    with mosquitto(args.mosquitto, folder) as port:
        for _ in range(args.rounds):
            kernel_before = kernel_write_bytes()
            rate, box = await accept_burst(folder, n)
            burst_rates.append(rate)
            payloads = [p.payload for p in box.take(n)]
            raw_rates.append(await raw_publish(port, payloads))
            replay_rates.append(await replay(port, box, n))
            box.checkpoint()
            written_per_message.append(box.bytes_written() / n)
            box.close()
            kernel_after = kernel_write_bytes()
            if kernel_before is not None and kernel_after is not None:
                kernel_per_message.append((kernel_after - kernel_before) / n)
            rate, commits = await accept_frames(folder, n)
            frame_rates.append(rate)
            closed_rates.append(await accept_closed_loop(folder, n))
    trickle_n = 500
    trickle_written, trickle_kernel = await trickle(folder, trickle_n)

    burst = statistics.median(burst_rates)
    frames = statistics.median(frame_rates)
    accept = statistics.median(closed_rates)  # sustained: every producer waits for each commit
    raw = statistics.median(raw_rates)
    replayed = statistics.median(replay_rates)
    per_1000 = statistics.median(written_per_message) * 1000
    kernel_1000 = statistics.median(kernel_per_message) * 1000 if kernel_per_message else None

    table = Table(title=f"outbox: {n} messages of {payload_size} B, median of {args.rounds} rounds, in {folder}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("baseline / note", justify="right")
    table.add_row("accept, 1000 producers, each put awaited (durable)", f"{accept:,.0f} msg/s",
                  f"raw publish {raw:,.0f} msg/s")
    table.add_row("accept, 64 cameras x put_many(10) awaited", f"{frames:,.0f} msg/s",
                  f"{commits} commits for {n} msgs")
    table.add_row(f"accept, burst: {n} puts issued at once", f"{burst:,.0f} msg/s",
                  f"includes creating {n} asyncio tasks")
    table.add_row("replay to Mosquitto (QoS 1, unpaced)", f"{replayed:,.0f} msg/s",
                  f"raw publish {raw:,.0f} msg/s; ratio {replayed / raw:.2f}")
    table.add_row("disk writes per 1,000 msgs (outbox count)", f"{per_1000 / 1024:,.0f} KiB",
                  f"payload {payload_size * 1000 / 1024:,.0f} KiB; x{per_1000 / (payload_size * 1000):.2f}")
    if kernel_1000 is not None:
        table.add_row("disk writes per 1,000 msgs (kernel, /proc)", f"{kernel_1000 / 1024:,.0f} KiB",
                      f"x{kernel_1000 / (payload_size * 1000):.2f} of payload")
    trickle_1000 = trickle_written / trickle_n * 1000
    table.add_row("... one message per commit (quiet pole)", f"{trickle_1000 / 1024:,.0f} KiB",
                  f"x{trickle_1000 / (payload_size * 1000):.2f}"
                  + ("" if trickle_kernel is None else f"; kernel {trickle_kernel / trickle_n:,.0f} B/msg"))
    console.print(table)
    console.print(
        f"goals: accept >= 20,000 msg/s: {'met' if accept >= 20000 else 'NOT met'}; "
        f"replay >= 0.7 x raw: {'met' if replayed >= 0.7 * raw else 'NOT met'}"
    )
    print(
        f"RESULT outbox accept_rate={accept:.0f} accept_frames_rate={frames:.0f} accept_burst_rate={burst:.0f} "
        f"raw_publish_rate={raw:.0f} replay_rate={replayed:.0f} "
        f"replay_ratio={replayed / raw:.3f} bytes_per_1000={per_1000:.0f} "
        f"write_amplification={per_1000 / (payload_size * 1000):.2f} "
        f"kernel_bytes_per_1000={'na' if kernel_1000 is None else f'{kernel_1000:.0f}'} "
        f"trickle_bytes_per_1000={trickle_1000:.0f} messages={n} payload_bytes={payload_size}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: system temp dir)")
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = parser.parse_args()
    if not os.access(args.mosquitto, os.X_OK):
        raise SystemExit(f"mosquitto not found at {args.mosquitto}: apt-get install mosquitto, or --mosquitto PATH")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="polewatch-bench-outbox-", dir=args.dir) as folder:
        asyncio.run(main_async(args, Path(folder), console))


if __name__ == "__main__":
    main()
