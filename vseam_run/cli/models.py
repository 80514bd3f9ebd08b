"""`vseam models`: the model registry."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vseam_run.cli.common import JsonOption, console, print_json

app = typer.Typer(help="List and show model registry entries.", invoke_without_command=True, no_args_is_help=False)


@app.callback()
def models(ctx: typer.Context, json_: JsonOption = False) -> None:
    """List the models vseam knows. Examples: `vseam models`, `vseam models show llava-1.5-7b`."""
    if ctx.invoked_subcommand is not None:
        return
    from vseam_run.registry import available, get_entry

    entries = [get_entry(name) for name in available()]
    if json_:
        print_json([{"name": e.name, "source": e.hf_id or e.path, "class": e.model_class, "description": e.description} for e in entries])
        return
    t = Table(title="models")
    # Names are what users type: never wrap them, even in a narrow terminal.
    t.add_column("name", no_wrap=True, style="cyan")
    for col in ("weights", "class", "description"):
        t.add_column(col, overflow="fold")
    for e in entries:
        t.add_row(e.name, e.hf_id or str(e.resolved_path()), e.model_class, e.description)
    console().print(t)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Registry name or YAML path.")], json_: JsonOption = False) -> None:
    """Print one registry entry. Example: `vseam models show toy-llava`."""
    from vseam_run.registry import get_entry

    e = get_entry(name)
    if json_:
        print_json(e.model_dump())
    else:
        console().print(e.to_yaml(), highlight=False, markup=False)
