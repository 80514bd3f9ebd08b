"""`vseam show RUN`: one run's record — spec, environment, metrics, artifacts, error."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from vseam_run.cli.common import DEFAULT_DB, DbOption, JsonOption, console, print_json
from vseam_run.cli.runs import format_time, format_value, open_registry, run_duration, status_text
from vseam_run.store import RunRecord, StageCount
from vseam_run.store.views import run_json

RunArgument = Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'latest'.")]


def show(run: RunArgument, db: DbOption = DEFAULT_DB, json_: JsonOption = False) -> None:
    """Show one run: what ran (spec, model, versions), how it ended, and what it measured.

    Examples:

        vseam show latest

        vseam show 20261126-2115

        vseam show latest --json | jq '.metrics["baseline.accuracy"]'
    """
    with open_registry(db) as store:
        record = store.get_run(store.resolve(run))
        documents = store.documents(record.id)
        stages = store.question_stages(record.id)
    if json_:
        counts = {stage: c._asdict() for stage, c in stages.items()}
        print_json(run_json(record, documents, counts))
        return
    out = console()
    out.print(_header(record))
    out.print(spec_summary(record), highlight=False, markup=False)
    _print_labels(record.id, db)
    heads = _top_heads_table(documents.get("heads"), documents.get("heads.uncertainty"))
    if heads is not None:
        out.print(heads)
    from vseam_run.estimates import estimate_notes

    for note in estimate_notes(documents.get("heads"), record.spec()):
        out.print(Text(note, style="yellow"))
    if record.status != "succeeded":
        with open_registry(db) as store:
            stored = stored_search_layers(store.checkpoint_keys(record.id))
        if stored:
            out.print(f"search: {stored} stored; `vseam run --resume {record.id}` continues from there", highlight=False, markup=False)
    if record.metrics:
        out.print(_metrics_table(record))
    if stages:
        out.print(_stages_table(stages))
    if record.artifacts:
        out.print(_artifacts_table(record))
    if documents:
        keys = ", ".join(documents)
        out.print(f"[bold]documents:[/] {keys} [dim](in --json, each under its own key)[/]")
    if record.error_message or record.error_traceback:
        out.print(
            Panel(
                Text(record.error_message or "(no message)", style="red"),
                title="error",
                title_align="left",
                border_style="red",
                subtitle=f"traceback: vseam show {record.id} --json",
                subtitle_align="left",
            )
        )


def _header(run: RunRecord) -> Panel:
    """Identity and environment of the run, as a borderless two-column grid in a panel."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    status = run.shown_status()
    grid.add_row("status", status_text(status))
    if run.host or run.pid is not None:
        beat = f", last heartbeat {format_time(run.heartbeat_at)} UTC" if run.heartbeat_at else ""
        grid.add_row("process", f"{run.host or '?'} pid {run.pid if run.pid is not None else '?'}{beat}")
    if status == "lost":  # stored as running, but its process is gone or silent
        grid.add_row("resume", Text(f"vseam run --resume {run.id}", style="red"))
    grid.add_row("model", f"{run.model_name or '—'}" + (f"  [dim]{run.model_hash[:12]}[/]" if run.model_hash else ""))
    grid.add_row("device", run.device or "—")
    grid.add_row("seed", "—" if run.seed is None else str(run.seed))
    grid.add_row("created", format_time(run.created_at) + " UTC")
    grid.add_row("finished", format_time(run.finished_at) + (" UTC" if run.finished_at else ""))
    grid.add_row("duration", run_duration(run))
    grid.add_row("spec hash", run.spec_hash[:16] or "—")
    if run.resume_count:
        grid.add_row("resumed", f"{run.resume_count}×")
    if run.resumed_from:
        grid.add_row("resumed from", run.resumed_from)
    if run.versions:
        grid.add_row("versions", ", ".join(f"{k} {v}" for k, v in sorted(run.versions.items())))
    return Panel(grid, title=f"[bold]{run.name}[/]  [cyan]{run.id}[/]", title_align="left")


