"""Planting known heads (`vseam zoo plant`) and the recovery benchmark built on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vseam_run.cli.main import cli
from vseam_run.errors import VseamError
from vseam_run.heads import HeadEdit, edit_heads
from vseam_run.registry import load_entry_file
from vseam_run.zoo import plant as pl

from tests.conftest import load_vlm


def call(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc: int, out: str, err: str, *fragments: str) -> None:
    assert rc == 2, (rc, out, err)
    text = out + err
    assert "Traceback" not in text and 'File "' not in text, text
    for f in fragments:
        assert f in text, (f, text)


# ---- parsing and refusals ----------------------------------------------------------------------


def test_parse_head_kinds_and_undo_scales():
    assert pl.parse_head("0.3=-1") == pl.PlantedHead(0, 3, -1.0)
    assert pl.parse_head("L2.H5=3") == pl.PlantedHead(2, 5, 3.0)
    kinds = {f: pl.PlantedHead(0, 0, f) for f in (-1.0, 3.0, 0.0, 0.5)}
    assert [h.kind for h in kinds.values()] == ["flipped", "amplified", "removed", "weakened"]
    assert [h.expected_list for h in kinds.values()] == ["negative", "negative", None, "positive"]
    assert kinds[3.0].undo_scale == pytest.approx(1 / 3) and kinds[3.0].undoable_within((0, 2))
    assert not kinds[-1.0].undoable_within((0, 2)) and kinds[0.0].undo_scale is None
    for bad in ("0.3", "x.1=2", "0.1=abc", "0.1=nan", "0.1=1"):
        with pytest.raises(VseamError):
            pl.parse_head(bad)


def test_plant_refuses_missing_head_bad_factor_and_source_folder(capsys, tmp_path, tiny_llava_entry):
    rc, out, err = call(capsys, "zoo", "plant", tiny_llava_entry, "--out", tmp_path / "a", "--head", "7.0=-1", "--no-check")
    assert_refused(rc, out, err, "7.0", "no such head", "layers 0–2")
    rc, out, err = call(capsys, "zoo", "plant", tiny_llava_entry, "--out", tmp_path / "b", "--head", "1.1=big", "--no-check")
    assert_refused(rc, out, err, "'big' is not a number")
    source = load_entry_file(tiny_llava_entry).resolved_path()
    rc, out, err = call(capsys, "zoo", "plant", tiny_llava_entry, "--out", source, "--head", "1.1=-1", "--no-check")
    assert_refused(rc, out, err, "source checkpoint")
    rc, out, err = call(capsys, "zoo", "plant", tiny_llava_entry, "--out", tmp_path / "c", "--head", "1.1=-1", "--head", "1.1=3",
                        "--no-check")
    assert_refused(rc, out, err, "given twice")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_planted_checkpoint_is_the_source_with_the_head_scaled(capsys, tmp_path, tiny_llava_entry, toy_examples):
    """The written weights give exactly the source model with the head's o_proj input slice
    scaled by the factor, and differ from the unplanted model by far more than the tolerance."""
    out = tmp_path / "planted"
    rc, o, err = call(capsys, "zoo", "plant", tiny_llava_entry, "--out", out, "--head", "1.2=-3", "--head", "2.0=0", "--no-check")
    assert rc == 0, o + err
    man = json.loads((out / "plant.json").read_text())
    assert [(h["layer"], h["head"], h["factor"], h["kind"]) for h in man["heads"]] == [(1, 2, -3.0, "flipped"), (2, 0, 0.0, "removed")]
    assert man["source"]["weights"]
    planted, source = load_vlm(out / "entry.yaml"), load_vlm(tiny_llava_entry)
    images, questions = [e.image for e in toy_examples], [e.question for e in toy_examples]
    with torch.no_grad():
        got = planted.last_logits(planted.prepare(planted.encode(images, questions)))
        plain = source.last_logits(source.prepare(source.encode(images, questions)))
        f1, f2 = torch.ones(source.num_heads), torch.ones(source.num_heads)
        f1[2], f2[0] = -3.0, 0.0
        with edit_heads(source, {1: HeadEdit(factors=f1), 2: HeadEdit(factors=f2)}):
            want = source.last_logits(source.prepare(source.encode(images, questions)))
    assert torch.allclose(got, want, atol=1e-4)
    assert float((got - plain).abs().max()) > 100 * 1e-4


# ---- choosing heads and reading a search --------------------------------------------------------


def test_suite_chooses_used_heads_from_the_ablation():
    from vseam_run.bench_recovery import suite

    drops = np.zeros((4, 3))
    drops[0, 2], drops[0, 1] = 0.30, 0.04  # L0.H2 used, L0.H1 below the threshold
    drops[2, 1], drops[3, 0], drops[3, 2] = 0.20, 0.08, 0.12
    variants, notes = suite(pl.HeadUse(0.9, drops, 100), 0.05)
    got = {v.name: [(h.layer, h.head, h.factor) for h in v.heads] for v in variants}
    assert got == {"null": [], "harmful-L0": [(0, 2, 3.0)], "harmful-later": [(2, 1, -1.0)],
                   "harmful-two": [(2, 1, 3.0), (3, 2, 3.0)], "removed": [(2, 1, 0.0)], "weakened": [(2, 1, 0.5)]}
    assert notes == []
    variants, notes = suite(pl.HeadUse(0.9, np.where(np.arange(4)[:, None] == 0, drops, 0.0), 100), 0.05)
    assert [v.name for v in variants] == ["null", "harmful-L0"] and "layers ≥ 1" in notes[0]


def test_rank_of_orders_like_the_top_lists():
    from vseam_run.bench_recovery import rank_of
    from vseam_run.modulate import top_heads

    m = np.array([[0.1, 0.5, 0.0], [0.5, 0.2, -0.3]])
    order = [(l, h) for l, h, _ in top_heads(m, 10)]
    for i, (l, h) in enumerate(order):
        assert rank_of(m, l, h) == i + 1
    assert rank_of(m, 0, 2) is None and rank_of(m, 1, 2) is None
    allowed = np.array([[True, False, True], [True, True, True]])
    assert rank_of(m, 1, 0, allowed) == 1 and rank_of(m, 0, 1, allowed) is None


def test_attribution_verify_from_the_two_searches_equals_search_heads(tiny_llava_entry, toy_examples):
    """The bench builds attribution+verify from the attribution and exact searches instead of
    searching a third time; that must give search_heads' own numbers."""
    from vseam_run.bench_recovery import verified_from
    from vseam_run.search import SearchItem, search_heads

    vlm = load_vlm(tiny_llava_entry)
    items = [SearchItem(str(i), e.image, e.question, vlm.answer_token_ids([e.answer])[0]) for i, e in enumerate(toy_examples)]
    kw = dict(scoring="subset", ablation="mean", top_k=3, batch_size=4, batch_rows=8)
    att, ex = (search_heads(vlm, items, strategy=s, **kw) for s in ("attribution", "exact"))
    plain = search_heads(vlm, items, strategy="attribution+verify", verify_k=5, **kw)
    got = verified_from(att, ex, 5)
    assert (got.verified == plain.verified).all() and got.verified.sum() == 5
    np.testing.assert_allclose(got.effects, plain.effects, atol=1e-5)
    assert [t[:2] for t in got.matrices.top_negative] == [t[:2] for t in plain.matrices.top_negative]
    assert [t[:2] for t in got.matrices.top_positive] == [t[:2] for t in plain.matrices.top_positive]


