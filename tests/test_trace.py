"""Causal tracing and logit lens on tiny LLaVA and InstructBLIP: the fast path against the
batch-1 reference on padded batches, the sanity properties, position groups, resume, the
attribution estimate, the lens, and the stage in a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vseam_run import trace as tr
from vseam_run.bench import spearman
from vseam_run.data import toyworld
from vseam_run.errors import VseamError


def amplify(vlm) -> None:
    """Scale weights so that the image matters and the answer distribution is peaked: a random
    tiny model barely reads its image, and compared effects must be far above tolerance."""
    with torch.no_grad():
        if hasattr(vlm.model, "qformer"):
            for layer in vlm.model.qformer.encoder.layer:
                if getattr(layer, "crossattention", None) is not None:
                    layer.crossattention.output.dense.weight.mul_(300)
            vlm.model.language_projection.weight.mul_(5)
        else:
            vlm.model.model.multi_modal_projector.linear_2.weight.mul_(20)
        vlm.lm_head.weight.mul_(30)


@pytest.fixture
def vlm(tiny_vlm):
    amplify(tiny_vlm)
    return tiny_vlm


def make_pairs(vlm, n: int = 5) -> list[tr.TracePair]:
    """Pairs of two toy images under one question; the targets are the tokens whose probability
    the image change moves most in each direction, so every pair has a clear effect."""
    clean, other = toyworld.sample_examples(5, 40, 32), toyworld.sample_examples(6, 12, 32)
    # Questions of different lengths side by side (shortest to longest), so batches are padded.
    clean = sorted(clean, key=lambda e: len(e.question.split()))
    clean = [clean[round(i * (len(clean) - 1) / (n - 1))] for i in range(n)]
    pairs = []
    for i, (a, b) in enumerate(zip(clean, other)):
        prep = vlm.prepare(vlm.encode([a.image, b.image], [a.question] * 2))
        with torch.no_grad():
            p = vlm.last_logits(prep).softmax(-1)
        c, e = int((p[0] - p[1]).argmax()), int((p[1] - p[0]).argmax())
        pairs.append(tr.TracePair(str(i), a.question, a.image, b.image, "c", "e", c, e))
    return pairs


@pytest.fixture
def pairs(vlm):
    return make_pairs(vlm)


@pytest.fixture
def llava(tiny_llava_entry):
    """For tests of bookkeeping that does not depend on the architecture: LLaVA only."""
    from tests.conftest import load_vlm

    vlm = load_vlm(tiny_llava_entry)
    amplify(vlm)
    return vlm, make_pairs(vlm, 4)


def sample_cells(result: tr.TraceResult, names: tuple[str, ...]) -> list[tuple[int, int, int, int, int]]:
    """Cells for the reference: every (direction, layer, component) once, groups and pairs in turn."""
    D, P, L, C, G = result.patched.shape
    cells = []
    for d in range(D):
        for l in range(L):
            for c in range(C):
                for k in range(G):
                    p, g = (l * 3 + c + d + k) % P, (l + 2 * c + d + k) % G
                    if np.isfinite(result.patched[d, p, l, c, g]):
                        cells.append((d, p, l, c, names.index(result.groups[g])))
                        break
    return cells


# ---- position groups ---------------------------------------------------------------------------


def test_position_groups_by_role(vlm):
    questions = ["Is there a cross?", "Is the cross to the right of the ring?", "What color is the circle?"]
    img = toyworld.sample_examples(1, 1, 32)[0].image
    inputs = vlm.encode([img] * 3, questions)
    groups = tr.position_groups(vlm, inputs, questions)
    masks, mask = groups.masks, inputs["attention_mask"].bool()
    assert groups.names == tr.ROLES
    assert not (mask.all(1)).all(), "the batch should be padded"
    # Disjoint, covering exactly the real tokens.
    assert (masks.sum(1) <= 1).all()
    torch.testing.assert_close(masks.any(1), mask)
    n_image = (inputs["input_ids"] == tr.image_token_id(vlm)).sum(1)
    assert (masks[:, tr.ROLES.index("image")].sum(1) == n_image).all() and (n_image > 0).all()
    tok = vlm.tokenizer
    for r, q in enumerate(questions):
        words = {name: tok.convert_ids_to_tokens(inputs["input_ids"][r][masks[r, i]].tolist()) for i, name in enumerate(tr.ROLES)}
        assert words["q_first"] == ["is"] if q.startswith("Is") else words["q_first"] == ["what"]
        assert words["q_last"] == [q.rstrip("?").split()[-1].lower()]
        assert words["q_punct"] == ["?"] and words["prompt_tail"] == ["answer"] and words["last"] == [":"]
        assert words["before_image"] == [] and words["after_image"] == []
        assert len(words["q_middle"]) == len(q.split()) - 2


# ---- fast == reference -------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2])
def test_exact_equals_reference_on_padded_batches(vlm, pairs, window):
    # Odd batch and row-chunk sizes, so padding and chunk edges are exercised.
    fast = tr.exact_trace(vlm, pairs, window=window, margin=-1.0, batch_size=3, batch_rows=7)
    names = tr._group_names(vlm, tr.position_groups, pairs[0])
    cells = sample_cells(fast, names)
    assert len(cells) == 2 * vlm.num_layers * 3
    ref = tr.reference_trace(vlm, pairs, window=window, margin=-1.0, cells=cells)
    diffs = [abs(fast.patched[d, p, l, c, fast.groups.index(names[g])] - ref.patched[d, p, l, c, ref.groups.index(names[g])])
             for d, p, l, c, g in cells]
    assert max(diffs) <= 1e-5
    np.testing.assert_allclose(fast.p_source, ref.p_source, atol=1e-5)
    np.testing.assert_allclose(fast.p_base, ref.p_base, atol=1e-5)
    effects = np.abs(fast.patched - fast.p_base[:, :, None, None, None])
    assert np.nanmax(effects) > 100 * 1e-5, "patching should move the answer far above tolerance, or the comparison is vacuous"
    assert (fast.p_source - fast.p_base).min() > 1e-3


def test_sanity_whole_residual_recovers_one_and_unseen_positions_zero(vlm, pairs):
    """Patching the whole residual stream (every position) after the first layer is the source
    run from there on: recovery 1. Patching only padding, which no real token attends to,
    changes nothing: recovery 0."""

    def groups(vlm_, inputs, questions):
        mask = inputs["attention_mask"].bool()
        return tr.PositionGroups(("all", "padding"), torch.stack([torch.ones_like(mask), ~mask], 1))

    res = tr.exact_trace(vlm, pairs, margin=0.0, components=["resid"], batch_size=3, batch_rows=5, group_fn=groups)
    assert res.eligible.all()
    rec = res.recovery()
    # The patched run is the source run: its probability equals p_source to float precision,
    # and the recovery is 1 up to that error over the (small, for a random model) denominator.
    np.testing.assert_allclose(res.patched[:, :, 0, 0, 0], res.p_source, atol=1e-6)
    np.testing.assert_allclose(res.patched[:, :, :, 0, 0], np.repeat(res.p_source[:, :, None], vlm.num_layers, 2), atol=1e-6)
    np.testing.assert_allclose(rec[:, :, :, 0, 0], 1.0, atol=1e-3)
    padded = np.isfinite(rec[..., 1])
    assert padded.any(), "some pair should be padded"
    base = np.broadcast_to(res.p_base[:, :, None, None], res.patched.shape[:-1])
    np.testing.assert_allclose(res.patched[..., 1][padded], base[padded], atol=1e-6)
    assert np.nanmax(np.abs(rec[..., 1])) <= 1e-3


def test_margin_excludes_and_counts(llava):
    vlm, pairs = llava
    full = tr.exact_trace(vlm, pairs, margin=-1.0, components=["mlp"], directions=["clean_to_edited"], batch_size=5)
    gains = full.p_source[0] - full.p_base[0]
    margin = float(np.median(gains))
    res = tr.exact_trace(vlm, pairs, margin=margin, components=["mlp"], directions=["clean_to_edited"], batch_size=5)
    keep = gains >= margin
    assert 0 < keep.sum() < len(pairs)
    np.testing.assert_array_equal(res.eligible[0], keep)
    assert np.isnan(res.patched[0, ~keep]).all() and np.isfinite(res.patched[0, keep][..., res.groups.index("last")]).all()
    np.testing.assert_allclose(res.patched[0, keep], full.patched[0, keep], atol=1e-6)
    doc = res.to_json()
    assert doc["eligible"] == {"clean_to_edited": int(keep.sum())} and doc["excluded"] == {"clean_to_edited": int((~keep).sum())}
    rec, _, n = res.summary()
    assert (n[0, :, 0, res.groups.index("last")] == keep.sum()).all()
    want = np.mean(full.recovery()[0, keep][:, :, 0], 0)
    np.testing.assert_allclose(rec[0, :, 0], want, atol=1e-9)


# ---- resume, spot check ------------------------------------------------------------------------


class DictCheckpointer:
    def __init__(self, saved=None):
        self.saved, self.writes = dict(saved or {}), []

    def load(self):
        return dict(self.saved)

    def save(self, key, payload):
        self.saved[key] = payload
        self.writes.append(key)


def test_resume_skips_finished_layers(llava):
    vlm, pairs = llava
    ck = DictCheckpointer()
    first = tr.exact_trace(vlm, pairs[:3], margin=-1.0, components=["attn"], batch_size=2, checkpoint=ck, key_prefix="fp1")
    assert ck.writes == [f"fp1:{l}" for l in range(vlm.num_layers)]
    # An interrupted run saved layers 0 and 1; a marker value shows the saved layer is used, not recomputed.
    saved = {k: v for k, v in ck.saved.items() if k in ("fp1:0", "fp1:1")}
    marked = np.array(saved["fp1:0"], dtype=float)
    marked[np.isfinite(marked)] = 0.123
    saved["fp1:0"] = np.where(np.isfinite(marked), marked, None).tolist()
    again_ck = DictCheckpointer(saved)
    again = tr.exact_trace(vlm, pairs[:3], margin=-1.0, components=["attn"], batch_size=2, checkpoint=again_ck, key_prefix="fp1")
    assert again_ck.writes == [f"fp1:{l}" for l in range(2, vlm.num_layers)]
    np.testing.assert_allclose(again.patched[:, :, 1:], first.patched[:, :, 1:], atol=1e-7, equal_nan=True)
    assert np.nanmax(np.abs(again.patched[:, :, 0] - 0.123)) == 0.0
    # Another fingerprint does not pick them up.
    other = DictCheckpointer(saved)
    tr.exact_trace(vlm, pairs[:3], margin=-1.0, components=["attn"], batch_size=2, checkpoint=other, key_prefix="fp2")
    assert len(other.writes) == vlm.num_layers


def test_fingerprint_tracks_pairs_and_settings():
    ex = toyworld.sample_examples(2, 4, 32)
    pairs = [tr.TracePair(str(i), e.question, e.image, ex[-1 - i].image, "a", "b", 1, 2) for i, e in enumerate(ex)]
    base = tr.fingerprint(pairs, window=1)
    assert tr.fingerprint(pairs, window=1) == base
    assert tr.fingerprint(pairs, window=2) != base
    assert tr.fingerprint(pairs[:-1], window=1) != base
    swapped = [tr.TracePair(**{**pairs[0].__dict__, "edited_image": pairs[1].edited_image})] + pairs[1:]
    assert tr.fingerprint(swapped, window=1) != base


def test_spot_check_passes_and_catches_a_wrong_number(vlm, pairs):
    res = tr.exact_trace(vlm, pairs[:2], margin=-1.0, batch_size=2)
    assert tr.spot_check(vlm, pairs[:2], res, window=1) <= 1e-5
    res.patched[np.isfinite(res.patched)] += 0.01
    with pytest.raises(VseamError, match="differs from the plain batch-1 pass"):
        tr.spot_check(vlm, pairs[:2], res, window=1)


# ---- attribution, logit lens -------------------------------------------------------------------


def test_attribution_ranks_cells_like_exact(vlm, pairs):
    exact = tr.exact_trace(vlm, pairs, margin=-1.0, batch_size=3)
    att = tr.attribution_trace(vlm, pairs, margin=-1.0, batch_size=3)
    assert att.groups == exact.groups
    np.testing.assert_array_equal(np.isfinite(att.patched), np.isfinite(exact.patched))
    cells = np.isfinite(exact.patched)
    assert np.abs(att.patched[cells] - exact.patched[cells]).max() > 1e-5, "first order is not exact here"
    assert spearman(att.patched[cells] - 0, exact.patched[cells]) > 0.8


def test_logit_lens_matches_the_model(vlm, pairs):
    lens = tr.logit_lens(vlm, pairs, batch_size=3)
    L = vlm.num_layers
    norm = vlm.model.get_submodule(vlm.entry.modules.final_norm)
    for p, pair in enumerate(pairs[:2]):
        for im, image in enumerate((pair.clean_image, pair.edited_image)):
            inputs = vlm.encode([image], [pair.question])
            with torch.no_grad():
                out = vlm.model(**inputs, output_hidden_states=True)
            hidden = out.hidden_states if getattr(out, "hidden_states", None) else out.language_model_outputs.hidden_states
            probs = out.logits[0, -1].softmax(-1)
            for tok, t in enumerate((pair.clean_id, pair.edited_id)):
                assert abs(lens.prob[im, tok, p, L - 1] - float(probs[t])) <= 1e-5
                assert lens.rank[im, tok, p, L - 1] == 1 + int((out.logits[0, -1] > out.logits[0, -1, t]).sum())
                for l in range(L - 1):  # hidden_states[l + 1] is the output of layer l
                    with torch.no_grad():
                        want = vlm.lm_head(norm(hidden[l + 1][0, -1])).softmax(-1)[t]
                    assert abs(lens.prob[im, tok, p, l] - float(want)) <= 1e-5
    assert lens.prob.std() > 1e-3


def test_to_json_is_strict_json(llava):
    vlm, pairs = llava
    import json

    res = tr.exact_trace(vlm, pairs[:3], margin=-1.0, batch_size=2, components=["resid"])
    res.eligible[0, 0] = False  # an excluded pair: NaN cells, which strict JSON must not see
    res.patched[0, 0] = np.nan
    doc = json.loads(json.dumps(res.to_json(), allow_nan=False))
    assert doc["excluded"]["clean_to_edited"] == 1 and len(doc["tables"]["clean_to_edited.resid"]["recovery"]) == vlm.num_layers


# ---- the stage in a run ------------------------------------------------------------------------

TRACE_SPEC = """\
name: traced
model: {model}
device: cpu
batch_size: 4
data: {{source: toyworld, toyworld: {{images: 12}}, limit: 10}}
edit: {{recipe: procedural}}
trace: {{margin: 0.0, pairs: 3, batch_rows: 16}}
"""


def test_trace_stage_records_resumes_and_draws(tmp_path, tiny_llava_entry, monkeypatch, capsys):
    from vseam_run.cli.main import cli
    from vseam_run.ledger import StageCheckpointer
    from vseam_run.store import RunStore

    spec = tmp_path / "spec.yaml"
    spec.write_text(TRACE_SPEC.format(model=tiny_llava_entry))
    db = tmp_path / "runs.db"
    monkeypatch.chdir(tmp_path)
    real_save, saved = StageCheckpointer.save, []

    def save_then_interrupt(self, key, payload):
        real_save(self, key, payload)
        saved.append(key)
        raise KeyboardInterrupt  # Ctrl-C right after the first traced layer is stored

    monkeypatch.setattr(StageCheckpointer, "save", save_then_interrupt)
    assert cli(["run", str(spec), "--db", str(db)]) == 130
    assert len(saved) == 1 and saved[0].startswith("exact.") and saved[0].endswith(":0")
    with RunStore(db) as store:
        (run,) = store.list_runs()

    def save_and_note(self, key, payload):
        real_save(self, key, payload)
        if key.startswith("exact."):  # the trace's layers (the head search's are "exact:L")
            saved.append(key)

    monkeypatch.setattr(StageCheckpointer, "save", save_and_note)
    assert cli(["run", "--resume", run.id, "--db", str(db)]) == 0, capsys.readouterr()
    prefix = saved[0].rsplit(":", 1)[0]
    assert saved == [f"{prefix}:{l}" for l in range(3)]  # layer 0 came from the checkpoint
    with RunStore(db) as store:
        doc = store.get_document(run.id, "trace")
        metrics = store.get_run(run.id).metrics
        kinds = {a.kind for a in store.get_run(run.id).artifacts}
    assert doc["pairs"] == metrics["trace.pairs"] <= 3 and doc["method"] == "exact"
    for d in ("clean_to_edited", "edited_to_clean"):
        assert doc["eligible"][d] + doc["excluded"][d] == doc["pairs"]
        assert metrics[f"trace.{d}.included"] == doc["eligible"][d]
    assert metrics["trace.spot_check_max_diff"] <= 1e-4
    assert set(doc["tables"]) <= {f"{d}.{c}" for d in tr.DIRECTIONS for c in tr.COMPONENTS} and doc["tables"]
    some = next(iter(doc["tables"].values()))
    assert len(some["recovery"]) == 3 and len(some["recovery"][0]) == len(doc["groups"])
    assert "image" in doc["groups"] and "last" in doc["groups"]
    assert len(doc["lens"]["clean_image.clean_answer"]["mean_prob"]) == 3
    assert "trace.logit_lens" in kinds and any(k.startswith("trace.heatmap.") for k in kinds)


def test_trace_figures(tmp_path):
    from vseam_run import report

    rec = np.array([[0.1, np.nan, 1.0], [0.5, -0.2, 0.0]])
    path = report.trace_heatmap({"resid": rec, "attn": rec * 2}, ["image", "q_last", "last"], tmp_path / "h.png", title="t")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="panel 'mlp' has shape"):
        report.trace_heatmap({"mlp": rec[:, :2]}, ["image", "q_last", "last"], tmp_path / "x.png", title="t")
    lens = report.logit_lens_plot({"clean image, clean answer": ([0.1, 0.9], [3, 1])}, tmp_path / "l.png", title="t")
    assert lens.stat().st_size > 0
