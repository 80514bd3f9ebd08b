"""`vseam validate`: check specs and registry entries without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vseam_run.cli.common import console, err_console
from vseam_run.errors import SpecError, VseamError


def validate(files: Annotated[list[Path], typer.Argument(help="Spec or registry YAML files.")]) -> int:
    """Validate spec files (and registry entries under registry/); report every error of each file.

    Examples:

      vseam validate specs/*.yaml

      vseam validate registry/llava-1.5-7b.yaml
    """
    from vseam_run.registry import load_entry_file
    from vseam_run.spec import load_spec
    from vseam_run.yamlio import load_yaml

    bad = 0
    for f in files:
        try:
            doc = load_yaml(f)
            is_entry = isinstance(doc.data, dict) and "model_class" in doc.data
            load_entry_file(f) if is_entry else load_spec(f)
            console().print(f"[green]ok[/]  {escape(str(f))}", highlight=False)
        except SpecError as e:
            bad += 1
            err_console().print(f"[red]invalid[/] {escape(e.source)}", highlight=False)
            for line in e.errors:
                err_console().print(f"  {line}", highlight=False, markup=False)
        except VseamError as e:
            bad += 1
            err_console().print(f"[red]invalid[/] {escape(str(f))}: ", highlight=False, end="")
            err_console().print(str(e), highlight=False, markup=False)
    if bad:
        raise typer.Exit(2)
    return 0
