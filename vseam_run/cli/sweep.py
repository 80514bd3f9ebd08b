"""`vseam sweep SPEC --set a=x,y --set b=1,2`: run a grid of a spec, tagged with a sweep id."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from vseam_run.cli.common import DEFAULT_DB, DbOption, console


def sweep(
    spec: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="FIELD=V1,V2,...: one grid axis (repeatable); one value fixes a field.")] = None,
    db: DbOption = DEFAULT_DB,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid and stop.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print every run's stage log.")] = False,
) -> int:
    """Run a spec over a grid of --set values, labelling the runs with a sweep id.

    SPEC runs once per point of the grid the --set options span; every run is labelled with the
    sweep id (`vseam runs --sweep ID`, `vseam share --sweep ID`). Exit code 1 if any run failed.

    Examples:

      vseam sweep specs/toy_llava_object.yaml --set data.level=object,attribute,relation --set seed=0,1,2

      vseam sweep specs/quickstart.yaml --set search.strategy=exact,attribution --dry-run
    """
    from vseam_run.store import RunStore
    from vseam_run.sweep import plan, run_sweep

    grid = plan(spec, list(set_ or []))
    out = console()
    out.print(f"sweep [cyan]{grid.sweep_id}[/]: {len(grid.points)} run(s) of {spec}", highlight=False)
    if dry_run:
        for p in grid.points:
            out.print("  " + (" ".join(p.overrides) or "(no overrides)"), highlight=False, markup=False)
        return 0
    store = RunStore(db)
    try:
        run_sweep(grid, store, log=lambda s: out.print(s, highlight=False, markup=False),
                  run_log=(lambda s: out.print(s, highlight=False, markup=False)) if verbose else None)
    finally:
        store.close()
    table = Table(title=f"sweep {grid.sweep_id}", title_justify="left", header_style="bold")
    for col in ("run", "status", *(a.field for a in grid.axes)):
        table.add_column(col)
    for p in grid.points:
        table.add_row(p.run_id or "—", p.status, *(o.partition("=")[2] for o in p.overrides))
    out.print(table)
    db_opt = "" if db == DEFAULT_DB else f" --db {db}"
    out.print(f"next: vseam share --sweep {grid.sweep_id}{db_opt}", highlight=False)
    return 1 if any(p.status != "succeeded" for p in grid.points) else 0
