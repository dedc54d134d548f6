"""The release pointer switches atomically and state never lives in a release."""

from __future__ import annotations

from pathlib import Path

import pytest

from polewatch.agent.layout import LayoutError, ReleaseLayout, check_state_outside_release


def _install(layout: ReleaseLayout, version: str) -> None:
    d = layout.release_dir(version)
    d.mkdir(parents=True)
    (d / "VERSION").write_text(version)


def test_activate_switches_and_reports_previous(tmp_path: Path) -> None:
    layout = ReleaseLayout(tmp_path)
    _install(layout, "0.1.0")
    _install(layout, "0.2.0")
    assert layout.current() is None
    assert layout.activate("0.1.0") is None
    assert (layout.pointer / "VERSION").read_text() == "0.1.0"
    assert layout.activate("0.2.0") == "0.1.0"
    assert (layout.pointer / "VERSION").read_text() == "0.2.0"
    assert layout.installed() == ["0.1.0", "0.2.0"]


def test_activating_a_missing_or_unsafe_release_changes_nothing(tmp_path: Path) -> None:
    layout = ReleaseLayout(tmp_path)
    _install(layout, "0.1.0")
    layout.activate("0.1.0")
    with pytest.raises(LayoutError, match="not installed"):
        layout.activate("0.9.9")
    with pytest.raises(LayoutError, match="safe directory name"):
        layout.activate("../../etc")
    assert layout.current() == "0.1.0"


def test_state_inside_a_release_is_refused(tmp_path: Path) -> None:
    layout = ReleaseLayout(tmp_path / "opt")
    with pytest.raises(LayoutError, match="inside the release tree"):
        check_state_outside_release(tmp_path / "opt" / "releases" / "0.1.0" / "state", layout)
    check_state_outside_release(tmp_path / "var" / "lib" / "polewatch", layout)
