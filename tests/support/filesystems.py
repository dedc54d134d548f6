"""Real file systems that run out of space or refuse writes, made by the tests.

A full SD card is ENOSPC from the kernel, not a limit inside SQLite (`PRAGMA max_page_count` only
imitates it), so the disk-full tests run on a small tmpfs mounted for the test, and the read-only
tests on a read-only bind mount. Both need the right to mount (root, or CAP_SYS_ADMIN, as in CI's
container); without it the tests are skipped with the reason (failed under POLEWATCH_REQUIRE_ALL=1).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .required import STRICT


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {result.stderr.strip() or result.returncode}")


def _umount(path: Path) -> None:
    # Lazy: a test that failed may still hold a file open in there.
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _skip_or_fail(reason: str) -> None:
    message = f"cannot mount a test file system ({reason}); these tests need root or CAP_SYS_ADMIN"
    if STRICT:
        pytest.fail(message + " (POLEWATCH_REQUIRE_ALL=1)")
    pytest.skip(message)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes` mounted at `path` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path))
    except (OSError, FileNotFoundError) as exc:
        _skip_or_fail(str(exc))
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """`source` also visible at `target`; `set_read_only` flips the target's write permission."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        _mount("--bind", str(source), str(target))
    except (OSError, FileNotFoundError) as exc:
        _skip_or_fail(str(exc))
    try:
        yield target
    finally:
        _umount(target)


def set_read_only(target: Path, read_only: bool) -> None:
    """Remount a bind mount read-only or writable again (fails while files are open for writing)."""
    _mount("-o", f"remount,bind,{'ro' if read_only else 'rw'}", str(target))


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file until the file system says it is full; returns the file (delete it to free)."""
    path = directory / name
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    # Smaller writes mop up the last partial chunk's worth of blocks.
    with path.open("ab", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 512)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return path
