"""The run registry as pandas DataFrames, for notebooks and scripts.

Every function takes the registry (a path, an SQLAlchemy URL or an open `RunStore`) and
optionally which runs (ids, unique prefixes or ``latest``; all runs when omitted), and
returns a long-form DataFrame with a ``run_id`` column, ready for ``groupby`` / ``pivot``::

    from vseam_run import api
    h = api.heads("runs.db")
    h[h.top_positive].groupby(["layer", "head"]).run_id.count()

`export_tables` writes the same frames as CSV, Parquet or JSON-lines files (`vseam export`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from vseam_run.store import RunStore

FORMATS = ("csv", "parquet", "jsonl")
TABLES = ("runs", "metrics", "heads", "questions", "edits")

Registry = "str | Path | RunStore"


@contextlib.contextmanager
def _open(db: Any) -> Iterator[RunStore]:
    if isinstance(db, RunStore):
        yield db
        return
    store = RunStore(str(db), must_exist=True)
    try:
        yield store
    finally:
        store.close()


def _ids(store: RunStore, run_ids: Sequence[str] | None) -> list[str]:
    if run_ids is None:
        return [r.id for r in reversed(store.list_runs())]  # oldest first
    return [store.resolve(r) for r in run_ids]


def runs(db: Any = "runs.db", run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: id, name, status, model, level, strategy, seed, times, tags, sweeps, notes."""
    from vseam_run.cli.runs import run_facets
    from vseam_run.store.labels import labels

    with _open(db) as store:
        ids = _ids(store, run_ids)
        records = [store.get_run(i) for i in ids]
        labs = labels(store, ids)
    rows = [{
        "run_id": r.id, "name": r.name, "status": r.status, "model": r.model_name, **run_facets(r),
        "device": r.device, "created_at": r.created_at, "finished_at": r.finished_at, "duration_s": r.duration_s,
        "spec_hash": r.spec_hash, "tags": ",".join(labs[r.id].tags), "sweeps": ",".join(labs[r.id].sweeps),
        "notes": " | ".join(labs[r.id].notes),
    } for r in records]
    return pd.DataFrame(rows, columns=["run_id", "name", "status", "model", "level", "strategy", "seed", "device",
                                       "created_at", "finished_at", "duration_s", "spec_hash", "tags", "sweeps", "notes"])


