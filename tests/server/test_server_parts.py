"""Small parts of the server whose rules matter on their own: the feed's slow-consumer rule, the
reconnect backoff, and the server's independence from the agent's stack."""

from __future__ import annotations

import random
import subprocess
import sys

from polewatch.fleet_server.feed import Feed, FeedItem
from polewatch.fleet_server.ingest import backoff_delay


async def test_a_subscriber_that_falls_behind_is_cut_off_not_waited_for() -> None:
    feed = Feed(buffer=3)
    with feed.subscribe() as slow, feed.subscribe() as fast:
        for i in range(5):
            feed.publish(FeedItem("detection", {"n": i}, id=i))
            if i in (0, 2):  # the fast one keeps up
                assert [item.id for item in await fast.next_batch(timeout=1)] == ([0] if i == 0 else [1, 2])
        # The slow one got what fit, then was marked lagged: its stream ends after these three,
        # and its client resumes from the database with Last-Event-ID.
        assert [item.id for item in await slow.next_batch(timeout=1)] == [0, 1, 2]
        assert slow.lagged and slow.ended
        assert not fast.lagged
        assert [item.id for item in await fast.next_batch(timeout=1)] == [3, 4]
    assert feed.subscribers == 0


async def test_closing_the_feed_ends_every_stream_and_any_later_one() -> None:
    feed = Feed()
    with feed.subscribe() as sub:
        feed.close()
        assert await sub.next_batch(timeout=1) == [] and sub.closed
    with feed.subscribe() as late:
        assert late.ended


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, 0.5, 30, rng) for n in range(12)]
    for n, delay in enumerate(delays):
        cap = min(30, 0.5 * 2**n)
        assert cap / 2 <= delay <= cap
    assert delays[-1] > 15
    spread = {round(backoff_delay(8, 0.5, 30, rng), 3) for _ in range(20)}
    assert len(spread) > 15, "replicas restarted together must not reconnect in lockstep"


def test_the_server_never_loads_the_agent_or_its_vision_stack() -> None:
    code = (
        "import sys, polewatch.fleet_server.app, polewatch.fleet_server.cli\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('polewatch.agent', 'cv2', 'onnxruntime', 'numpy')))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_cli_module_is_cheap_to_mount() -> None:
    """The main CLI imports every role's Typer app at start: ours must not pull in the server stack."""
    code = (
        "import sys, polewatch.fleet_server.cli\n"
        "print(','.join(sorted(m for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'aiomqtt') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
