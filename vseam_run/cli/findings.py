"""`vseam share`, `vseam report` and `vseam export`: findings across runs, a page, data files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from vseam_run import fmt
from vseam_run.cli.common import DEFAULT_DB, DbOption, JsonOption, console, print_json_with_figure
from vseam_run.cli.runs import open_registry
from vseam_run.errors import VseamError


def share(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Runs (ids, prefixes, 'latest'); or use --sweep / --tag.")] = None,
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="Add the succeeded runs of this sweep.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Add the succeeded runs with this tag (repeat: all of them).")] = None,
    by: Annotated[str, typer.Option("--by", help="Group runs by level, category, model or seed.")] = "level",
    k: Annotated[int, typer.Option("--k", min=1, help="Size of the top positive / negative head sets.")] = 10,
    metric: Annotated[str, typer.Option("--metric", help="jaccard (|A∩B|/|A∪B|) or count (|A∩B|).")] = "jaccard",
    n_boot: Annotated[int, typer.Option("--boot", min=10, help="Question resamples per run for the intervals.")] = 200,
    figure: Annotated[Optional[Path], typer.Option("--figure", "-o", help="Write the figure here (PNG; VSEAM_FIGURE_FORMATS adds SVG/PDF).")] = None,
    db: DbOption = DEFAULT_DB,
    json_: JsonOption = False,
) -> None:
    """Do runs find the same heads? Top-k head-set overlap within vs across levels, against chance.

    Pairwise overlap of the top-k positive and negative head sets,
    averaged within and across groups (semantic level by default), against the overlap random head
    sets of the same sizes would have (hypergeometric expectation), with 95% intervals from
    resampling each run's search questions.

    Examples:

      vseam share --sweep sweep-20261127-193117-a209 -o share.png

      vseam share A B C D --by seed --metric count --json
    """
    from vseam_run.findings import load_head_run, load_runs_for, share as share_runs, share_figure, sort_by_group

    with open_registry(db) as store:
        records = load_runs_for(store, list(runs or []), sweep, tag)
        head_runs = []
        skipped = []
        for r in records:
            h = load_head_run(store, r)
            (head_runs.append(h) if h is not None else skipped.append(r.id))
    if by not in ("level", "category", "model", "seed"):
        raise VseamError(f"--by {by!r}: choose level, category, model or seed")
    result = share_runs(sort_by_group(head_runs, by), by=by, k=k, metric=metric, n_boot=n_boot)
    result.notes += [f"{i}: no head search; left out" for i in skipped]
    written = share_figure(result, figure) if figure is not None else None
    if json_:
        print_json_with_figure(result.to_json(), written)
        return
    _print_share(result)
    if written is not None:
        console().print(f"figure: {written}", highlight=False, markup=False)


def _interval(lo: float | None, hi: float | None) -> str:
    return "—" if lo is None or hi is None else f"[{fmt.num(lo, 2)}, {fmt.num(hi, 2)}]"


def _print_share(s) -> None:
    out = console()
    groups = {}
    for h, g in zip(s.runs, s.groups):
        groups.setdefault(g, []).append(h.run.id)
    out.print(f"{len(s.runs)} runs by {s.by}: " + "; ".join(f"{g} ({len(ids)})" for g, ids in groups.items())
              + f"; top-{s.k} sets, {s.metric} overlap, {s.n_boot} question resamples per run", highlight=False)
    t = Table(title=f"mean pairwise {s.metric} overlap, within vs across {s.by} (W = within, A = across)",
              title_justify="left", header_style="bold")
    for col in ("heads", "W pairs", "W mean", "W 95% CI", "W random", "A pairs", "A mean", "A 95% CI",
                "A random", "W − A", "W − A 95% CI"):
        t.add_column(col, justify="right")
    for kind in ("positive", "negative"):
        w, a, d = s.summary[kind]["within"], s.summary[kind]["across"], s.difference[kind]
        t.add_row(kind, str(w.pairs), fmt.num(w.observed, 2), _interval(w.low, w.high), fmt.num(w.random, 2),
                  str(a.pairs), fmt.num(a.observed, 2), _interval(a.low, a.high), fmt.num(a.random, 2),
                  fmt.num(d["observed"], 2), _interval(*d["interval"]))
    out.print(t)
    for kind in ("positive", "negative"):
        labels = [f"{g}·s{h.run.seed}" for h, g in zip(s.runs, s.groups)]
        m = Table(title=f"{kind}: pairwise {s.metric}", title_justify="left", header_style="bold")
        m.add_column("")
        for lab in labels:
            m.add_column(lab, justify="right")
        for i, lab in enumerate(labels):
            m.add_row(lab, *("·" if i == j else fmt.num(float(s.observed[kind][i, j]), 2) for j in range(len(labels))))
        out.print(m)
    for note in s.notes:
        out.print(f"[dim]note: {note}[/]", highlight=False)


def report(
    run: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'latest'.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")],
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write one self-contained HTML page about a run.

    Spec, environment, metrics, top heads with
    intervals, every figure (embedded), the edit contact sheet and the evaluation tables.

    Example:

      vseam report latest -o report.html
    """
    from vseam_run.html_report import build_report
    from vseam_run.outputs import check_file, writing

    check_file(output)  # before the report is built
    with open_registry(db) as store:
        run_id = store.resolve(run)
        html = build_report(store, run_id)
    with writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    console().print(f"wrote {output} ({len(html) // 1024} KiB)", highlight=False, markup=False)


