"""Skip-or-fail for tests that need a system package.

On a developer's machine a missing mosquitto, GStreamer RTSP server or chromium skips the test with the reason; in CI
(`POLEWATCH_REQUIRE_ALL=1`, set by .ci/run) it fails, so a broken install step can never turn the
suite green by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

STRICT = os.environ.get("POLEWATCH_REQUIRE_ALL") == "1"


def require_binary(name: str, hint: str, candidates: tuple[str, ...] = ()) -> str:
    found = shutil.which(name)
    for path in candidates:
        if found:
            break
        if os.path.exists(path):
            found = path
    if found:
        return found
    message = f"{name} is not installed: {hint}"
    if STRICT:
        pytest.fail(message + " (POLEWATCH_REQUIRE_ALL=1: missing parts fail in CI)")
    pytest.skip(message)


def require_file(candidates: tuple[str, ...], hint: str) -> str:
    """The first of `candidates` that exists; skip (fail in CI) with `hint` when none does."""
    for path in candidates:
        if os.path.exists(path):
            return path
    message = f"none of {', '.join(candidates)} exists: {hint}"
    if STRICT:
        pytest.fail(message + " (POLEWATCH_REQUIRE_ALL=1: missing parts fail in CI)")
    pytest.skip(message)
