"""`vseam compare RUN RUN [RUN...]`: differing spec fields, metrics side by side, head overlap,
paired tests on shared test questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from vseam_run import fmt
from vseam_run.cli.common import DEFAULT_DB, DbOption, JsonOption, console, print_json_with_figure
from vseam_run.cli.runs import open_registry

Runs = Annotated[Optional[list[str]], typer.Argument(help="Two or more runs: ids, unique prefixes or 'latest'. Deltas are against the first.")]

# Spec values can be long (prompts, paths); the table truncates, --json never does.
_MAX_CELL = 40
_MAX_FLIPPED = 10


def compare(
    runs: Runs = None,
    db: DbOption = DEFAULT_DB,
    json_: JsonOption = False,
    md: Annotated[bool, typer.Option("--md", help="Print Markdown tables (for a paper draft or an issue).")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Include timings (time.*, search.seconds) among the metrics.")] = False,
    k: Annotated[Optional[int], typer.Option("--k", min=1, help="Top-k of the head sets (default: the smallest search.top_k).")] = None,
    figure: Annotated[Optional[Path], typer.Option("--figure", "-o", help="Write the runs' head heatmaps side by side (one colour scale per row) to this PNG.")] = None,
    policies: Annotated[bool, typer.Option("--policies", help="The modulation policies side by side instead: one table per dataset "
                                           "(chosen on val, heads changed, held-out gain with CI and McNemar p, control, in-sample).")] = False,
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="Add the succeeded runs of this sweep.")] = None,
) -> None:
    """Compare two or more runs: spec differences, metrics, head overlap, paired tests.

    The spec fields that differ, metrics side by side with deltas against the first
    run, for head searches the top-k positive / negative sets (Jaccard overlap, shared heads, Spearman
    rank correlation of the score matrices), and McNemar's paired test where runs scored the same
    test questions, with the questions that flipped.

    Examples:

        vseam compare 20261126-2115 latest

        vseam compare A B C --md > compare.md

        vseam compare A B -o heads.png --json | jq '.heads[0].positive.jaccard'

        vseam compare --policies --sweep SWEEP --md   # after vseam sweep SPEC --set modulation.policy=paper,linear,...
    """
    from vseam_run.findings import compare as compare_runs
    from vseam_run.findings import comparison_figure

    if policies:
        from vseam_run.cli import policies as policy_view

        policy_view.show(list(runs or []), sweep, db, json_, md)
        return
    if sweep:
        with open_registry(db) as store:
            from vseam_run.findings import load_runs_for

            runs = [r.id for r in load_runs_for(store, list(runs or []), sweep, None)]
    runs = list(runs or [])
    if len(runs) < 2:  # a usage error (usage line, exit 2), before the registry is opened
        raise typer.BadParameter("compare needs at least two runs", param_hint="RUNS")

    with open_registry(db) as store:
        ids = [store.resolve(r) for r in runs]
        result = compare_runs(store, ids, k=k, include_timings=all_)
    written = comparison_figure(result, figure) if figure is not None else None
    if json_:
        print_json_with_figure(result.to_json(), written)
        return
    if md:
        print(markdown(result.to_json()))
    else:
        _print_tables(result.to_json())
    if written is not None:
        console().print(f"figure: {written}", highlight=False, markup=False)


def _status_note(status: str | None) -> str:
    if not status or status == "succeeded":
        return ""
    return f", [bold red]{status}[/]"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return fmt.num(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def _heads_text(heads: list[list[int]], limit: int = 6) -> str:
    shown = ", ".join(fmt.head(l, h) for l, h in heads[:limit])
    return (shown + (" …" if len(heads) > limit else "")) or "none"


def _delta(d: float | None) -> Text:
    if d is None:
        return Text("")
    if abs(d) < fmt.NOISE:
        return Text("(0)", style="dim")
    return Text(f"({'+' if d > 0 else ''}{fmt.num(d)})", style="green" if d > 0 else "red")


def _print_tables(c: dict[str, Any]) -> None:
    out = console()
    names = [f"{r['run_id']}" for r in c["runs"]]
    out.print("runs: " + "   ".join(f"[bold]{chr(65 + i)}[/] [cyan]{r['run_id']}[/] ({r['name']}, seed {r['seed']}"
                                   + _status_note(r.get("status")) + ")" for i, r in enumerate(c["runs"])), highlight=False)
    unfinished = [f"{chr(65 + i)} {r['status']}" for i, r in enumerate(c["runs"]) if r.get("status", "succeeded") != "succeeded"]
    if unfinished:  # an unfinished run lacks the metrics of its later stages: blanks are not zeros
        out.print(f"[yellow]not every run finished ({', '.join(unfinished)}): metrics of stages it did not reach are blank[/]",
                  highlight=False)
    letters = [chr(65 + i) for i in range(len(names))]
    if c["spec_diff"]:
        t = Table(title="spec fields that differ", title_justify="left", header_style="bold")
        t.add_column("field", style="cyan")
        for x in letters:
            t.add_column(x)
        for d in c["spec_diff"]:
            t.add_row(d["field"], *(Text(_short(v)) if v is not None else Text("(absent)", style="dim") for v in d["values"]))
        out.print(t)
    else:
        out.print("[green]specs are identical[/]")
    if c["env_diff"]:
        t = Table(title="environment differences", title_justify="left", header_style="bold")
        t.add_column("field", style="cyan")
        for x in letters:
            t.add_column(x)
        for d in c["env_diff"]:
            t.add_row(d["field"], *(Text(_short(v)) for v in d["values"]))
        out.print(t)
    if c["metrics"]:
        t = Table(title="metrics (Δ against A)", title_justify="left", header_style="bold")
        t.add_column("metric", style="cyan")
        for x in letters:
            t.add_column(x, justify="right")
        for m in c["metrics"]:
            cells = []
            for v, d in zip(m["values"], m["deltas"]):
                cell = Text(fmt.num(v))
                cell.append(" ")
                cell.append_text(_delta(d))
                cells.append(cell)
            t.add_row(m["name"], *cells)
        out.print(t)
    for p in c["heads"]:
        a, b = letters[names.index(p["a"])], letters[names.index(p["b"])]
        if not p["comparable"]:
            out.print(f"heads {a} vs {b}: {p['reason']}")
            continue
        t = Table(title=f"top-{p['k']} heads, {a} vs {b}", title_justify="left", header_style="bold")
        for col in ("list", "Jaccard", "random sets", "shared", f"only {a}", f"only {b}"):
            t.add_column(col)
        for kind in ("positive", "negative"):
            h = p[kind]
            t.add_row(kind, fmt.num(h["jaccard"], 2), fmt.num(h["jaccard_random"], 2), _heads_text(h["shared"]),
                      _heads_text(h["only_a"]), _heads_text(h["only_b"]))
        out.print(t)
        rho = p["spearman"]
        out.print("  Spearman rank correlation of the score matrices: "
                  + ", ".join(f"{k} {fmt.num(v, 2)}" for k, v in rho.items()), highlight=False)
    for p in c.get("unpaired", []):
        a, b = letters[names.index(p["a"])], letters[names.index(p["b"])]
        out.print(f"no paired test {a} vs {b}: {p['reason']}", highlight=False, markup=False)
    for p in c["paired"]:
        a, b = letters[names.index(p["a"])], letters[names.index(p["b"])]
        out.print(f"[bold]paired test {a} vs {b}[/] ({p['stage']}, n = {p['n']} shared test questions): accuracy "
                  f"{fmt.num(p['accuracy_a'])} vs {fmt.num(p['accuracy_b'])}, McNemar p = {fmt.num(p['mcnemar_p'], 2)}; "
                  f"{len(p['flipped'])} flipped ({p['a_only_correct']} right only in {a}, {p['b_only_correct']} only in {b})",
                  highlight=False)
        for f in p["flipped"][:_MAX_FLIPPED]:
            out.print(f"    {f['qid']}: gold {f['gold']}; {a} {f['a_pred']} → {b} {f['b_pred']}", highlight=False, markup=False)
        if len(p["flipped"]) > _MAX_FLIPPED:
            out.print(f"    … {len(p['flipped']) - _MAX_FLIPPED} more (--json)", highlight=False)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(c: dict[str, Any]) -> str:
    """The comparison as Markdown: runs, spec differences, metrics, heads, paired tests."""
    letters = [chr(65 + i) for i in range(len(c["runs"]))]
    names = [r["run_id"] for r in c["runs"]]
    parts = ["## Runs", _md_table(["", "run", "name", "seed", "model", "status"],
                                  [[x, r["run_id"], r["name"], str(r["seed"]), str(r["model"]), str(r.get("status", ""))]
                                   for x, r in zip(letters, c["runs"])])]
    parts += ["## Spec fields that differ",
              _md_table(["field", *letters], [[d["field"], *(_short(v) for v in d["values"])] for d in c["spec_diff"]])
              if c["spec_diff"] else "The specs are identical."]
    if c["metrics"]:
        rows = [[m["name"], *(fmt.num(v) + (f" ({'+' if d > 0 else ''}{fmt.num(d)})" if d is not None and abs(d) >= fmt.NOISE else "")
                              for v, d in zip(m["values"], m["deltas"]))] for m in c["metrics"]]
        parts += ["## Metrics (Δ against A)", _md_table(["metric", *letters], rows)]
    if c["heads"]:
        rows = []
        for p in c["heads"]:
            if not p["comparable"]:
                continue
            pair = f"{letters[names.index(p['a'])]} vs {letters[names.index(p['b'])]}"
            for kind in ("positive", "negative"):
                h = p[kind]
                rows.append([pair, kind, fmt.num(h["jaccard"], 2), fmt.num(h["jaccard_random"], 2), _heads_text(h["shared"], 10),
                             fmt.num(p["spearman"][kind], 2)])
        parts += [f"## Top-{c['heads'][0].get('k', '')} heads", _md_table(["pair", "list", "Jaccard", "random sets", "shared", "Spearman"], rows)]
    if c["paired"]:
        rows = [[f"{letters[names.index(p['a'])]} vs {letters[names.index(p['b'])]}", p["stage"], str(p["n"]), fmt.num(p["accuracy_a"]),
                 fmt.num(p["accuracy_b"]), fmt.num(p["mcnemar_p"], 2), str(len(p["flipped"]))] for p in c["paired"]]
        parts += ["## Paired test on shared test questions",
                  _md_table(["pair", "stage", "n", "acc A", "acc B", "McNemar p", "flipped"], rows)]
    if c.get("unpaired"):
        parts += ["## No paired test"] + ["\n".join(f"- {letters[names.index(p['a'])]} vs {letters[names.index(p['b'])]}: {p['reason']}"
                                                    for p in c["unpaired"])]
    return "\n\n".join(parts) + "\n"
