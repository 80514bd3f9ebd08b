"""`vseam compare A B`: what differs between two runs' specs, and how their metrics moved."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from vseam_run.cli.common import DEFAULT_DB, DbOption, JsonOption, console, print_json
from vseam_run.cli.runs import format_value, open_registry
from vseam_run.store.views import FieldDiff, MetricDelta, RunComparison, compare_runs

RunA = Annotated[str, typer.Argument(help="The reference run: an id, a unique prefix, or 'latest'.")]
RunB = Annotated[str, typer.Argument(help="The run compared against it (deltas are B − A).")]

# Spec values can be long (prompts, paths); the table truncates, --json never does.
_MAX_CELL = 60


def compare(run_a: RunA, run_b: RunB, db: DbOption = DEFAULT_DB, json_: JsonOption = False) -> None:
    """Compare two runs: spec fields that differ (as dotted paths) and every metric with B − A.

    Examples:

        vseam compare 20261126-2115 latest

        vseam compare 20261126-2115 20261127-0930 --db results/runs.db

        vseam compare 20261126-2115 latest --json | jq '.metrics[] | select(.delta != null)'
    """
    with open_registry(db) as store:
        a = store.get_run(store.resolve(run_a))
        b = store.get_run(store.resolve(run_b))
    comparison = compare_runs(a, b)
    if json_:
        print_json(comparison.to_json())
        return
    _print_comparison(comparison)


def _print_comparison(c: RunComparison) -> None:
    out = console()
    out.print(f"[bold]A[/] [cyan]{c.a.id}[/] ({c.a.name})   [bold]B[/] [cyan]{c.b.id}[/] ({c.b.name})")
    if c.spec_diff:
        out.print(_diff_table("spec differences", c.spec_diff))
    else:
        out.print("[green]specs are identical[/]")
    if c.env_diff:
        out.print(_diff_table("environment differences", c.env_diff))
    if c.metrics:
        out.print(_metrics_table(c.metrics))
    else:
        out.print("[dim]neither run has metrics[/]")


def _cell(value: Any, present: bool) -> Text:
    if not present:
        return Text("(absent)", style="dim")
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MAX_CELL:
        text = text[: _MAX_CELL - 1] + "…"
    return Text(text)


def _diff_table(title: str, diffs: list[FieldDiff]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("field", style="cyan")
    table.add_column("A")
    table.add_column("B")
    for d in diffs:
        table.add_row(d.field, _cell(d.a, d.a_present), _cell(d.b, d.b_present))
    return table


def _delta_text(delta: float | None) -> Text:
    """B − A, green when it went up and red when it went down.

    The colour only shows direction: for a loss or a p-value "down" is the good way.
    """
    if delta is None:
        return Text("—", style="dim")
    if delta == 0:
        return Text("0", style="dim")
    return Text(f"{delta:+.4g}", style="green" if delta > 0 else "red")


def _metrics_table(metrics: list[MetricDelta]) -> Table:
    table = Table(title="metrics", title_justify="left", header_style="bold")
    table.add_column("metric", style="cyan")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B − A", justify="right")
    for m in metrics:
        table.add_row(m.name, format_value(m.a), format_value(m.b), _delta_text(m.delta))
    return table
