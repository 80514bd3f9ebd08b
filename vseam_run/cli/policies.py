"""`vseam compare --policies`: the policy comparison (vseam_run/policy_table.py) as tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from vseam_run.cli.common import console, print_json
from vseam_run.cli.runs import open_registry


def show(runs: list[str], sweep: str | None, db: Any, json_: bool, md: bool) -> None:
    from vseam_run import policy_table as pt
    from vseam_run.findings import load_runs_for

    from vseam_run.errors import VseamError

    if not runs and not sweep:
        raise VseamError("vseam compare --policies: name the runs, or give --sweep SWEEP",
                         hint="vseam sweep SPEC --set modulation.policy=paper,linear,learned,ablate,steer,image_attention prints its sweep id")
    with open_registry(db) as store:
        ids = [r.id for r in load_runs_for(store, runs, sweep, None)]
        tables = pt.policy_tables(store, ids)
    if json_:
        print_json({"tables": [t.to_json() for t in tables]})
        return
    if md:
        print(pt.markdown(tables))
        return
    out = console()
    for t in tables:
        table = Table(title=pt.title(t), title_justify="left", header_style="bold")
        for i, col in enumerate(pt.HEADER):
            table.add_column(col, style="cyan" if i == 0 else None)
        for r in t.rows:
            table.add_row(*pt.row_cells(r))
        out.print(table)
    out.print("gain: modulated − baseline accuracy; 95% CI: paired bootstrap; control: the same change on random heads "
              "(mean ± sd of the gain over the draws)", highlight=False, markup=False)