def export(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Runs to export (ids, prefixes, 'latest'); or --sweep / --tag.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the tables into.")] = Path("export"),
    format_: Annotated[str, typer.Option("--format", help="csv, parquet or jsonl.")] = "csv",
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="Add the runs of this sweep.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Add the runs with this tag.")] = None,
    modulation: Annotated[bool, typer.Option("--modulation", help="Write the run's modulation as a safetensors file "
                                             "(-o FILE) for vseam_run.apply_modulation.")] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Export runs as CSV, Parquet or JSON-lines tables, or one run's modulation as a file.

    Tables: runs, metrics, heads (long form: run, layer, head, positive, negative,
    signed and their intervals), per-question results and edits, one file each.

    Examples:

      vseam export latest -o out/ --format parquet

      vseam export --sweep sweep-20261127-193117-a209 -o sweep_tables/

      vseam export latest --modulation -o mod.safetensors
    """
    if modulation:
        _export_modulation(list(runs or []), output, db)
        return
    from vseam_run import api
    from vseam_run.findings import load_runs_for

    from vseam_run.outputs import check_folder, writing

    if format_ not in api.FORMATS:
        raise VseamError(f"--format {format_!r}: choose one of {', '.join(api.FORMATS)}")
    check_folder(output)
    with open_registry(db) as store:
        ids = [r.id for r in load_runs_for(store, list(runs or []), sweep, tag)]
        if not ids:
            raise VseamError("vseam export: name runs, or give --sweep / --tag")
        with writing(output):
            written = api.export_tables(store, ids, output, format_)
    for name, (path, n) in written.items():
        console().print(f"{name:10s} {n:6d} rows  {path}", highlight=False, markup=False)


def _export_modulation(runs: list[str], output: Path, db) -> None:
    from vseam_run.modfile import describe_file, export_modulation, read_modulation

    if len(runs) != 1:
        raise VseamError("vseam export --modulation: name exactly one run", hint="vseam export RUN --modulation -o mod.safetensors")
    if output == Path("export") or output.suffix != ".safetensors":
        raise VseamError(f"vseam export --modulation: -o {output}: give the file to write, ending in .safetensors",
                         hint="vseam export RUN --modulation -o mod.safetensors")
    with open_registry(db) as store:
        path = export_modulation(store, runs[0], output)
    iv, info, run = read_modulation(path)
    console().print(f"wrote {path}: {iv.kind} of run {run.get('run_id')} for model {describe_file(info)}; "
                    f"{iv.heads_changed():g} head scale(s) changed", highlight=False, markup=False)
