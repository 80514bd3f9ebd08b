"""`vseam models`: the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from vseam_run.cli.common import JsonOption, console, err_console, print_json

app = typer.Typer(help="List, show and create model registry entries.", invoke_without_command=True, no_args_is_help=False)


@app.callback()
def models(ctx: typer.Context, json_: JsonOption = False) -> None:
    """List the models vseam knows. Examples: `vseam models`, `vseam models show llava-1.5-7b`."""
    if ctx.invoked_subcommand is not None:
        return
    from vseam_run.registry import available, get_entry

    from vseam_run.zoo.tested import tested_for

    entries = [get_entry(name) for name in available()]
    if json_:
        print_json([{"name": e.name, "source": e.hf_id or e.path, "class": e.model_class, "description": e.description,
                     "tested": tested_for(e.model_class)} for e in entries])
        return
    t = Table(title="models")
    # Names are what users type: never wrap them, even in a narrow terminal.
    t.add_column("name", no_wrap=True, style="cyan")
    for col in ("weights", "class", "description", "family tested"):
        t.add_column(col, overflow="fold")
    for e in entries:
        t.add_row(e.name, e.hf_id or str(e.resolved_path()), e.model_class, e.description, tested_for(e.model_class))
    console().print(t)
    _print_tested()


def _print_tested() -> None:
    """Per transformers family: how the test suite checked it (equal / refused, tolerance)."""
    from vseam_run.zoo.tested import TESTED

    t = Table(title="families tested (tests/test_families.py, tests/test_shortcuts.py)")
    for col in ("class", "route", "result"):
        t.add_column(col, overflow="fold")
    for cls, row in TESTED.items():
        t.add_row(cls, row.route, row.result)
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


@app.command("new")
def new(
    source: Annotated[str, typer.Argument(help="Checkpoint folder or Hugging Face id (its config is read from local files).")],
    name: Annotated[str | None, typer.Option("--name", help="Registry name (default: from the folder or id).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Entry file to write (default: NAME.yaml here).")] = None,
    model_class: Annotated[str | None, typer.Option("--model-class", help="transformers class, when config.architectures is missing or wrong.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing entry file.")] = False,
) -> None:
    """Write a registry entry for a checkpoint, from its config and its module tree built on the
    meta device (no weights are read). Check the prompt it prints before trusting any number.

    Examples:

      vseam models new ./my-checkpoint --name my-vlm -o registry/my-vlm.yaml

      vseam models new llava-hf/llava-v1.6-mistral-7b-hf   # needs its config.json in the HF cache
    """
    from vseam_run.errors import VseamError
    from vseam_run.inspect_model import default_name, entry_yaml, inspect
    from vseam_run.registry import load_entry_file

    name = name or default_name(source)
    out = output or Path(f"{name}.yaml")
    if out.exists() and not force:
        raise VseamError(f"{out} exists; not overwriting it", hint="pass --force, or choose another file with -o")
    ins = inspect(source, model_class=model_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(entry_yaml(ins, name, out))
    load_entry_file(out)  # what was written must load as an entry (raises SpecError naming the field if not)
    c = console()
    c.print(f"[green]wrote[/] {escape(str(out))}: {escape(ins.model_class)}, {escape(ins.arch.describe())}", highlight=False)
    for k, v in ins.modules.items():
        c.print(f"  modules.{k}: {escape(v)}", highlight=False)
    for n in ins.notes:
        c.print(f"  [yellow]note:[/] {escape(n)}", highlight=False)
    err_console().print(
        f"[yellow]warning:[/] check the prompt template (from {escape(ins.prompt_origin)}) against the model card "
        f"before trusting any number: {escape(repr(ins.prompt))}",
        highlight=False,
    )
    c.print(f"next: `vseam validate {escape(str(out))}`, then use `model: {escape(str(out))}` in a spec", highlight=False)
