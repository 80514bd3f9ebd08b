"""Findings across runs: head-score bootstrap, compare, share, labels, rm, exports and the API.

Most tests build registries through the store API with planted head effects, so the expected
answer is known by construction (no model needed); one test runs a real two-point sweep of a
tiny model end to end.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vseam_run import api, findings
from vseam_run.cli.main import cli
from vseam_run.search.scoring import head_matrices, ranked, score
from vseam_run.search.uncertainty import (
    _weighted_matrices,
    decode_effects,
    encode_effects,
    head_uncertainty,
    top_mask,
)
from vseam_run.store import RunStore
from vseam_run.store.labels import add_label, labels

L, H = 4, 6


def call(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- bootstrap ---------------------------------------------------------------------------------


def test_weighted_matrices_equal_head_matrices_of_the_resampled_questions() -> None:
    rng = np.random.default_rng(0)
    effects = rng.normal(0, 0.1, (9, L, H))
    correct = rng.random(9) < 0.6
    idx = rng.integers(0, 9, size=(5, 9))
    weights = np.stack([np.bincount(i, minlength=9) for i in idx]).astype(float)
    pos, neg, signed, pos_net, neg_net = _weighted_matrices(effects, correct, weights)
    for b, i in enumerate(idx):
        p, n, s = head_matrices(effects[i], correct[i])
        np.testing.assert_allclose(pos[b], p, atol=1e-12)
        np.testing.assert_allclose(neg[b], n, atol=1e-12)
        np.testing.assert_allclose(signed[b], s, atol=1e-12)
        e, c = effects[i], correct[i]
        np.testing.assert_allclose(pos_net[b], e[c].mean(0) if c.any() else 0, atol=1e-12)
        np.testing.assert_allclose(neg_net[b], -e[~c].mean(0) if (~c).any() else 0, atol=1e-12)


def test_top_mask_is_the_search_top_list_rule() -> None:
    rng = np.random.default_rng(1)
    m = np.round(rng.normal(0, 1, (L, H)), 1)  # rounding makes ties
    m[0, :3] = 0.7
    allowed = rng.random((L, H)) < 0.7
    for k in (1, 3, 10, 30):
        for al in (None, allowed):
            expected = {(l, h) for l, h, _ in ranked(m, k, al)}
            mask = top_mask(m, k, al)
            assert {(int(l), int(h)) for l, h in zip(*np.nonzero(mask))} == expected


def test_head_uncertainty_intervals_and_stability() -> None:
    rng = np.random.default_rng(2)
    q = 60
    correct = np.arange(q) % 3 != 0
    effects = rng.normal(0, 0.01, (q, L, H))
    effects[correct, 1, 2] += 0.2  # a strong positive head
    effects[~correct, 3, 0] -= 0.3  # a strong negative head
    u = head_uncertainty(effects, correct, "subset", 3, n_boot=300, seed=0)
    pos, neg, signed = head_matrices(effects, correct)
    for kind, point in (("positive", pos), ("negative", neg), ("signed", signed)):
        assert (u.low[kind] <= point + 1e-12).all() and (point <= u.high[kind] + 1e-12).all()
    assert u.excludes_zero("positive")[1, 2] and u.excludes_zero("negative")[3, 0]
    # Noise heads: their ReLU means are > 0 in every resample, but their mean effect is not.
    assert u.low["positive"][0, 0] > 0 and u.excludes_zero("positive").sum() <= 3
    assert u.stability["positive"][1, 2] == 1.0 and u.stability["negative"][3, 0] == 1.0
    # The positive list has k = 3 entries per resample, spread over noise heads otherwise.
    assert u.stability["positive"].sum() == pytest.approx(3.0)
    # Identical questions: every resample is the same, the interval collapses to the point.
    same = np.repeat(effects[:1], 10, axis=0)
    v = head_uncertainty(same, np.ones(10, bool), "subset", 3, n_boot=20)
    np.testing.assert_allclose(v.low["positive"], v.high["positive"])
    back = type(u).from_json(json.loads(json.dumps(u.to_json())))
    np.testing.assert_allclose(back.high["signed"], u.high["signed"])


def test_effects_document_roundtrip_is_exact_float32() -> None:
    rng = np.random.default_rng(3)
    e = rng.normal(0, 0.1, (5, L, H)).astype(np.float32)
    doc = json.loads(json.dumps(encode_effects(list("abcde"), e, np.array([1, 0, 1, 1, 0], bool), np.ones(5), None)))
    back = decode_effects(doc)
    assert back.qids == list("abcde") and back.correct.tolist() == [True, False, True, True, False]
    assert np.array_equal(back.effects, e)


# --- statistics ----------------------------------------------------------------------------------


def test_expected_overlap_matches_simulation() -> None:
    rng = np.random.default_rng(4)
    n, a, b = 24, 5, 7
    sims = []
    for _ in range(20000):
        x = set(rng.choice(n, a, replace=False).tolist())
        y = set(rng.choice(n, b, replace=False).tolist())
        sims.append((len(x & y), len(x & y) / len(x | y)))
    sims = np.array(sims)
    assert findings.expected_overlap(a, b, n, "count") == pytest.approx(a * b / n)
    assert sims[:, 0].mean() == pytest.approx(a * b / n, abs=0.03)
    assert findings.expected_overlap(a, b, n, "jaccard") == pytest.approx(sims[:, 1].mean(), abs=0.005)
    assert findings.expected_overlap(n, n, n, "jaccard") == 1.0


def test_spearman_and_ranks() -> None:
    assert findings.rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    a = np.arange(12.0).reshape(3, 4)
    assert findings.spearman(a, a ** 3) == pytest.approx(1.0)
    assert findings.spearman(a, -a) == pytest.approx(-1.0)
    assert findings.spearman(a, np.zeros_like(a)) is None


# --- a registry with planted heads ---------------------------------------------------------------

SPEC = """\
name: {name}
model: toy-llava
seed: {seed}
workdir: {workdir}
data: {{source: toyworld, level: {level}}}
search: {{strategy: exact, scoring: subset, top_k: 3}}
"""


def planted_run(store: RunStore, workdir: Path, level: str, seed: int, pos_heads, neg_heads, q: int = 40,
                test_correct: list[bool] | None = None, wrong_first: bool = False) -> str:
    """A succeeded run whose search found `pos_heads` (on correct questions) and `neg_heads`."""
    rng = np.random.default_rng(seed * 31 + len(level))
    correct = np.arange(q) % 4 != 0
    effects = rng.normal(0, 0.002, (q, L, H))
    for i, (l, h) in enumerate(pos_heads):
        effects[correct, l, h] += 0.1 - 0.01 * i
    for i, (l, h) in enumerate(neg_heads):
        effects[~correct, l, h] -= 0.2 - 0.01 * i
    run_id = store.create_run(name=f"{level}-{seed}", spec_yaml=SPEC.format(name=f"{level}-{seed}", seed=seed, level=level,
                                                                           workdir=workdir),
                              spec_hash=f"h{level}{seed}", model_name="toy-llava", seed=seed)
    m = score(effects, correct, "subset", 3)
    store.put_document(run_id, "heads", {**m.to_json(), "strategy": "exact", "scoring": "subset"})
    store.put_document(run_id, "search.effects", encode_effects([f"q{i}" for i in range(q)], effects, correct, np.ones(q)))
    store.put_document(run_id, "heads.uncertainty", head_uncertainty(effects, correct, "subset", 3, n_boot=50).to_json())
    store.log_metrics(run_id, {"baseline.accuracy": 0.8 + 0.01 * seed, "time.search": 3.0 + seed, "search.seconds": 2.0})
    if test_correct is not None:
        store.log_question_results(run_id, "eval.test.modulated", [
            {"qid": f"t{i}", "gold": "yes", "pred": "yes" if c else "no", "correct": c} for i, c in enumerate(test_correct)])
    folder = workdir / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "x.txt").write_text("artifact")
    store.add_artifact(run_id, "note", folder / "x.txt")
    store.set_status(run_id, "succeeded")
    return run_id


@pytest.fixture
def planted(tmp_path: Path) -> tuple[str, dict[str, list[str]]]:
    """Six runs: per level the same positive heads (different between levels); the same negative
    heads everywhere. Two runs per level, each tagged with the sweep 'sw'."""
    db = str(tmp_path / "runs.db")
    pos = {"object": [(0, 1), (1, 2), (2, 3)], "attribute": [(3, 4), (2, 5), (1, 0)], "relation": [(0, 5), (3, 1), (2, 0)]}
    neg = [(3, 3), (0, 0), (1, 4)]
    ids: dict[str, list[str]] = {}
    with RunStore(db) as store:
        for level, seed in itertools.product(pos, (0, 1)):
            rid = planted_run(store, tmp_path, level, seed, pos[level], neg)
            add_label(store, rid, "sweep", "sw")
            ids.setdefault(level, []).append(rid)
    return db, ids


def test_share_finds_the_planted_structure(planted, capsys, tmp_path) -> None:
    db, ids = planted
    rc, out, err = call(capsys, "share", "--sweep", "sw", "--db", db, "--k", "3", "--boot", "50", "--json",
                        "-o", tmp_path / "share.png")
    assert rc == 0, err
    s = json.loads(out)
    assert len(s["runs"]) == 6 and s["by"] == "level"
    pos, neg = s["positive"], s["negative"]
    assert pos["within"]["observed"] == pytest.approx(1.0) and pos["across"]["observed"] == pytest.approx(0.0)
    assert neg["within"]["observed"] == pytest.approx(1.0) and neg["across"]["observed"] == pytest.approx(1.0)
    # Random sets of 3 of 24 heads overlap little: the hypergeometric Jaccard expectation.
    assert pos["within"]["random_expectation"] == pytest.approx(findings.expected_overlap(3, 3, L * H, "jaccard"))
    assert pos["within"]["pairs"] == 3 and pos["across"]["pairs"] == 12
    lo, hi = pos["within_minus_across"]["interval"]
    assert lo > 0.5 and hi <= 1.0  # planted effects are far above the noise: resampling keeps them
    assert Path(s["figure"]).is_file()
    rc, text, _ = call(capsys, "share", "--sweep", "sw", "--db", db, "--k", "3", "--boot", "20", "--by", "seed")
    assert rc == 0 and "within vs across seed" in text


def test_compare_many_runs(planted, capsys, tmp_path) -> None:
    db, ids = planted
    a, b, c = ids["object"][0], ids["object"][1], ids["attribute"][0]
    rc, out, err = call(capsys, "compare", a, b, c, "--db", db, "--json", "-o", tmp_path / "cmp.png")
    assert rc == 0, err
    res = json.loads(out)
    fields = {d["field"]: d["values"] for d in res["spec_diff"]}
    assert fields["data.level"] == ["object", "object", "attribute"] and fields["seed"] == [0, 1, 0]
    assert "search.top_k" not in fields  # equal everywhere: not shown
    names = {m["name"] for m in res["metrics"]}
    assert "baseline.accuracy" in names and "time.search" not in names and "search.seconds" not in names
    acc = next(m for m in res["metrics"] if m["name"] == "baseline.accuracy")
    assert acc["deltas"][1] == pytest.approx(0.01) and acc["deltas"][0] is None
    pairs = {(p["a"], p["b"]): p for p in res["heads"]}
    assert pairs[(a, b)]["positive"]["jaccard"] == 1.0 and pairs[(a, c)]["positive"]["jaccard"] == 0.0
    assert sorted(pairs[(a, c)]["negative"]["shared"]) == [[0, 0], [1, 4], [3, 3]]
    assert pairs[(a, b)]["spearman"]["positive"] > 0.3
    assert Path(res["figure"]).is_file()
    rc, out, _ = call(capsys, "compare", a, b, "--db", db, "--all", "--json")
    assert "time.search" in {m["name"] for m in json.loads(out)["metrics"]}
    rc, md, _ = call(capsys, "compare", a, b, c, "--db", db, "--md")
    assert rc == 0 and "| data.level | object | object | attribute |" in md and "## Top-3 heads" in md
    rc, text, _ = call(capsys, "compare", a, c, "--db", db)
    assert rc == 0 and "L3.H3" in text and "Jaccard" in text


def test_compare_paired_mcnemar_on_shared_test_questions(tmp_path, capsys) -> None:
    db = str(tmp_path / "runs.db")
    with RunStore(db) as store:
        # Same data and seed (so the same questions); modulation differs in spirit: 6 flips one way, 1 back.
        base = [True] * 10 + [False] * 10
        mod = [True] * 9 + [False] + [True] * 6 + [False] * 4
        a = planted_run(store, tmp_path, "object", 0, [(0, 1)], [(1, 1)], test_correct=base)
        b = planted_run(store, tmp_path / "b", "object", 0, [(0, 1)], [(1, 1)], test_correct=mod)
        other = planted_run(store, tmp_path / "c", "object", 1, [(0, 1)], [(1, 1)], test_correct=mod)
    (tmp_path / "b").mkdir(exist_ok=True)
    rc, out, err = call(capsys, "compare", a, b, other, "--db", db, "--json")
    assert rc == 0, err
    paired = json.loads(out)["paired"]
    # Runs a and b share data and seed; `other` has another world seed, so its q-ids are other questions.
    assert [(p["a"], p["b"]) for p in paired] == [(a, b)]
    p = paired[0]
    assert p["n"] == 20 and (p["a_only_correct"], p["b_only_correct"]) == (1, 6)
    from vseam_run.evaluate import mcnemar_exact_p

    assert p["mcnemar_p"] == pytest.approx(mcnemar_exact_p(np.array(base), np.array(mod)))
    assert sorted(f["qid"] for f in p["flipped"]) == sorted(["t9"] + [f"t{i}" for i in range(10, 16)])


# --- labels, runs filters, rm --------------------------------------------------------------------


def test_tag_note_filters_and_rm(planted, capsys, tmp_path) -> None:
    db, ids = planted
    obj0 = ids["object"][0]
    assert call(capsys, "tag", obj0, "paper", "fig3", "--db", db)[0] == 0
    assert call(capsys, "note", obj0, "the", "reference", "run", "--db", db)[0] == 0
    assert call(capsys, "tag", obj0, "bad tag", "--db", db)[0] == 2
    rc, out, _ = call(capsys, "runs", "--db", db, "--tag", "paper", "--json")
    listed = json.loads(out)
    assert [r["run_id"] for r in listed] == [obj0] and listed[0]["tags"] == ["paper", "fig3"]
    assert (listed[0]["level"], listed[0]["strategy"], listed[0]["seed"]) == ("object", "exact", 0)
    rc, out, _ = call(capsys, "runs", "--db", db, "--level", "attribute", "--sweep", "sw", "--json")
    assert sorted(r["run_id"] for r in json.loads(out)) == sorted(ids["attribute"])
    rc, out, _ = call(capsys, "runs", "--db", db, "--status", "failed")
    assert rc == 0 and "no runs" in out and "match" in out
    rc, out, _ = call(capsys, "show", obj0, "--db", db)
    assert "note: the reference run" in out and "tags: paper, fig3" in out and "L0.H1" in out and "spec: data toyworld" in out
    folder = tmp_path / "runs" / obj0
    assert folder.is_dir()
    rc, out, err = call(capsys, "rm", obj0, ids["object"][1], "--db", db)  # stdin is not a terminal: no question
    assert rc == 0, err
    assert f"removed run {obj0}" in out and str(folder) in out and not folder.exists()
    with RunStore(db) as store:
        assert store.count_runs() == 4 and labels(store, [obj0])[obj0].tags == []
    assert call(capsys, "rm", "no-such-run", "--db", db)[0] == 2


# --- exports and the API -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_formats_roundtrip(planted, capsys, tmp_path, fmt) -> None:
    db, ids = planted
    out_dir = tmp_path / f"exp_{fmt}"
    rc, out, err = call(capsys, "export", ids["object"][0], ids["relation"][1], "-o", out_dir, "--format", fmt, "--db", db)
    assert rc == 0, err
    read = {"csv": pd.read_csv, "parquet": pd.read_parquet, "jsonl": lambda p: pd.read_json(p, lines=True)}[fmt]
    heads = read(out_dir / f"heads.{fmt}")
    assert len(heads) == 2 * L * H
    assert {"run_id", "layer", "head", "positive", "negative", "signed", "positive_low", "positive_high"} <= set(heads.columns)
    row = heads[(heads.run_id == ids["object"][0]) & (heads.layer == 0) & (heads["head"] == 1)].iloc[0]
    assert bool(row.top_positive) and row.positive_low <= row.positive <= row.positive_high
    metrics = read(out_dir / f"metrics.{fmt}")
    assert set(metrics.name) >= {"baseline.accuracy", "time.search"}
    assert len(read(out_dir / f"runs.{fmt}")) == 2


def test_api_frames(planted, tmp_path) -> None:
    db, ids = planted
    runs = api.runs(db)
    assert len(runs) == 6 and set(runs.level) == {"object", "attribute", "relation"} and set(runs.sweeps) == {"sw"}
    heads = api.heads(db)
    # The planted negative heads are in every run's top list.
    shared = heads[heads.top_negative].groupby(["layer", "head"]).run_id.nunique()
    assert shared.loc[(3, 3)] == 6 and shared.loc[(0, 0)] == 6
    m = api.metrics(db, [ids["object"][0]])
    assert m.set_index("name").value["baseline.accuracy"] == pytest.approx(0.8)
    assert api.questions(db).empty and api.edits(db).empty


# --- sweep, end to end on a tiny model -----------------------------------------------------------

SWEEP_SPEC = """\
name: sweep-test
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 16}}}}
search: {{strategy: exact, scoring: signed, top_k: 3, bootstrap: 50}}
"""


def test_sweep_runs_the_grid_and_tags_it(capsys, tmp_path, monkeypatch, tiny_llava_entry) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SWEEP_SPEC.format(model=tiny_llava_entry))
    db = tmp_path / "runs.db"
    rc, out, _ = call(capsys, "sweep", spec, "--set", "data.level=object,attribute", "--set", "seed=0", "--dry-run")
    assert rc == 0 and "data.level=object seed=0" in out and "data.level=attribute seed=0" in out
    assert call(capsys, "sweep", spec, "--set", "data.level=object,nope", "--db", db)[0] == 2  # validated first
    assert not db.exists() or RunStore(db).count_runs() == 0
    rc, out, err = call(capsys, "sweep", spec, "--set", "data.level=object,attribute", "--db", db)
    assert rc == 0, out + err
    sweep_id = next(w.rstrip(":") for w in out.split() if w.startswith("sweep-"))
    rc, out, _ = call(capsys, "runs", "--db", db, "--sweep", sweep_id, "--json")
    listed = json.loads(out)
    assert sorted(r["level"] for r in listed) == ["attribute", "object"]
    assert all(r["status"] == "succeeded" and r["sweeps"] == [sweep_id] for r in listed)
    rc, out, err = call(capsys, "share", "--sweep", sweep_id, "--db", db, "--k", "3", "--boot", "20", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["positive"]["within"]["pairs"] == 0 and s["positive"]["across"]["pairs"] == 1
    assert s["positive"]["across"]["interval"][0] is not None  # per-question effects were stored by the run
    with RunStore(db) as store:
        rid = listed[0]["run_id"]
        unc = store.get_document(rid, "heads.uncertainty")
        assert unc["n_boot"] == 50 and len(unc["low"]["signed"]) == 3
        eff = decode_effects(store.get_document(rid, "search.effects"))
        heads = store.get_document(rid, "heads")
        # The stored effects reproduce the stored scores exactly (float32 storage of float64 effects).
        np.testing.assert_allclose(eff.effects.astype(np.float64).mean(0), np.array(heads["signed"]), atol=1e-7)