def test_planted_harmful_head_is_found_by_exact_search_and_undone_by_paper(tmp_path):
    """Issue 20 item 6, with an effect far above noise: on toy-llava-spread (whose answers use
    several heads, so the planted head is not also the top positive head) the most-used layer-0
    head, chosen by its own zero-ablation, amplified ×10 is the top negative head under exact
    search, and the paper policy's held-out gain on the planted model is significant.

    Measured beside it (README, "Ground truth"): the same plant ×3 harms 3 of 37 test questions
    and paper's gain is +0.054, p = 0.5; on toy-llava the planted L0.H0 is the top head of both
    lists, so paper's two normalised terms cancel on it at every λ."""
    from vseam_run.bench_recovery import RecoveryConfig, Variant, run_level
    from vseam_run.registry import get_entry
    from vseam_run.vlm import VLM

    entry = get_entry("toy-llava-spread")
    src = VLM.load(entry, torch.device("cpu"), torch.float32)
    use = pl.measure_use(src, pl.use_questions(src, 20, cache_dir=tmp_path / "cache"), [(0, h) for h in range(src.num_heads)])
    (layer, head, drop), *_ = use.used(pl.USE_THRESHOLD, layers=[0])
    assert drop >= pl.USE_THRESHOLD
    heads = [pl.PlantedHead(layer, head, 10.0)]
    done = pl.plant(entry, src, heads, tmp_path / "planted", use=use)
    vlm = load_vlm(done.entry)
    cfg = RecoveryConfig(levels=("object",), images=150, strategies=("exact",), policies=("paper",), control_draws=1, bootstrap=300)
    lv = run_level(vlm, Variant("t", heads, ""), "object", cfg, tmp_path / "cache", tmp_path / "art", lambda s: None)
    found = lv["strategies"]["exact"]["heads"][0]
    assert found["rank_negative"] == 1, lv["exact_top_negative"]
    held = lv["policies"]["paper"]["held_out"]
    # the plant is far above noise: it costs a large share of the test questions
    assert held["baseline"] <= lv["in_clip_repair_test_accuracy"] - 0.2, (held, lv["in_clip_repair_test_accuracy"])
    assert held["gain"] > 0 and held["ci"][0] > 0 and held["mcnemar_p"] < 0.05, held
    assert lv["policies"]["paper"]["planted_scales"][heads[0].label] < 1  # it suppressed the planted head