def metrics(db: Any = "runs.db", run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Long form: run_id, name, value (NaN where the run stored no number)."""
    with _open(db) as store:
        records = [store.get_run(i) for i in _ids(store, run_ids)]
    rows = [{"run_id": r.id, "name": n, "value": v} for r in records for n, v in sorted(r.metrics.items())]
    return pd.DataFrame(rows, columns=["run_id", "name", "value"])


_HEAD_COLUMNS = ["run_id", "layer", "head", "positive", "negative", "signed",
                 "positive_low", "positive_high", "negative_low", "negative_high", "signed_low", "signed_high",
                 "top_positive", "top_negative", "stability_positive", "stability_negative", "verified"]


def heads(db: Any = "runs.db", run_ids: Sequence[str] | None = None, k: int | None = None) -> pd.DataFrame:
    """Long form, one row per (run, layer, head): the three scores, their bootstrap intervals
    (NaN for runs searched before intervals were kept), top-k membership (k = the run's
    search.top_k unless given), top-k stability, and whether the head was scored exactly."""
    from vseam_run.findings import load_head_run

    frames = []
    with _open(db) as store:
        for run_id in _ids(store, run_ids):
            h = load_head_run(store, store.get_run(run_id))
            if h is None:
                continue
            top_k = k or int((h.run.spec().get("search") or {}).get("top_k", 10))
            pos_top, neg_top = h.top_masks(top_k)
            layers, n_heads = h.shape
            ll, hh = np.meshgrid(range(layers), range(n_heads), indexing="ij")
            u = h.uncertainty
            nan = np.full(h.shape, np.nan)
            col = {
                "run_id": run_id, "layer": ll.ravel(), "head": hh.ravel(),
                "positive": h.positive.ravel(), "negative": h.negative.ravel(), "signed": h.signed.ravel(),
                "top_positive": pos_top.ravel(), "top_negative": neg_top.ravel(),
                "verified": (h.verified if h.verified is not None else np.ones(h.shape, bool)).ravel(),
            }
            for kind in ("positive", "negative", "signed"):
                col[f"{kind}_low"] = (u.low[kind] if u else nan).ravel()
                col[f"{kind}_high"] = (u.high[kind] if u else nan).ravel()
            for kind in ("positive", "negative"):
                col[f"stability_{kind}"] = (u.stability[kind] if u else nan).ravel()
            frames.append(pd.DataFrame(col, columns=_HEAD_COLUMNS))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_HEAD_COLUMNS)


_QUESTION_COLUMNS = ["run_id", "stage", "qid", "split", "category", "gold", "pred", "correct", "gold_prob"]


def questions(db: Any = "runs.db", run_ids: Sequence[str] | None = None, stage: str | None = None) -> pd.DataFrame:
    """Per-question results: run_id, stage (baseline, edited, eval.test.baseline, ...), qid, split,
    category, gold, pred, correct, gold_prob."""
    rows = []
    with _open(db) as store:
        for run_id in _ids(store, run_ids):
            rows += [{"run_id": run_id, **{k: r[k] for k in _QUESTION_COLUMNS[1:]}} for r in store.question_results(run_id, stage)]
    return pd.DataFrame(rows, columns=_QUESTION_COLUMNS)


def edits(db: Any = "runs.db", run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The counterfactual edits of each run (its edit manifest), with the model's answer and
    gold probability on the original and on the edited image where they were scored."""
    rows: list[dict[str, Any]] = []
    with _open(db) as store:
        for run_id in _ids(store, run_ids):
            record = store.get_run(run_id)
            manifest = next((a.path for a in record.artifacts if a.kind == "edits.manifest"), None)
            if manifest is None or not Path(manifest).is_file():
                continue
            base = {r["qid"]: r for r in store.question_results(run_id, "baseline")}
            edited = {r["qid"]: r for r in store.question_results(run_id, "edited")}
            for e in json.loads(Path(manifest).read_text()):
                qid = e.get("qid")
                b, d = base.get(qid, {}), edited.get(qid, {})
                rows.append({"run_id": run_id, **e, "pred_before": b.get("pred"), "gold_prob_before": b.get("gold_prob"),
                             "pred_after": d.get("pred"), "gold_prob_after": d.get("gold_prob"), "correct_after": d.get("correct")})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run_id", "qid"])


def _json_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Lists and dicts in object columns (an edit's boxes, scales) as JSON text: a CSV cell holding
    a Python repr (`{'x': 1.0}`) is not readable back by anything but Python's eval."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict, tuple)) else v)
    return out


def _write(df: pd.DataFrame, path: Path, fmt: str) -> Path:
    if fmt == "csv":
        _json_cells(df).to_csv(path, index=False)
    elif fmt == "parquet":
        out = df.copy()
        for c in out.columns:  # mixed-type object columns (e.g. answers) as text, so Arrow accepts them
            if out[c].dtype == object:
                out[c] = out[c].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else
                                    (v if isinstance(v, str) else json.dumps(v, default=str)))
        out.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True, date_format="iso", default_handler=str)
    return path


def export_tables(db: Any, run_ids: Sequence[str], out_dir: Path, fmt: str = "csv") -> dict[str, tuple[Path, int]]:
    """Write runs, metrics, heads, questions and edits of `run_ids` into `out_dir`; returns
    table → (file, rows)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}[fmt]
    written = {}
    with _open(db) as store:
        for name, fn in (("runs", runs), ("metrics", metrics), ("heads", heads), ("questions", questions), ("edits", edits)):
            df = fn(store, run_ids)
            written[name] = (_write(df, out_dir / f"{name}.{ext}", fmt), len(df))
    return written
