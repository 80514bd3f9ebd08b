"""Exact resume for the rival policies (ablate, steer, image_attention): a run interrupted before
its modulation is chosen (the choice is made again on the resume), resumed and interrupted again in
the middle of the held-out evaluation (the chosen intervention now comes back from the ledger's
saved state), then resumed to the end, records exactly what an uninterrupted run records — metrics
but timings, documents, rows, artifacts. (Both interruptions in one run keep the cost at two runs
per policy.) The same runs check `vseam compare --policies`: every number it shows recomputed
from the stored rows.

On the shipped toy LLaVA (it answers most questions right, so steer has both correct and wrong
search answers to fit on) and a small toy world. Each policy's settings make its intervention
change something (checked), so equality is not the identity's trivial equality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_resume import Snapshot, after_rows, after_stage, run_cli
from vseam_run.evaluate import compare_arms, mcnemar_exact_p
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

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, Snapshot]]]:
    """One uninterrupted run per policy, all in one registry (full.db)."""
    folder = tmp_path_factory.mktemp("rivals")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for policy, modulation in POLICIES.items():
            (folder / f"{policy}.yaml").write_text(SPEC.format(policy=policy, modulation=modulation))
            rc, out = run_cli("run", f"{policy}.yaml", "--db", "full.db")
            assert rc == 0, out
            with RunStore(folder / "full.db") as store:
                run = store.list_runs()[0]  # newest first
            snap = Snapshot.of(folder / "full.db", run.id)
            assert snap.documents["modulation"]["kind"] == policy
            assert snap.metrics["modulation.heads_changed"] > 0
            base = {r["qid"]: r["gold_prob"] for r in snap.rows["eval.in_sample.baseline"]}
            assert any(r["gold_prob"] != base[r["qid"]] for r in snap.rows["eval.in_sample.modulated"]), "changed nothing"
            runs[policy] = (run.id, snap)
    return folder, runs


@pytest.mark.parametrize("policy", list(POLICIES))
def test_policy_resumes_to_identical_numbers(finished, policy, monkeypatch, tmp_path):
    folder, runs = finished
    full = runs[policy][1]
    monkeypatch.chdir(folder)
    db = tmp_path / "runs.db"
    with monkeypatch.context() as mp:
        after_stage("search")(mp)
        rc, out = run_cli("run", f"{policy}.yaml", "--db", db)
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


# --- the comparison table ----------------------------------------------------------------------


def test_policy_table_numbers_are_the_stored_rows(finished):
    """`vseam compare --policies --json`: every number recomputed from the runs' stored rows and
    documents (accuracies, paired CI and McNemar p from the per-question rows, the control from its
    draws, heads changed from the intervention's head list)."""
    folder, runs = finished
    db = folder / "full.db"
    ids = [runs[p][0] for p in POLICIES]
    rc, out = run_cli("compare", "--policies", *reversed(ids), "--db", db, "--json")
    assert rc == 0, out
    (table,) = json.loads(out)["tables"]
    assert table["model"] == "toy-llava" and table["same_questions"]
    assert [r["policy"] for r in table["rows"]] == list(POLICIES)  # the fixed policy order, not the argument order
    with RunStore(db) as store:
        for row in table["rows"]:
            docs = store.documents(row["run_id"])
            assert row["heads_changed"] == len(docs["modulation"]["heads"]) > 0
            for key, prefix in (("held_out", "eval.test"), ("in_sample", "eval.in_sample")):
                got = row[key]
                base = store.question_results(row["run_id"], f"{prefix}.baseline")
                mod = store.question_results(row["run_id"], f"{prefix}.modulated")
                cmp = compare_arms(base, mod, n_boot=100, seed=0)
                assert got["n"] == len(base) == len(mod) > 0
                assert got["baseline"] == pytest.approx(np.mean([r["correct"] for r in base]), abs=1e-12)
                assert got["modulated"] == pytest.approx(np.mean([r["correct"] for r in mod]), abs=1e-12)
                assert got["gain"] == pytest.approx(got["modulated"] - got["baseline"], abs=1e-12)
                assert (got["ci_low"], got["ci_high"]) == pytest.approx((cmp.diff_ci.low, cmp.diff_ci.high), abs=1e-12)
                assert got["mcnemar_p"] == pytest.approx(mcnemar_exact_p(np.array([r["correct"] for r in base], bool),
                                                                         np.array([r["correct"] for r in mod], bool)))
                gains = docs[f"{prefix}.control"]["gains"]
                assert got["control_draws"] == len(gains) == 2
                assert got["control_gain_mean"] == pytest.approx(np.mean(gains), abs=1e-12)
                assert got["control_gain_sd"] == pytest.approx(np.std(gains), abs=1e-12)
    chosen = {r["policy"]: r["chosen"] for r in table["rows"]}
    assert chosen["ablate"]["k"] == 2
    # steer's choice is the val-best grid point (ties: the smaller α), as its selection recorded.
    with RunStore(db) as store:
        sel = store.documents(runs["steer"][0])["steer_selection"]
    best = max(sel, key=lambda p: (p["val_accuracy"], -p["alpha"]))
    assert (chosen["steer"]["k"], chosen["steer"]["alpha"]) == (best["k"], best["alpha"])
    assert chosen["steer"]["heads"] == "search" and chosen["image_attention"]["heads"] == "all"

    rc, md = run_cli("compare", "--policies", *ids, "--db", db, "--md")
    assert rc == 0 and md.count("\n| ablate |") == 1 and "held-out accuracy" in md


def test_policy_table_refuses_runs_without_a_modulation(tmp_path, capsys):
    from vseam_run.cli.main import cli

    with RunStore(tmp_path / "r.db") as store:
        rid = store.create_run(name="o", spec_yaml="name: o\n", spec_hash="h")
        store.set_status(rid, "succeeded")
    for argv, fragment in ((["compare", "--policies"], "name the runs, or give --sweep"),
                           (["compare", "--policies", rid], f"none of the runs recorded a modulation and its evaluation ({rid} has none)")):
        rc = cli([*argv, "--db", str(tmp_path / "r.db")])
        out, err = capsys.readouterr()
        assert rc == 2 and "Traceback" not in out + err and fragment in err, err
