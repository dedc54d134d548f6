"""Keep the garbage collector's full collections short in the long-running server.

A full (generation 2) collection walks every object the collector tracks. Most of those that exist
once the server is up (modules, classes, the app's routes and schemas, the SQLAlchemy caches) live
as long as the process, yet each full collection walks them again: a pause of about 100 ms here,
which lands in the middle of whatever request is running (bench/registry.py saw it as the fleet
roll-up's p99, four times its p50). gc.freeze, the standard library's tool for this, moves them out
of the collector's way; everything made later is collected as before.
"""

from __future__ import annotations

import gc


def freeze() -> None:
    """Once per process, when the server is up: `polewatch server run` calls it, `serve` does not,
    because the tests run many servers in one process and what is frozen is never freed."""
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()
