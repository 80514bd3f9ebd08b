"""`vseam runs`: list the runs in a registry, newest first.

Also home to the small formatting helpers `show` and `compare` share, so the three
query commands colour statuses and print numbers the same way.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vseam_run.cli.common import DEFAULT_DB, DbOption, JsonOption, console, print_json
from vseam_run.store import RunRecord, RunStore
from vseam_run.store.views import headline_metrics, run_list_item

STATUS_STYLES = {
    "running": "bold yellow",
    "succeeded": "bold green",
    "failed": "bold red",
    "interrupted": "bold magenta",
    "lost": "bold red",  # stored as running, but nobody runs it any more
}


def open_registry(db: str) -> RunStore:
    """Open an existing registry for reading; a missing file is an error, never created."""
    return RunStore(db, must_exist=True)


def status_text(status: str) -> Text:
    """The run status, coloured by how it ended."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def format_time(value: datetime | None, *, seconds: bool = True) -> str:
    """A UTC time (to the second, or the minute where space is tight); an em dash when absent."""
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def format_duration(seconds: float | None) -> str:
    """Seconds as ``42s``, ``3m 05s`` or ``2h 07m``; an em dash when unknown."""
    if seconds is None:
        return "—"
    total = int(round(seconds))
    if total < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def run_duration(run: RunRecord) -> str:
    """Total time of a finished run; elapsed time with a trailing ``…`` while running."""
    if run.finished_at is not None:
        return format_duration(run.duration_s)
    return format_duration(run.elapsed_s()) + "…" if run.shown_status() == "running" else "—"


def format_value(value: float | None) -> str:
    """A metric for a table: 4 significant decimals, integers as integers, blanks as ``—``."""
    if value is None or value != value:  # NaN
        return "—"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.4f}"


# Metric-name words shortened in column headers; the full names are in --json and `show`.
_HEADER_ABBREVIATIONS = {"accuracy": "acc", "baseline": "base", "modulated": "mod", "gold_prob": "p(gold)"}
# Space between columns with SIMPLE_HEAD and collapsed padding.
_COLUMN_GAP = 2


def metric_header(metric: str) -> str:
    """A compact two-line header: ``eval.test.accuracy.modulated`` → ``eval.test`` / ``acc.mod``.

    Only the second line is abbreviated, so the leading stage name stays unambiguous.
    """
    parts = metric.split(".")
    if len(parts) == 1:
        return metric
    split = max(1, len(parts) - 2)
    tail = [_HEADER_ABBREVIATIONS.get(p, p) for p in parts[split:]]
    return ".".join(parts[:split]) + "\n" + ".".join(tail)


def _fitting_headlines(names: list[str], records: list[RunRecord], width: int) -> list[str]:
    """The most important headline metrics that fit beside the fixed columns, in name order.

    Rich would rather squeeze every column to an ellipsis than drop one; dropping the
    least important metrics keeps ids and statuses readable in a narrow terminal.
    """
    fixed = (
        max(len(r.id) for r in records)
        + min(24, max(len(r.name) for r in records))
        + max(len(r.status) for r in records)
        + min(24, max(len(r.model_name or "—") for r in records))
        + len("2026-01-01 00:00")
        + len("duration")
        + 6 * _COLUMN_GAP
    )
    chosen: list[str] = []
    for name in names:
        needed = max(len(line) for line in metric_header(name).splitlines()) + _COLUMN_GAP
        if fixed + needed > width:
            break
        fixed += needed
        chosen.append(name)
    return sorted(chosen)


def runs(
    db: DbOption = DEFAULT_DB,
    json_: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many runs.")] = 50,
) -> None:
    """List recorded runs, newest first, with status, model, duration and headline metrics.

    Examples:

        vseam runs

        vseam runs --db results/runs.db --limit 10

        vseam runs --json | jq '.[0].run_id'
    """
    with open_registry(db) as store:
        records = store.list_runs(limit=limit)
        total = store.count_runs()
    if json_:
        print_json([run_list_item(r) for r in records])
        return
    out = console()
    if not records:
        out.print(f"no runs in {escape(store.where)} yet — [bold]vseam run SPEC[/] records one")
        return
    headlines = _fitting_headlines(headline_metrics(records), records, out.width)
    table = Table(
        title=f"runs in {escape(store.where)}",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        show_edge=False,
    )
    table.add_column("id", no_wrap=True, style="cyan")
    table.add_column("name", overflow="fold", min_width=8)
    table.add_column("status", no_wrap=True)
    table.add_column("model", overflow="fold", min_width=8)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    for name in headlines:
        table.add_column(metric_header(name), justify="right", no_wrap=True)
    for r in records:
        table.add_row(
            r.id,
            r.name,
            status_text(r.shown_status()),
            r.model_name or "—",
            format_time(r.created_at, seconds=False),
            run_duration(r),
            *(format_value(r.metric(name)) for name in headlines),
        )
    out.print(table)
    if total > len(records):
        out.print(f"[dim]showing {len(records)} of {total} runs; --limit shows more[/]")
