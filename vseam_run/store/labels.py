"""Tags, notes and sweep ids of runs (the ``run_labels`` table), and removing runs.

Kept apart from `RunStore` so run bookkeeping and labels can change independently; it
uses the store's own transactions, so every write is durable at once like the rest.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import delete, select

from vseam_run.store.runstore import RunStore, _utcnow
from vseam_run.store.schema import RunLabel

LABEL_KINDS = ("tag", "note", "sweep")


@dataclass
class Labels:
    """A run's labels, grouped by kind."""

    tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)


def add_label(store: RunStore, run_id: str, kind: str, value: str) -> bool:
    """Attach a label; returns False when the run already had it (tags and sweeps are sets)."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"unknown label kind {kind!r}; expected one of {', '.join(LABEL_KINDS)}")
    with store._tx() as session:
        store._run(session, run_id)
        if kind != "note":
            exists = session.scalars(
                select(RunLabel.id).where(RunLabel.run_id == run_id, RunLabel.kind == kind, RunLabel.value == value)
            ).first()
            if exists is not None:
                return False
        session.add(RunLabel(run_id=run_id, kind=kind, value=value, created_at=_utcnow()))
    return True


def remove_label(store: RunStore, run_id: str, kind: str, value: str) -> int:
    with store._tx() as session:
        result = session.execute(
            delete(RunLabel).where(RunLabel.run_id == run_id, RunLabel.kind == kind, RunLabel.value == value)
        )
        return int(result.rowcount or 0)


def labels(store: RunStore, run_ids: list[str]) -> dict[str, Labels]:
    """Labels of several runs with one query, each run present (empty when unlabelled)."""
    out: dict[str, Labels] = defaultdict(Labels)
    for run_id in run_ids:
        out[run_id] = Labels()
    if not run_ids:
        return dict(out)
    with store._tx() as session:
        rows = session.execute(
            select(RunLabel.run_id, RunLabel.kind, RunLabel.value)
            .where(RunLabel.run_id.in_(run_ids))
            .order_by(RunLabel.id)
        )
        for run_id, kind, value in rows:
            getattr(out[run_id], {"tag": "tags", "note": "notes", "sweep": "sweeps"}[kind]).append(value)
    return dict(out)


def runs_with(store: RunStore, kind: str, value: str) -> list[str]:
    """Ids of the runs carrying one label, oldest first."""
    with store._tx() as session:
        return list(
            session.scalars(
                select(RunLabel.run_id).where(RunLabel.kind == kind, RunLabel.value == value).order_by(RunLabel.id)
            )
        )


def delete_run(store: RunStore, run_id: str) -> None:
    """Remove a run's labels, then the run and everything recorded under it."""
    with store._tx() as session:
        session.execute(delete(RunLabel).where(RunLabel.run_id == run_id))
    store.delete_run(run_id)
