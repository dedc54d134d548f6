"""fleet-server/ is not a module name: prove the mapping works installed both ways, and the extras stay apart."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import polewatch.agent
import polewatch.fleet_server
import polewatch.protocol
import polewatch.provisioning

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("polewatch.protocol", "polewatch.agent", "polewatch.fleet_server", "polewatch.provisioning")


def test_editable_install_maps_the_folders() -> None:
    assert Path(polewatch.fleet_server.__file__).parent == REPO / "fleet-server"
    assert Path(polewatch.agent.__file__).parent == REPO / "agent"
    assert Path(polewatch.protocol.__file__).parent == REPO / "protocol"
    assert Path(polewatch.provisioning.__file__).parent == REPO / "provisioning"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Build from a clean copy: setuptools' build/ folder in a work tree can carry stale files.
    source = tmp_path_factory.mktemp("src") / "polewatch"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".lint"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)],
        check=True,
    )
    (built,) = out.glob("polewatch-*.whl")
    return built


def _requires(wheel: Path) -> dict[str, set[str]]:
    """Requirement names per extra ('' = base) from the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    extras: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        spec = line.split(":", 1)[1].strip()
        name = re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower()
        extra = re.search(r"extra == ['\"]([^'\"]+)['\"]", spec)
        extras.setdefault(extra.group(1) if extra else "", set()).add(name)
    return extras


@pytest.mark.slow
def test_wheel_carries_every_package_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for package in PACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in names
    assert "polewatch/agent/inference/models/nanodet-m-416.onnx" in names
    assert "polewatch/agent/inference/models/nanodet-m-416.json" in names
    assert "polewatch/agent/inference/rules/engine.py" in names, "subpackages are listed in pyproject.toml"
    assert "polewatch/samples/vtest-clip.mp4" in names
    assert any(n.startswith("polewatch/fleet_server/static/") for n in names)
    assert any(n.startswith("polewatch/fleet_server/migrations/versions/") for n in names)
    assert not any("yolov8" in n for n in names), "the AGPL reference model must never ship"


@pytest.mark.slow
def test_extras_keep_the_pole_and_the_server_apart(wheel: Path) -> None:
    extras = _requires(wheel)
    server_stack = {"fastapi", "sqlalchemy", "alembic", "uvicorn"}
    vision_stack = {"opencv-python-headless", "onnxruntime"}
    assert not extras["agent"] & server_stack
    assert not extras["server"] & vision_stack
    assert not extras[""] & (server_stack | vision_stack), "the base install is contract + CLI only"
    assert vision_stack <= extras["agent"] and server_stack <= extras["server"]
    # balena-sdk brings Twisted: only the cities on balenaOS install it, through its own extra.
    assert "balena-sdk" in extras["balena"] and "balena-sdk" not in extras["provision"]


def _closure(names: set[str]) -> set[str]:
    """Every distribution `names` pull in, as installed here (the dev environment has them all)."""
    from importlib import metadata

    seen: set[str] = set()
    todo = [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            extra = re.search(r"extra == ['\"]([^'\"]+)['\"]", spec)
            # An extra of a dependency counts only when the project asks for it (sqlalchemy[asyncio]).
            if extra and f"{name}[{extra.group(1)}]" not in names:
                continue
            todo.append(re.split(r"[\s\[<>=!~;(]", spec, maxsplit=1)[0].lower())
    return {n.replace("_", "-") for n in seen}


# Imports a role makes only when the library is there, saying what to install otherwise.
# box_check reports a box without the agent installed; balena-sdk comes with the [balena] extra, imported
# only when `enrol --balena-fleet` is given (the command checks for it first and says what to install).
OPTIONAL_IMPORTS = {"provisioning": {"onnxruntime", "balena"}}


def _third_party_imports(folder: Path) -> set[str]:
    found: set[str] = set()
    for source in folder.rglob("*.py"):
        for match in re.finditer(r"^\s*(?:import|from) ([A-Za-z_][A-Za-z0-9_]*)", source.read_text(), re.M):
            found.add(match.group(1))
    return {m for m in found if m not in sys.stdlib_module_names and m != "polewatch" and m != "__future__"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("folder", "extra"),
    [("agent", "agent"), ("fleet-server", "server"), ("provisioning", "provision"), ("polewatch", "demo")],
)
def test_each_role_extra_installs_what_its_code_imports(wheel: Path, folder: str, extra: str) -> None:
    """A role installed alone must have every library its code imports (the demo once missed one the
    dev environment happened to carry)."""
    from importlib import metadata

    extras = _requires(wheel)
    wanted = set(extras[""]) | set(extras[extra])
    if extra == "demo":
        wanted |= extras["agent"] | extras["server"]
    # Keep requested extras of dependencies (e.g. sqlalchemy[asyncio]) so their requirements count.
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        for line in zf.read(meta).decode().splitlines():
            m = re.match(r"Requires-Dist: ([A-Za-z0-9_.-]+)\[([^\]]+)\]", line)
            if m:
                wanted |= {f"{m.group(1).lower()}[{e.strip()}]" for e in m.group(2).split(",")}
    installed = _closure(wanted)
    providers = metadata.packages_distributions()
    missing = {}
    for module in _third_party_imports(REPO / folder) - OPTIONAL_IMPORTS.get(folder, set()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if dists and not dists & installed:
            missing[module] = sorted(dists)
    assert not missing, f"polewatch[{extra}] does not install what {folder}/ imports: {missing}"


@pytest.mark.slow
def test_built_wheel_imports_in_a_fresh_environment(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    code = "import importlib; " + "; ".join(
        f"print(importlib.import_module({p!r}).__file__)" for p in PACKAGES
    )
    # Run from elsewhere than the repo, or `import polewatch` would find the source folder.
    files = subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.split()
    assert len(files) == len(PACKAGES)
    assert all(str(env_dir) in f and str(REPO) not in f for f in files), files
    # With only the base install, a role whose extra is missing says what to install.
    result = subprocess.run(
        [str(env_dir / "bin" / "polewatch"), "server", "run"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 3
    assert "pip install 'polewatch[server]'" in result.stderr
