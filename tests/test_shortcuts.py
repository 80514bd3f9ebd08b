"""Every fast path is tried and compared before it is trusted.

A shortcut layered on the replay (today: the last layer's MLP on the last position only) is
off until the self-check has run it alone and compared it with the plain replay; one that
raises (BLIP-2 with OPT, whose layers flatten hidden states to [batch × tokens, hidden]
before the MLP) or disagrees is switched off for that model and recorded, never a traceback.
A replay that raises is a refusal naming the error (or, for `reference` runs, the fallback).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import WORDS, load_vlm
from vseam_run import vlm as vlm_mod
from vseam_run.data import toyworld
from vseam_run.errors import VseamError
from vseam_run.scoring import Item, ScoredSet
from vseam_run.search import SearchItem, search_heads
from vseam_run.zoo.families import family_images, write_family


def _items(fam, n=3):
    ex = toyworld.sample_examples(5, n, 32)
    return [Item(str(i), im, e.question + " ?" * i, e.answer, 0, "c") for i, (e, im) in enumerate(zip(ex, family_images(fam, n)))]


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    path, fam = write_family("blip2_opt", tmp_path_factory.mktemp("blip2"), WORDS)
    return path, fam


def test_blip2_opt_tail_shortcut_raises_and_is_switched_off(blip2):
    path, fam = blip2
    vlm = load_vlm(path)
    items = _items(fam)
    assert not vlm.uses("last_mlp_tail"), "a shortcut must not be used before the self-check tried it"
    # What the shortcut does on OPT, tried directly: the flattened [B*T, ffn] input sliced on the wrong axis.
    prep = vlm.prepare(vlm.encode([it.image for it in items], [it.question for it in items]))
    vlm.shortcuts["last_mlp_tail"].state = "on"
    with pytest.raises(RuntimeError):
        vlm.last_logits(prep)
    vlm.shortcuts["last_mlp_tail"].state = "unchecked"
    metrics = vlm.self_check(items)
    assert metrics["check.shortcut.last_mlp_tail"] == 0.0
    assert metrics["check.max_prob_diff"] <= 1e-4
    report = vlm.shortcut_report()
    assert report["last_mlp_tail"]["state"] == "off"
    assert report["last_mlp_tail"]["reason"].startswith("raised RuntimeError")
    assert report["replay"]["state"] == "on"
    # The exact search then runs without it and gives model(**inputs)'s numbers.
    # Gold: the model's own answer, so that ablations move a high probability.
    gold = [int(vlm.last_logits(vlm.prepare(vlm.encode([it.image], [it.question]))).argmax()) for it in items[:2]]
    search = [SearchItem(it.qid, it.image, it.question, g) for it, g in zip(items, gold)]
    ref = search_heads(vlm, search, strategy="reference", top_k=2)
    ex = search_heads(vlm, search, strategy="exact", top_k=2, batch_size=2)
    assert np.abs(ref.effects).max() >= 0.05
    assert np.abs(ex.effects - ref.effects).max() <= 1e-5


def test_llava_tail_shortcut_passes_and_is_used(tiny_llava_entry):
    from vseam_run.zoo.families import Family

    vlm = load_vlm(tiny_llava_entry)
    fam = Family(vlm.model, vlm.processor, {})
    metrics = vlm.self_check(_items(fam))
    assert metrics["check.shortcut.last_mlp_tail"] == 1.0
    assert metrics["check.shortcut.last_mlp_tail.diff"] <= 1e-5
    assert vlm.uses("last_mlp_tail")
    with vlm.plain():
        assert not vlm.uses("last_mlp_tail")


def test_a_disagreeing_shortcut_is_switched_off(tiny_llava_entry, monkeypatch):
    """A shortcut that runs but gives other numbers (here: one that also scales the MLP's
    input) is found by the comparison and switched off, with its difference."""
    from vseam_run.zoo.families import Family

    vlm = load_vlm(tiny_llava_entry)
    mlp = vlm_mod.get_module(vlm.layers[-1], vlm.entry.modules.mlp)
    monkeypatch.setattr(vlm_mod.VLM, "_last_mlp_tail_only",
                        lambda self: vlm_mod.pre_hooks([(mlp, lambda _m, args: (args[0][:, -1:] * 3.0,))]))
    items = _items(Family(vlm.model, vlm.processor, {}))
    metrics = vlm.self_check(items)
    sc = vlm.shortcut_report()["last_mlp_tail"]
    assert metrics["check.shortcut.last_mlp_tail"] == 0.0 and sc["state"] == "off"
    assert sc["diff"] > 1e-4 and "differs from the plain replay" in sc["reason"]
    # Scores are the plain replay's: equal to model(**inputs).
    rows = ScoredSet(vlm, items, batch_size=3).run()
    with torch.no_grad():
        want = [float(vlm.model(**vlm.encode([it.image], [it.question])).logits[0, -1].softmax(-1)[0]) for it in items]
    np.testing.assert_allclose([r["gold_prob"] for r in rows], want, atol=1e-5)


def test_a_replay_that_raises_is_a_named_refusal_or_the_fallback(tiny_llava_entry, monkeypatch):
    from vseam_run.zoo.families import Family

    vlm = load_vlm(tiny_llava_entry)
    items = _items(Family(vlm.model, vlm.processor, {}))

    def broken(self, layer, hidden):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x7 and 64x64)")

    monkeypatch.setattr(vlm_mod.Prepared, "call", broken)
    with pytest.raises(VseamError, match=r"cannot run this model: the replay raised RuntimeError: mat1 and mat2") as e:
        vlm.self_check(items)
    assert "search.strategy: reference" in e.value.hint
    metrics = vlm.self_check(items, fallback=True)
    assert metrics["check.fast_path_off"] == 1.0 and metrics["check.replay_raised"] == 1.0
    report = vlm.shortcut_report()
    assert report["replay"]["state"] == "off" and "RuntimeError" in report["replay"]["reason"]
    assert report["last_mlp_tail"]["state"] == "off"


def test_run_records_the_shortcuts(capsys, tmp_path, blip2):
    """A run on BLIP-2 (OPT) from a `vseam models new` entry succeeds; the run holds why the
    shortcut is off (document check.shortcuts) and the metric check.shortcut.last_mlp_tail = 0."""
    from tests.test_cli import call
    from vseam_run.store import RunStore

    path, _ = blip2
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: blip2-run\nmodel: {path}\ndevice: cpu\nbatch_size: 4\n"
                    "data: {source: toyworld, toyworld: {images: 12}, limit: 6}\n"
                    "search: {strategy: exact, scoring: signed, top_k: 3}\nmodulation: {policy: none}\n")
    rc, out, err = call(capsys, "run", spec, "--db", tmp_path / "runs.db")
    assert rc == 0, err
    assert "last_mlp_tail' off for this model: raised RuntimeError" in out + err
    with RunStore(tmp_path / "runs.db") as store:
        run = store.list_runs()[0]
        doc = store.get_document(run.id, "check.shortcuts")
        assert run.metric("check.shortcut.last_mlp_tail") == 0.0
    assert doc["last_mlp_tail"]["state"] == "off" and doc["replay"]["state"] == "on"
    json.dumps(doc)


def test_qwen3_vl_is_refused_at_load_with_the_reason():
    """Qwen3-VL adds visual features inside its first decoder layers (DeepStack): refused when
    the VLM is built, naming why, before any number."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from vseam_run.registry import ModelEntry
    from vseam_run.vlm import VLM
    from vseam_run.zoo.build import build_tokenizer

    tok = build_tokenizer(WORDS)
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                  deepstack_visual_indexes=[0])
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision)).eval()
    entry = ModelEntry.model_validate(dict(
        name="tiny-qwen3-vl", path="unused", model_class="Qwen3VLForConditionalGeneration", prompt="<|image_pad|>{question}",
        image_token_attr="image_token_id",
        modules=dict(decoder="model.language_model", layers="model.language_model.layers",
                     final_norm="model.language_model.norm", lm_head="lm_head")))
    proc = type("P", (), {"tokenizer": tok})()
    with pytest.raises(VseamError, match=r"not supported by vseam's fast paths: .*DeepStack"):
        VLM(entry, model, proc, torch.device("cpu"), torch.float32)
