"""Sweeps: one spec run over a grid of overrides, every run labelled with the sweep's id.

`--set data.level=object,attribute,relation --set seed=0,1,2` is a 3 × 3 grid; a value
without a top-level comma is fixed for every run. All grid points are validated (and the
machine checked for what they need) before the first one starts.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from vseam_run.errors import VseamError
from vseam_run.spec import Spec, load_spec
from vseam_run.store import RunStore
from vseam_run.store.labels import add_label


@dataclass(frozen=True)
class Axis:
    """One --set field and the values it takes in the grid."""

    field: str
    values: list[str]


@dataclass
class SweepPoint:
    overrides: list[str]
    spec: Spec
    run_id: str | None = None
    status: str = "pending"
    error: str | None = None


@dataclass
class Sweep:
    sweep_id: str
    axes: list[Axis]
    points: list[SweepPoint] = field(default_factory=list)


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: `a,b` → 2 values, `[0, 2]` stays one."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_axes(sets: list[str]) -> list[Axis]:
    axes: list[Axis] = []
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VseamError(f"--set {item!r}: expected FIELD=VALUE[,VALUE...], e.g. --set seed=0,1,2")
        values = split_values(value)
        if any(v == "" for v in values):
            raise VseamError(f"--set {item!r}: an empty value in the list", hint="write values as a,b,c")
        if key.strip() in {a.field for a in axes}:
            raise VseamError(f"--set {key.strip()} given twice", hint="list all its values in one --set: a,b,c")
        axes.append(Axis(key.strip(), values))
    return axes


def new_sweep_id() -> str:
    return f"sweep-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def plan(spec_path: Path, sets: list[str], sweep_id: str | None = None) -> Sweep:
    """Every grid point as a validated spec (a bad value fails here, naming its override)."""
    axes = parse_axes(sets)
    sweep = Sweep(sweep_id or new_sweep_id(), axes)
    for combo in itertools.product(*(a.values for a in axes)):
        overrides = [f"{a.field}={v}" for a, v in zip(axes, combo)]
        sweep.points.append(SweepPoint(overrides, load_spec(spec_path, overrides)))
    return sweep


def run_sweep(sweep: Sweep, store: RunStore, *, log: Callable[[str], None],
              run_log: Callable[[object], None] | None = None, reuse_search: bool = False) -> Sweep:
    """Run every point in order; a failed point is recorded and the sweep goes on. With
    `reuse_search`, a point takes an earlier run's head search from identical inputs."""
    from vseam_run import pipeline

    for spec in {id(p.spec): p.spec for p in sweep.points}.values():
        pipeline.preflight(spec)  # missing weights or data: stop before any work
    for i, point in enumerate(sweep.points, 1):
        where = f"[{i}/{len(sweep.points)}] {' '.join(point.overrides) or '(no overrides)'}"
        if point.status == "succeeded":  # a resumed sweep: finished points are kept, not recomputed
            log(f"{where}: succeeded earlier (run {point.run_id})")
            continue
        resume = point.run_id  # an interrupted, failed or lost run of this point: continued where it stopped
        log(where + (f": resuming run {resume}" if resume else ""))

        def tag(run_id: str, point: SweepPoint = point) -> None:
            point.run_id = run_id
            add_label(store, run_id, "sweep", sweep.sweep_id)

        try:
            pipeline.run(point.spec, store, log=run_log or (lambda s: None), on_created=tag, resume=resume,
                         reuse_search=reuse_search)
            point.status = "succeeded"
        except KeyboardInterrupt:
            point.status = "interrupted"
            raise
        except Exception as e:  # recorded in the registry by pipeline.run; the sweep goes on
            point.status, point.error = "failed", f"{type(e).__name__}: {e}"
            log(f"  failed: {point.error}")
    return sweep


# --- resuming a sweep ----------------------------------------------------------------------------


def _sweep_runs(store: RunStore, sweep_id: str) -> list:
    from vseam_run.store.labels import runs_with

    return [store.get_run(r) for r in dict.fromkeys(runs_with(store, "sweep", sweep_id))]


def attach(sweep: Sweep, store: RunStore) -> None:
    """Bind the runs an earlier attempt of `sweep` left to its points, by the content of their spec:
    a point with a succeeded run is done; one with an unfinished run is resumed from it. A run of
    the sweep that is no point of this grid means another spec or grid: refused."""
    by_hash: dict[str, list[SweepPoint]] = {}
    for p in sweep.points:
        by_hash.setdefault(p.spec.content_hash(), []).append(p)
    runs = _sweep_runs(store, sweep.sweep_id)
    if not runs:
        raise VseamError(f"no runs of sweep {sweep.sweep_id} in this registry",
                         hint="check the sweep id (vseam runs lists sweeps) and --db")
    for run in runs:  # oldest first: a later run of the same point replaces an earlier one
        points = by_hash.get(run.spec_hash or "")
        if points is None:
            raise VseamError(
                f"sweep {sweep.sweep_id}: run {run.id} was computed from a spec that is no point of this grid",
                hint="resume a sweep with the spec file and --set values it was started with",
            )
        for p in points:
            if p.status != "succeeded":
                status = run.shown_status()
                if status == "running":
                    raise VseamError(f"sweep {sweep.sweep_id}: run {run.id} is still running",
                                     hint="wait for it, or stop it, then resume the sweep")
                p.run_id, p.status = run.id, "succeeded" if status == "succeeded" else "pending"


def unfinished_sweep(sweep: Sweep, store: RunStore) -> str | None:
    """The latest earlier sweep of exactly this grid that has a point not yet succeeded, if any."""
    from vseam_run.store.labels import labels

    hashes = {p.spec.content_hash() for p in sweep.points}
    records = store.list_runs()
    by_sweep: dict[str, list] = {}
    for run_id, lab in labels(store, [r.id for r in records]).items():
        for s in lab.sweeps:
            by_sweep.setdefault(s, []).append(run_id)
    status = {r.id: (r.spec_hash, r.shown_status()) for r in records}
    found = []
    for sid, ids in by_sweep.items():
        if sid == sweep.sweep_id or not all(status[i][0] in hashes for i in ids):
            continue
        done = {status[i][0] for i in ids if status[i][1] == "succeeded"}
        if done != hashes and not any(status[i][1] == "running" for i in ids):
            found.append(sid)
    return max(found) if found else None  # ids start with their UTC start time


#: The metrics a sweep's closing table shows per point, those any run recorded (issue 24: a sweep
#: ended with statuses only, and the numbers it swept had to be looked up run by run).
HEADLINE_METRICS: tuple[str, ...] = (
    "baseline.accuracy", "eval.test.accuracy.baseline", "eval.test.accuracy.modulated", "eval.test.mcnemar_p",
    "modulation.lambda", "modulation.k", "ablation.positive.accuracy_drop", "search.seconds",
)  # fmt: skip


def headline_metrics(store: Any, run_ids: list[str | None]) -> tuple[list[str], list[dict[str, float]]]:
    """(the headline metric names any of the runs has, each run's values; {} for no run)."""
    values = [store.get_run(r).metrics if r else {} for r in run_ids]
    names = [m for m in HEADLINE_METRICS if any(m in v for v in values)]
    return names, [{m: v[m] for m in names if m in v} for v in values]
