"""Exact resume for the rival policies (ablate, steer, image_attention): a run interrupted before
its modulation is chosen (the choice is made again on the resume), resumed and interrupted again in
the middle of the held-out evaluation (the chosen intervention now comes back from the ledger's
saved state), then resumed to the end, records exactly what an uninterrupted run records — metrics
but timings, documents, rows, artifacts. (Both interruptions in one run keep the cost at two runs
per policy.)

On the shipped toy LLaVA (it answers most questions right, so steer has both correct and wrong
search answers to fit on) and a small toy world. Each policy's settings make its intervention
change something (checked), so equality is not the identity's trivial equality.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_resume import Snapshot, after_rows, after_stage, run_cli
from vseam_run.store import RunStore

SPEC = """\
name: resume-{policy}
model: toy-llava
device: cpu
seed: 0
batch_size: 8
data: {{source: toyworld, level: relation, toyworld: {{images: 24}}}}
edit: {{recipe: procedural}}
search: {{strategy: exact, scoring: subset, ablation: mean, top_k: 4}}
modulation: {modulation}
evaluate: {{bootstrap: 100, protocol: both, control_draws: 2}}
"""

# Settings under which each policy changes the model (no strength 0 on its grid), with a
# selection on val that runs where the policy has one.
POLICIES = {
    "ablate": "{policy: ablate, k: 2}",
    "steer": "{policy: steer, k_grid: [2], grid: [1.0, 2.0]}",
    "image_attention": "{policy: image_attention, grid: [0.5, 1.0], layer_grid: [0.0, 0.5]}",
}

@pytest.fixture(scope="module", params=list(POLICIES))
def uninterrupted(request, tmp_path_factory) -> tuple[str, Path, Snapshot]:
    policy = request.param
    folder = tmp_path_factory.mktemp(f"resume-{policy}")
    (folder / "spec.yaml").write_text(SPEC.format(policy=policy, modulation=POLICIES[policy]))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        rc, out = run_cli("run", "spec.yaml", "--db", "full.db")
        assert rc == 0, out
    with RunStore(folder / "full.db") as store:
        (run,) = store.list_runs()
    snap = Snapshot.of(folder / "full.db", run.id)
    assert snap.documents["modulation"]["kind"] == policy
    assert snap.metrics["modulation.heads_changed"] > 0
    base = {r["qid"]: r["gold_prob"] for r in snap.rows["eval.in_sample.baseline"]}
    assert any(r["gold_prob"] != base[r["qid"]] for r in snap.rows["eval.in_sample.modulated"]), "modulation changed nothing"
    return policy, folder, snap


def test_policy_resumes_to_identical_numbers(uninterrupted, monkeypatch, tmp_path):
    policy, folder, full = uninterrupted
    monkeypatch.chdir(folder)
    db = tmp_path / "runs.db"
    with monkeypatch.context() as mp:
        after_stage("search")(mp)
        rc, out = run_cli("run", "spec.yaml", "--db", db)
    assert rc == 130, out
    with RunStore(db) as store:
        (run,) = store.list_runs()
        assert run.status == "interrupted" and "modulation" not in store.documents(run.id)
    with monkeypatch.context() as mp:
        after_rows("eval.test.baseline")(mp)
        rc, out = run_cli("run", "--resume", run.id, "--db", db)
    assert rc == 130, out
    with RunStore(db) as store:
        docs = store.documents(run.id)
        assert store.get_run(run.id).status == "interrupted" and "modulation" in docs and "eval.test.summary" not in docs
    rc, out = run_cli("run", "--resume", run.id, "--db", db)
    assert rc == 0, out
    resumed = Snapshot.of(db, run.id)
    assert resumed.status == "succeeded"
    assert resumed.metrics == full.metrics
    assert resumed.documents == full.documents
    assert resumed.rows.keys() == full.rows.keys()
    for stage, rows in full.rows.items():
        assert resumed.rows[stage] == rows, (policy, stage)
    assert resumed.artifacts == full.artifacts
