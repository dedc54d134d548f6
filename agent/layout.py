"""Where things live on a pole box, planned for A/B software updates.

    <root>/releases/<version>/   the code that runs; never written to after install
    <root>/current -> releases/<version>   the pointer the service starts from
    <state>/                      config, credentials, outbox, reference views: never inside a release

Switching or rolling back is one atomic rename of the `current` symlink, and because no state lives
in a release, switching can never lose an event or a credential. The update issue adds signed
releases, the soak window and automatic rollback on top of these primitives.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


class LayoutError(RuntimeError):
    pass


@dataclass(frozen=True)
class ReleaseLayout:
    root: Path

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def pointer(self) -> Path:
        return self.root / "current"

    def release_dir(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise LayoutError(f"release version {version!r} is not a safe directory name")
        return self.releases / version

    def installed(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        return sorted(p.name for p in self.releases.iterdir() if p.is_dir())

    def current(self) -> str | None:
        """The version the pointer names, or None before the first install."""
        if not self.pointer.is_symlink():
            return None
        return Path(os.readlink(self.pointer)).name

    def activate(self, version: str) -> str | None:
        """Point `current` at an installed release atomically; return the version it pointed at before."""
        target = self.release_dir(version)
        if not target.is_dir():
            raise LayoutError(f"release {version} is not installed under {self.releases}")
        previous = self.current()
        tmp = self.root / f".current.{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        # A relative link keeps the tree valid if the whole root is moved or mounted elsewhere.
        tmp.symlink_to(Path("releases") / version)
        os.replace(tmp, self.pointer)  # rename(2) is atomic: the pointer is always old or new
        return previous


def check_state_outside_release(state_dir: Path, layout: ReleaseLayout) -> None:
    """Refuse a state dir inside the release tree: a switch of release would hide the outbox."""
    state = state_dir.resolve()
    releases = layout.releases.resolve()
    if state == releases or releases in state.parents:
        raise LayoutError(f"state dir {state_dir} is inside the release tree {layout.releases}; move it out")
