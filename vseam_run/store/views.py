"""JSON-ready views of run records and run-to-run comparisons.

Shared by `vseam runs`, `show` and `compare` (and by anyone scripting the registry), so
the three commands agree on field names. Pure functions over records: no SQL here.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from vseam_run.store.records import RunRecord

# Keys `run_json` owns at the top level; a document with one of these keys goes under
# "documents" instead so it can neither hide nor be hidden by a run field.
RESERVED_KEYS = frozenset(
    {
        "run_id", "name", "status", "created_at", "finished_at", "duration_s", "device", "seed",
        "model", "model_hash", "model_entry", "spec", "spec_hash", "versions", "resumed_from",
        "resume_count", "summary", "metrics", "artifacts", "question_results", "error", "documents",
        "stored_status", "host", "pid", "heartbeat_at",
    }
)  # fmt: skip

# Metrics worth a column in `vseam runs`, most important first (names as written by
# `vseam_run.evaluate`); glob patterns because the split name varies. The modulated
# accuracy on held-out questions is the method's result, so it goes first.
HEADLINE_PATTERNS = (
    "eval.*.accuracy.modulated",
    "eval.*.accuracy.baseline",
    "baseline.accuracy",
)
MAX_HEADLINE_METRICS = 4

_MISSING = object()


def jsonable(obj: Any) -> Any:
    """Replace NaN and infinities with None, recursively: strict JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def run_list_item(run: RunRecord) -> dict[str, Any]:
    """One entry of `vseam runs --json`."""
    return jsonable(
        {
            "run_id": run.id,
            "name": run.name,
            # `lost`: stored as running, but its process is gone or its heartbeat is stale.
            "status": run.shown_status(),
            "model": run.model_name,
            "device": run.device,
            "created_at": _iso(run.created_at),
            "finished_at": _iso(run.finished_at),
            "duration_s": run.duration_s,
            "metrics": dict(run.metrics),
        }
    )


def run_json(
    run: RunRecord,
    documents: dict[str, Any] | None = None,
    question_results: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The full `vseam show --json` object: run fields, spec as a dict, then every document.

    Documents sit at the top level under their own key (``"heads": {...}``) so scripts
    can write ``jq .heads``; one whose key collides with a run field goes under
    ``"documents"``.
    """
    model_entry = yaml.safe_load(run.model_entry_yaml) if run.model_entry_yaml else None
    out: dict[str, Any] = {
        "run_id": run.id,
        "name": run.name,
        "status": run.shown_status(),
        "stored_status": run.status,
        "host": run.host,
        "pid": run.pid,
        "heartbeat_at": _iso(run.heartbeat_at),
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
        "duration_s": run.duration_s,
        "device": run.device,
        "seed": run.seed,
        "model": run.model_name,
        "model_hash": run.model_hash,
        "model_entry": model_entry,
        "spec": run.spec(),
        "spec_hash": run.spec_hash,
        "versions": dict(run.versions),
        "resumed_from": run.resumed_from,
        "resume_count": run.resume_count,
        "summary": run.summary,
        "metrics": dict(run.metrics),
        "artifacts": [{"kind": a.kind, "path": a.path, "sha256": a.sha256, "state": a.state()} for a in run.artifacts],
        "question_results": dict(question_results or {}),
        "error": (
            {"message": run.error_message, "traceback": run.error_traceback}
            if run.error_message is not None or run.error_traceback is not None
            else None
        ),
    }
    clashing: dict[str, Any] = {}
    for key, value in (documents or {}).items():
        if key in RESERVED_KEYS:
            clashing[key] = value
        else:
            out[key] = value
    if clashing:
        out["documents"] = clashing
    return jsonable(out)


def headline_metrics(runs: list[RunRecord]) -> list[str]:
    """The headline metric names present in any of ``runs``, most important first.

    Falls back to any ``*accuracy*`` metric so runs from custom pipelines still show a number.
    """
    present = sorted({name for run in runs for name in run.metrics})
    chosen: list[str] = []
    for pattern in HEADLINE_PATTERNS:
        chosen += [n for n in present if fnmatch.fnmatchcase(n, pattern) and n not in chosen]
    if not chosen:
        chosen = [n for n in present if "accuracy" in n.split(".")]
    return chosen[:MAX_HEADLINE_METRICS]


# ---------------------------------------------------------------------- compare


@dataclass(frozen=True)
class FieldDiff:
    """One dotted spec path whose value differs between two runs (None when absent)."""

    field: str
    a: Any
    b: Any
    a_present: bool = True
    b_present: bool = True


@dataclass(frozen=True)
class MetricDelta:
    """A metric in either run; ``delta`` is b − a when both have a finite value."""

    name: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        if self.a is None or self.b is None:
            return None
        return self.b - self.a


@dataclass(frozen=True)
class RunComparison:
    """What changed from run A to run B: spec fields, environment, and metrics."""

    a: RunRecord
    b: RunRecord
    spec_diff: list[FieldDiff]
    env_diff: list[FieldDiff]
    metrics: list[MetricDelta]

    def to_json(self) -> dict[str, Any]:
        """The `vseam compare --json` object."""
        return jsonable(
            {
                "a": self.a.id,
                "b": self.b.id,
                "spec_diff": [{"field": d.field, "a": d.a, "b": d.b} for d in self.spec_diff],
                "env_diff": [{"field": d.field, "a": d.a, "b": d.b} for d in self.env_diff],
                "metrics": [{"name": m.name, "a": m.a, "b": m.b, "delta": m.delta} for m in self.metrics],
            }
        )


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted paths; lists of mappings/lists get ``[i]`` steps.

    A list of scalars stays one value (``layers: [10, 11]``), since its elements rarely
    mean anything one at a time. Empty containers are kept as values so "{} vs absent"
    still shows.
    """
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        out = {}
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _diff_maps(a: dict[str, Any], b: dict[str, Any]) -> list[FieldDiff]:
    diffs: list[FieldDiff] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va is _MISSING or vb is _MISSING or va != vb or type(va) is not type(vb):
            diffs.append(
                FieldDiff(
                    field=key,
                    a=None if va is _MISSING else va,
                    b=None if vb is _MISSING else vb,
                    a_present=va is not _MISSING,
                    b_present=vb is not _MISSING,
                )
            )
    return diffs


def _env(run: RunRecord) -> dict[str, Any]:
    """Run facts outside the spec that can still change results."""
    env: dict[str, Any] = {
        "model": run.model_name,
        "model_hash": run.model_hash,
        "device": run.device,
        "seed": run.seed,
    }
    env.update({f"versions.{k}": v for k, v in run.versions.items()})
    return env


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def compare_runs(a: RunRecord, b: RunRecord) -> RunComparison:
    """Spec differences (dotted paths), environment differences and per-metric deltas b − a."""
    names = sorted(set(a.metrics) | set(b.metrics))
    return RunComparison(
        a=a,
        b=b,
        spec_diff=_diff_maps(flatten(a.spec()), flatten(b.spec())),
        env_diff=_diff_maps(_env(a), _env(b)),
        metrics=[MetricDelta(n, _finite(a.metrics.get(n)), _finite(b.metrics.get(n))) for n in names],
    )