def _metrics_table(run: RunRecord) -> Table:
    """Metrics grouped by their first dotted component (baseline, eval, search, ...)."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in sorted(run.metrics):
        prefix, _, rest = name.partition(".")
        groups[prefix].append((rest or prefix, format_value(run.metric(name))))
    table = Table(title="metrics", title_justify="left", header_style="bold")
    table.add_column("group", style="cyan")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for i, (prefix, rows) in enumerate(groups.items()):
        if i:
            table.add_section()
        for j, (rest, value) in enumerate(rows):
            table.add_row(prefix if j == 0 else "", rest, value)
    return table


def _stages_table(stages: dict[str, StageCount]) -> Table:
    table = Table(title="per-question results", title_justify="left", header_style="bold")
    table.add_column("stage")
    table.add_column("questions", justify="right")
    table.add_column("correct", justify="right")
    for stage, count in stages.items():
        share = f" ({count.correct / count.questions:.1%})" if count.questions else ""
        table.add_row(stage, str(count.questions), f"{count.correct}{share}")
    return table


def _artifacts_table(run: RunRecord) -> Table:
    table = Table(title="artifacts", title_justify="left", header_style="bold")
    table.add_column("kind")
    table.add_column("path", overflow="fold")
    table.add_column("sha256", style="dim", no_wrap=True)
    states = [a.state() for a in run.artifacts]
    if any(s != "present" for s in states):  # deleted with the workdir, say, since the run wrote them
        table.add_column("file")
    for a, state in zip(run.artifacts, states):
        table.add_row(a.kind, a.path, a.sha256[:12], *([state.upper() if state != "present" else "ok"]
                                                        if any(s != "present" for s in states) else []))
    return table


def spec_summary(run: RunRecord) -> str:
    """One line of what the spec asked for: data, level, search, modulation, evaluation."""
    spec = run.spec()
    data, search, mod = spec.get("data") or {}, spec.get("search"), spec.get("modulation")
    parts = [f"data {data.get('source', '?')}" + (f" ({data.get('path')})" if data.get("path") else "")
             + f", level {data.get('level') or 'all'}" + (f", limit {data['limit']}" if data.get("limit") else "")]
    if spec.get("edit"):
        parts.append(f"edit {spec['edit'].get('recipe', '?')}")
    if search:
        parts.append(f"search {search.get('strategy')} / {search.get('scoring')} / {search.get('ablation')} ablation, "
                     f"top {search.get('top_k')}")
    if mod:
        lam = mod.get("lam")
        parts.append(f"modulation {mod.get('policy')}" + (f" λ={lam}" if lam is not None else ""))
    if spec.get("evaluate"):
        parts.append("evaluate" + (" + ablation" if (spec["evaluate"] or {}).get("ablation") else ""))
    return "spec: " + "; ".join(parts)


def _print_labels(run_id: str, db: str) -> None:
    from vseam_run.store.labels import labels

    with open_registry(db) as store:
        lab = labels(store, [run_id])[run_id]
    out = console()
    if lab.tags:
        out.print("tags: " + ", ".join(lab.tags), highlight=False, markup=False)
    if lab.sweeps:
        out.print("sweep: " + ", ".join(lab.sweeps), highlight=False, markup=False)
    for n in lab.notes:
        out.print("note: " + n, highlight=False, markup=False)


def stored_search_layers(keys: dict[str, list[str]]) -> str:
    """What an unfinished run's head search has stored: "3 layers (exact)", or "" for none.
    The search saves one checkpoint per finished layer, keyed `<pass>:<layer>` under the stage
    `search@<fingerprint>`."""
    passes: dict[str, set[int]] = {}
    for stage, ks in keys.items():
        if not stage.startswith("search@"):
            continue
        for k in ks:
            name, _, layer = k.rpartition(":")
            if layer.isdigit():
                passes.setdefault(name, set()).add(int(layer))
    return "; ".join(f"{len(ls)} layer{'s' if len(ls) != 1 else ''} ({name}: {', '.join(map(str, sorted(ls)))})"
                     for name, ls in passes.items())


def _top_heads_table(heads: dict | None, unc: dict | None) -> Table | None:
    """Top positive and negative heads as `L3.H4 0.048`, with 95% intervals and top-k stability."""
    from vseam_run import fmt

    if not heads or "top" not in heads:
        return None
    from vseam_run.estimates import ESTIMATE_MARK, head_scores_estimated

    mark = ESTIMATE_MARK if head_scores_estimated(heads) else ""
    title = "top heads" + (f" ({ESTIMATE_MARK} first-order estimates)" if mark else "")
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("#", "positive", "interval", "stable", "negative", "interval ", "stable "):
        table.add_column(col.strip(), justify="right" if col in ("#",) else "left")
    pos, neg = heads["top"].get("positive", []), heads["top"].get("negative", [])

    def cells(kind: str, entry: list | None) -> list[str]:
        if entry is None:
            return ["", "", ""]
        l, h, score = entry
        if not unc:
            return [f"{fmt.head(l, h)} {mark}{fmt.num(score, 2)}", "", ""]
        lo, hi = unc["low"][kind][l][h], unc["high"][kind][l][h]
        return [f"{fmt.head(l, h)} {mark}{fmt.num(score, 2)}", f"[{fmt.num(lo, 2)}, {fmt.num(hi, 2)}]",
                f"{unc['top_k_stability'][kind][l][h]:.0%}"]

    for i in range(max(len(pos), len(neg))):
        table.add_row(str(i + 1), *cells("positive", pos[i] if i < len(pos) else None),
                      *cells("negative", neg[i] if i < len(neg) else None))
    if not pos and not neg:
        return None
    return table
