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
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue sweep SWEEP: its succeeded points are kept, its interrupted or failed runs resumed.")] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new sweep even when an unfinished one ran this same grid.")] = False,
    reuse_search: Annotated[bool, typer.Option("--reuse-search", help="A point takes the head search of an earlier run in this "
                                               "registry whose inputs match exactly (model and weights, data, edits, search "
                                               "settings, seed, search code); recorded as search.reused_from.")] = False,
) -> int:
    """Run a spec over a grid of --set values, labelling the runs with a sweep id.

    SPEC runs once per point of the grid the --set options span; every run is labelled with the
    sweep id (`vseam runs --sweep ID`, `vseam share --sweep ID`). Exit code 1 if any run failed.

    Examples:

      vseam sweep specs/toy_llava_object.yaml --set data.level=object,attribute,relation --set seed=0,1,2

      vseam sweep specs/quickstart.yaml --set search.strategy=exact,attribution --dry-run

    An interrupted sweep prints its id and the command that continues it (--resume SWEEP); the
    same command run again finds an unfinished sweep of the same grid and continues it too
    (--new starts afresh).
    """
    import shlex

    from vseam_run import fmt
    from vseam_run.store import RunStore
    from vseam_run.sweep import attach, headline_metrics, plan, run_sweep, unfinished_sweep

    grid = plan(spec, list(set_ or []), sweep_id=resume)
    out = console()
    from vseam_run.store.connect import mask

    db_opt = "" if db == DEFAULT_DB else f" --db {shlex.quote(mask(db))}"  # never a password
    if dry_run and resume is None:
        out.print(f"sweep [cyan]{grid.sweep_id}[/]: {len(grid.points)} run(s) of {spec}", highlight=False)
        for p in grid.points:
            out.print("  " + (" ".join(p.overrides) or "(no overrides)"), highlight=False, markup=False)
        return 0
    store = RunStore(db)
    try:
        if resume is None and not new:
            earlier = unfinished_sweep(grid, store)
            if earlier is not None:
                out.print(f"sweep {earlier} ran this grid and is unfinished: continuing it (--new starts a new sweep)",
                          highlight=False, markup=False)
                grid = plan(spec, list(set_ or []), sweep_id=earlier)
                resume = earlier
        if resume is not None:
            attach(grid, store)
        done = sum(p.status == "succeeded" for p in grid.points)
        out.print(f"sweep [cyan]{grid.sweep_id}[/]: {len(grid.points)} run(s) of {spec}"
                  + (f", {done} succeeded earlier" if resume is not None else ""), highlight=False)
        if dry_run:
            for p in grid.points:
                state = f"  ({p.status}, run {p.run_id})" if p.run_id else ""
                out.print("  " + (" ".join(p.overrides) or "(no overrides)") + state, highlight=False, markup=False)
            return 0
        try:
            run_sweep(grid, store, log=lambda s: out.print(s, highlight=False, markup=False),
                      run_log=(lambda s: out.print(s, highlight=False, markup=False)) if verbose else None,
                      reuse_search=reuse_search)
        except KeyboardInterrupt:
            sets = "".join(f" --set {shlex.quote(x)}" for x in (set_ or []))
            out.print(f"sweep {grid.sweep_id} interrupted; finished points are kept. Continue with: "
                      f"vseam sweep {shlex.quote(str(spec))}{sets} --resume {grid.sweep_id}{db_opt}",
                      highlight=False, markup=False)
            raise
        names, values = headline_metrics(store, [p.run_id for p in grid.points])
    finally:
        store.close()
    table = Table(title=f"sweep {grid.sweep_id}", title_justify="left", header_style="bold")
    for col in ("run", "status", *(a.field for a in grid.axes)):
        table.add_column(col)
    for name in names:  # the swept numbers, not just statuses
        table.add_column(name, justify="right")
    for p, v in zip(grid.points, values):
        table.add_row(p.run_id or "—", p.status, *(o.partition("=")[2] for o in p.overrides),
                      *(fmt.num(v.get(n)) for n in names))
    out.print(table)
    out.print(f"next: vseam share --sweep {grid.sweep_id}{db_opt}", highlight=False)
    return 1 if any(p.status != "succeeded" for p in grid.points) else 0
