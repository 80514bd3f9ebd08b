"""torchrun: a run split over 2 CPU ranks (gloo) records exactly what a one-process run records —
every metric but the timings, every document, every per-question row — also when a rank dies in
the middle of the head search and the run is resumed (again on 2 ranks).

The ranks are started with `python -m torch.distributed.run` (torchrun), as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_resume import Snapshot, run_cli
from vseam_run import dist
from vseam_run.store import RunStore

ROOT = Path(__file__).resolve().parents[1]

# batch_size 4 and ~5 questions per split: several batches per split, so both ranks score some
# (with a shorter last batch), and every sharded stage runs: baseline, edits (made and scored),
# exact tracing of 6 pairs (2 batches) with the lens, exact search, λ selection on val,
# evaluation on test (both protocols, random-head controls), ablation validation. (An
# evaluate.extra set is scored by the same ScoredSet.) The killed-and-resumed run also streams.
SPEC = """\
name: dist
model: {model}
device: cpu
batch_size: 4
data: {{source: toyworld, toyworld: {{images: 8}}, limit: 16}}
edit: {{recipe: procedural}}
trace: {{margin: 0.0, pairs: 6, components: [resid], batch_rows: 32}}
search: {{strategy: exact, scoring: signed}}
modulation: {{policy: linear, lam: auto, grid: [4.0]}}
evaluate:
  bootstrap: 100
  protocol: both
  control_draws: 2
  ablation: {{k: 2, trials: 1}}
"""


def torchrun(folder: Path, *args: str, script: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m vseam_run ARGS` (or a script) in `folder`."""
    target = [str(ROOT / "tests" / script)] if script else ["-m", "vseam_run"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *target, *args]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "2",
                "VSEAM_QUIET": "1", "HF_HUB_OFFLINE": "1", "VSEAM_DIST_TIMEOUT": "60", **(env or {})}
    return subprocess.run(cmd, cwd=folder, env=full_env, capture_output=True, text=True, timeout=300)


def the_run(db: Path) -> str:
    with RunStore(db) as store:
        (run,) = store.list_runs()
    return run.id


def comparable(snap: Snapshot) -> tuple:
    """What must be equal: metrics (timings aside), documents, per-question rows without row ids."""
    rows = {s: [{k: v for k, v in r.items() if k not in ("id", "run_id")} for r in rs] for s, rs in snap.rows.items()}
    # The trace's timing (metric trace.seconds, the document's `seconds`) is a timing like the others.
    metrics = {k: v for k, v in snap.metrics.items() if k != "trace.seconds"}
    docs = {k: {f: v for f, v in d.items() if f != "seconds"} if isinstance(d, dict) else d for k, d in snap.documents.items()}
    return snap.status, metrics, docs, rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_llava_entry) -> Path:
    path = tmp_path_factory.mktemp("dist")
    (path / "spec.yaml").write_text(SPEC.format(model=tiny_llava_entry))
    return path


@pytest.fixture(scope="module")
def one_process(folder) -> Snapshot:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        rc, out = run_cli("run", "spec.yaml", "--db", "one.db", "--run-id-file", "ids/one.run")
    assert rc == 0, out
    snap = Snapshot.of(folder / "one.db", the_run(folder / "one.db"))
    # What a job script reads to resume the run after a requeue (examples/slurm/vseam-job.sh).
    assert (folder / "ids" / "one.run").read_text() == the_run(folder / "one.db") + "\n"
    # Worth comparing only if every sharded stage ran and the modulation changed something.
    assert {"baseline", "edited", "eval.test.baseline", "eval.test.modulated", "eval.in_sample.modulated",
            } <= set(snap.rows)
    assert {"heads", "search.effects", "ablation", "lambda_selection", "trace", "edits"} <= set(snap.documents)
    assert snap.documents["trace"]["pairs"] == 6 and snap.documents["trace"]["lens"] is not None
    base = {r["qid"]: r["gold_prob"] for r in snap.rows["eval.test.baseline"]}
    assert any(r["gold_prob"] != base[r["qid"]] for r in snap.rows["eval.test.modulated"])
    return snap


def test_two_ranks_equal_one_process(folder, one_process):
    proc = torchrun(folder, "run", "spec.yaml", "--db", "two.db")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = folder / "two.db"
    assert comparable(Snapshot.of(db, the_run(db))) == comparable(one_process)
    # Rank 0 alone reported: one summary, not two.
    assert proc.stdout.count("succeeded") == 1


def test_a_dead_rank_fails_the_run_and_resume_finishes_it(folder, one_process):
    # Streamed (spec `stream`): one batch in memory at a time in every stage, the same numbers.
    proc = torchrun(folder, "run", "spec.yaml", "--db", "killed.db", "--set", "stream=true", script="dist_kill.py",
                    env={"DIST_KILL_RANK": "1", "DIST_KILL_LAYER": "1"})
    assert proc.returncode != 0
    db = folder / "killed.db"
    run_id = the_run(db)
    with RunStore(db) as store:
        rec = store.get_run(run_id)
        finished = list(store.load_checkpoints(run_id, "stage"))  # the ledger: finished stages
    # torchrun stops the surviving rank (SIGTERM) or its collective fails: either way the run
    # is recorded as ended, with a message, not left 'running'.
    assert rec.status in ("failed", "interrupted") and rec.error_message, (rec.status, proc.stderr[-2000:])
    assert "search" not in finished and {"baseline", "edit", "trace"} <= set(finished)
    resumed = torchrun(folder, "run", "--resume", run_id, "--db", "killed.db")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "finished earlier" in resumed.stdout  # the stages done before the failure were not redone
    assert comparable(Snapshot.of(db, run_id)) == comparable(one_process)


def test_sharded_calls_equal_one_process(tmp_path, tiny_llava_entry):
    """What the run above does not reach (reference search, learned scales, attribution and
    reference tracing, the lens): sharded over 2 ranks == computed alone, bit for bit, on
    effects far from zero; learned scales are fitted by rank 0 only (tests/dist_units.py)."""
    out = tmp_path / "verdicts.json"
    proc = torchrun(tmp_path, str(tiny_llava_entry), str(out), script="dist_units.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdicts = json.loads(out.read_text())
    assert len(verdicts) == 2 and len(verdicts[0]) == 11
    for rank, v in enumerate(verdicts):
        assert all(v.values()), (rank, {k: ok for k, ok in v.items() if not ok})


def test_round_robin_shares_cover_every_unit_once():
    worlds = [dist.World(r, 3) for r in range(3)]
    shares = [w.mine(8) for w in worlds]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert dist.World().mine(3) == [0, 1, 2] and not dist.World().active
