"""`vseam runs`: list the runs in a registry, newest first.

Also home to the small formatting helpers `show` and `compare` share, so the three
query commands colour statuses and print numbers the same way.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Optional

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


def _base_width(records: list[RunRecord]) -> int:
    """Room the id, name, status, model, created and duration columns need."""
    return (
        max(len(r.id) for r in records)
        + min(24, max(len(r.name) for r in records))
        + max(len(r.status) for r in records)
        + min(24, max(len(r.model_name or "—") for r in records))
        + len("2026-01-01 00:00")
        + len("duration")
        + 6 * _COLUMN_GAP
    )


def _facets_width(records: list[RunRecord]) -> int:
    """Room the level / strategy / seed columns need."""
    cols = [[str(v) for v in run_facets(r).values()] for r in records]
    return sum(max(len(h), *(len(c[i]) for c in cols)) + _COLUMN_GAP for i, h in enumerate(("level", "strategy", "seed")))


def _fitting_headlines(names: list[str], records: list[RunRecord], width: int, show_facets: bool = False) -> list[str]:
    """The most important headline metrics that fit beside the fixed columns, in name order.

    Rich would rather squeeze every column to an ellipsis than drop one; dropping the
    least important metrics keeps ids and statuses readable in a narrow terminal.
    """
    fixed = _base_width(records) + (_facets_width(records) if show_facets else 0)
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
    model: Annotated[Optional[str], typer.Option("--model", help="Only runs of this model (registry name).")] = None,
    level: Annotated[Optional[str], typer.Option("--level", help="Only runs at this semantic level (object, attribute, relation; 'all' = unset).")] = None,
    status: Annotated[Optional[str], typer.Option("--status", help="Only runs in this status.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Only runs with this tag (repeat: all of them).")] = None,
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="Only runs of this sweep id.")] = None,
) -> None:
    """List recorded runs, newest first; filter by model, level, status, tag or sweep.

    Columns: status, model, level, strategy, seed, duration and headline metrics.

    Examples:

        vseam runs

        vseam runs --db results/runs.db --limit 10

        vseam runs --level attribute --status succeeded --tag paper

        vseam runs --sweep sweep-20261127-193117-a209 --json | jq '.[].run_id'
    """
    from vseam_run.store.labels import labels as run_labels

    filtered = any(v is not None for v in (model, level, status, tag, sweep))
    with open_registry(db) as store:
        every = store.list_runs(limit=None if filtered else limit)
        total = store.count_runs()
        labels = run_labels(store, [r.id for r in every])
    records = [r for r in every if run_matches(r, labels[r.id], model, level, status, tag or [], sweep)][:limit]
    total = total if not filtered else sum(
        run_matches(r, labels[r.id], model, level, status, tag or [], sweep) for r in every)
    if json_:
        print_json([{**run_list_item(r), **run_facets(r), "tags": labels[r.id].tags, "sweeps": labels[r.id].sweeps}
                    for r in records])
        return
    out = console()
    if not records:
        where = escape(store.where)
        out.print(f"no runs in {where} match these filters" if filtered else f"no runs in {where} yet — [bold]vseam run SPEC[/] records one")
        return
    # Level, strategy and seed tell a sweep's runs apart; they give way before ids and names do.
    show_facets = _base_width(records) + _facets_width(records) <= out.width
    headlines = _fitting_headlines(headline_metrics(records), records, out.width, show_facets)
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
    if show_facets:
        table.add_column("level", no_wrap=True)
        table.add_column("strategy", no_wrap=True)
        table.add_column("seed", justify="right", no_wrap=True)
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
            *((str(v) if v is not None else "—" for v in run_facets(r).values()) if show_facets else ()),
            format_time(r.created_at, seconds=False),
            run_duration(r),
            *(format_value(r.metric(name)) for name in headlines),
        )
    out.print(table)
    if total > len(records):
        out.print(f"[dim]showing {len(records)} of {total} runs; --limit shows more[/]")


def run_facets(run: RunRecord) -> dict[str, object]:
    """The spec facts runs are told apart by: semantic level, search strategy, seed."""
    spec = run.spec()
    data, search = spec.get("data") or {}, spec.get("search") or {}
    return {
        "level": (data.get("level") or "all") if isinstance(data, dict) and data else None,
        "strategy": search.get("strategy") if isinstance(search, dict) else None,
        "seed": run.seed if run.seed is not None else spec.get("seed"),
    }


def run_matches(run: RunRecord, labels, model: str | None, level: str | None, status: str | None,
                tags: list[str], sweep: str | None) -> bool:
    facets = run_facets(run)
    return (
        (model is None or run.model_name == model)
        and (level is None or facets["level"] == level)
        and (status is None or run.status == status)
        and all(t in labels.tags for t in tags)
        and (sweep is None or sweep in labels.sweeps)
    )
