"""The `polewatch` command: one entry point, a sub-command per role.

A pole box installs only `polewatch[agent]`, the central host only `polewatch[server]`; each role's
commands are mounted only when its extra is installed, and otherwise the command says which extra
to install instead of failing with an import traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from . import __version__

app = typer.Typer(
    help="Polewatch: edge detection on CCTV poles, the fleet server, and the technician's tools.",
    no_args_is_help=True,
    add_completion=False,
)

# role: (CLI module, extra, help, modules the extra brings). Role CLIs import their heavy
# dependencies lazily, so the check looks for the extra's modules without importing them.
ROLES = {
    "agent": ("polewatch.agent.cli", "agent", "Run the pole agent (on the box).", ("cv2", "onnxruntime", "aiomqtt")),
    "server": (
        "polewatch.fleet_server.cli",
        "server",
        "Run the fleet server (central host).",
        ("fastapi", "sqlalchemy", "uvicorn", "aiomqtt"),
    ),
    "provision": ("polewatch.provisioning.cli", "provision", "Bring a new pole's box into the fleet.", ("cv2",)),
}


def _mount(name: str, module: str, extra: str, help_text: str, needs: tuple[str, ...]) -> None:
    missing = next((m for m in needs if importlib.util.find_spec(m) is None), None)
    try:
        if missing is not None:
            raise ModuleNotFoundError(name=missing)
        sub = importlib.import_module(module).app
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if missing.startswith("polewatch"):
            raise  # our own module is missing: a packaging bug, not a missing extra

        def unavailable() -> None:
            typer.echo(
                f"'polewatch {name}' needs the [{extra}] extra ({missing} is not installed): "
                f"pip install 'polewatch[{extra}]'",
                err=True,
            )
            raise typer.Exit(3)

        app.command(
            name,
            help=escape(f"{help_text} (needs: pip install 'polewatch[{extra}]')"),
            # Accept whatever sub-command and flags follow, so the user sees the install hint.
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(unavailable)
        return
    app.add_typer(sub, name=name, help=help_text)


for _name, (_module, _extra, _help, _needs) in ROLES.items():
    _mount(_name, _module, _extra, _help, _needs)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="HTTP port of the console (0 picks a free one).")] = 8080,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where the demo keeps its database and outboxes (default: a temp dir).")
    ] = None,
    poles: Annotated[int, typer.Option(min=1, max=8, help="How many simulated poles to run.")] = 2,
) -> None:
    """Run a broker, the fleet server and simulated poles on the sample footage; Ctrl-C stops all."""
    try:
        from .demo import run_demo
    except ImportError as exc:
        typer.echo(f"the demo needs the [demo] extra ({exc.name} is missing): pip install 'polewatch[demo]'", err=True)
        raise typer.Exit(3) from None
    raise typer.Exit(run_demo(port=port, state_dir=state_dir, poles=poles))


protocol_app = typer.Typer(help="The MQTT wire contract.", no_args_is_help=True)
app.add_typer(protocol_app, name="protocol")


@protocol_app.command("schema")
def protocol_schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of every v1 message (docs/schema/messages-v1.json is this output)."""
    from .protocol import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


def main() -> None:
    app()