def test_bench_recovery_small_writes_one_json_and_one_figure(capsys, tmp_path):
    out = tmp_path / "bench"
    rc, o, err = call(capsys, "bench", "recovery", "--small", "--variants", "null,harmful-L0", "--out", out, "--json")
    assert rc == 0, o + err
    res = json.loads(o)
    assert Path(res["figure"]).is_file() and Path(res["json"]).is_file()
    assert json.loads(Path(res["json"]).read_text())["variants"] == res["variants"]
    null, planted = res["variants"]
    assert null["name"] == "null" and null["heads"] == [] and planted["name"] == "harmful-L0"
    for v in res["variants"]:
        for lv in v["levels"]:
            ref = lv["strategies"]["reference"]
            assert ref["small_case"] and ref["max_abs_diff_vs_exact_same_case"] <= 1e-5
            for p, r in lv["policies"].items():
                h = r["held_out"]
                assert h["ci"][0] - 1e-9 <= h["gain"] <= h["ci"][1] + 1e-9 and 0 <= h["mcnemar_p"] <= 1
                assert r["in_sample"]["n"] == lv["split_sizes"]["search"]
    lv = planted["levels"][0]
    assert lv["harm"] == pytest.approx(lv["source_test_accuracy"] - lv["test_accuracy"])
    assert lv["source_test_accuracy"] == null["levels"][0]["test_accuracy"]
    for s in ("exact", "attribution", "attribution+verify"):
        row = lv["strategies"][s]["heads"][0]
        assert row["expected_list"] == "negative" and set(lv["strategies"][s]["recall"]) == {"1", "5", "10"}
    assert lv["strategies"]["exact"]["heads"][0]["ratio_to_exact"] == pytest.approx(1.0)
    nf = res["null_false_gains"]
    assert nf["cells"] == len(null["levels"][0]["policies"]) and 0 <= nf["held_out"]["significant_gain"] <= nf["cells"]
