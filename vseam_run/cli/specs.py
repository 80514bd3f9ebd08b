"""`vseam specs`: the example specs shipped with vseam — list them, print one, copy one to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vseam_run.cli.common import JsonOption, console, print_json

app = typer.Typer(help="List, show and copy the example specs shipped with vseam.", invoke_without_command=True,
                  no_args_is_help=False)


@app.callback()
def specs(ctx: typer.Context, json_: JsonOption = False) -> None:
    """List the shipped specs. Run one by name (`vseam run quickstart`) or copy it to edit
    (`vseam specs cp quickstart my.yaml`)."""
    if ctx.invoked_subcommand is not None:
        return
    from vseam_run.shipped import shipped_specs, spec_summary

    found = shipped_specs()
    if json_:
        print_json([{"name": n, "path": str(p), "description": spec_summary(p)} for n, p in found.items()])
        return
    t = Table(title="shipped specs (vseam run NAME · vseam specs cp NAME)")
    t.add_column("name", no_wrap=True, style="cyan")
    t.add_column("description", overflow="fold")
    for name, path in found.items():
        t.add_row(name, escape(spec_summary(path)))
    console().print(t)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Shipped spec name, e.g. quickstart.")]) -> None:
    """Print a shipped spec. Example: `vseam specs show quickstart`."""
    from vseam_run.shipped import get_spec

    console().print(get_spec(name).read_text(encoding="utf-8"), highlight=False, markup=False, end="")


@app.command("cp")
def cp(
    name: Annotated[str, typer.Argument(help="Shipped spec name, e.g. quickstart.")],
    dest: Annotated[Optional[Path], typer.Argument(help="File or folder to copy to (default: ./NAME.yaml).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite DEST if it exists.")] = False,
) -> None:
    """Copy a shipped spec to edit.

    Examples:

      vseam specs cp quickstart

      vseam specs cp toy_llava_object experiments/objects.yaml
    """
    from vseam_run.shipped import copy_spec

    target = copy_spec(name, dest, force=force)
    console().print(f"copied {name} to {target}; run it with: vseam run {target}", highlight=False, markup=False)
