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
from typing import Callable

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


def plan(spec_path: Path, sets: list[str]) -> Sweep:
    """Every grid point as a validated spec (a bad value fails here, naming its override)."""
    axes = parse_axes(sets)
    sweep = Sweep(new_sweep_id(), axes)
    for combo in itertools.product(*(a.values for a in axes)):
        overrides = [f"{a.field}={v}" for a, v in zip(axes, combo)]
        sweep.points.append(SweepPoint(overrides, load_spec(spec_path, overrides)))
    return sweep


def run_sweep(sweep: Sweep, store: RunStore, *, log: Callable[[str], None],
              run_log: Callable[[object], None] | None = None) -> Sweep:
    """Run every point in order; a failed point is recorded and the sweep goes on."""
    from vseam_run import pipeline

    for spec in {id(p.spec): p.spec for p in sweep.points}.values():
        pipeline.preflight(spec)  # missing weights or data: stop before any work
    for i, point in enumerate(sweep.points, 1):
        log(f"[{i}/{len(sweep.points)}] {' '.join(point.overrides) or '(no overrides)'}")

        def tag(run_id: str, point: SweepPoint = point) -> None:
            point.run_id = run_id
            add_label(store, run_id, "sweep", sweep.sweep_id)

        try:
            pipeline.run(point.spec, store, log=run_log or (lambda s: None), on_created=tag)
            point.status = "succeeded"
        except KeyboardInterrupt:
            point.status = "interrupted"
            raise
        except Exception as e:  # recorded in the registry by pipeline.run; the sweep goes on
            point.status, point.error = "failed", f"{type(e).__name__}: {e}"
            log(f"  failed: {point.error}")
    return sweep
