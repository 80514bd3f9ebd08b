"""Reusing another run's finished head search (``vseam sweep --reuse-search``).

A sweep over modulation policies repeats the same head search in every point. With reuse on,
a run takes the search of an earlier run **in the same registry** only when the *reuse key*
matches exactly. The key is a fingerprint of:

- the search stage's own fingerprint: the model (registry entry, weights, device type, dtype,
  torch / transformers versions), the search questions and their gold ids, the search settings
  and the batch size;
- the data stage's fingerprint (the data settings, seed, every question and split, the content
  of the input files);
- the edit settings and the seed;
- the code version of the search: the source text of the modules that compute it.

The run records where its search came from (document ``search.reused_from``: run id and key)
and writes the search's documents, metrics and heatmaps as a computed search would; the stored
outputs are the other run's, bit for bit. Runs with reuse on publish their key once their search
has finished, so later points of the sweep can find it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vseam_run.fingerprint import Fingerprint, fingerprint
from vseam_run.ledger import LEDGER_STAGE

KEY_STAGE = "search.reuse"
DOCUMENT = "search.reused_from"

# The modules whose code decides a head search's numbers.
_CODE = ("search/__init__.py", "search/scoring.py", "search/strategies.py", "search/uncertainty.py", "heads.py",
         "scoring.py", "vlm.py")


def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in _CODE:
        path = root / rel
        h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(missing)") + b"\0")
    return h.hexdigest()


def reuse_key(search_fp: Fingerprint, data_fp: Fingerprint, spec: Any) -> Fingerprint:
    return fingerprint(search=search_fp, data=data_fp, edit=spec.edit, seed=spec.seed, code=code_version())


def find(store: Any, run_id: str, model_name: str | None, key: Fingerprint, search_fp: Fingerprint) -> tuple[str, Any] | None:
    """(run id, stored search outputs) of the newest other run that published ``key`` and whose
    finished search stage has exactly ``search_fp``; None when there is none."""
    for rec in store.list_runs():
        if rec.id == run_id or rec.model_name != model_name:
            continue
        if key.value not in store.load_checkpoints(rec.id, KEY_STAGE):
            continue
        entry = store.load_checkpoints(rec.id, LEDGER_STAGE).get("search")
        if entry and entry.get("fingerprint") == search_fp.value and entry.get("outputs") is not None:
            return rec.id, entry["outputs"]
    return None


def publish(store: Any, run_id: str, key: Fingerprint) -> None:
    store.save_checkpoint(run_id, KEY_STAGE, key.value, {"parts": key.parts})
