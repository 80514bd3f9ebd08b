"""`vseam bench search --preset`: the real architecture of an entry, built without download or
weights, runs through the public search on a CPU when shrunk (its timings are not asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vseam_run import bench_preset as bp
from vseam_run.cli.main import cli
from vseam_run.errors import VseamError
from vseam_run.registry import get_entry


def test_llava_preset_is_the_real_architecture_with_576_image_tokens():
    config = bp.preset_config(get_entry("llava-1.5-7b"))
    tc = config.text_config
    assert (tc.num_hidden_layers, tc.num_attention_heads, tc.hidden_size) == (32, 32, 4096)
    processor = bp.bench_processor(config)
    entry = bp.bench_entry(get_entry("llava-1.5-7b"))
    batch = processor(images=[Image.new("RGB", (500, 400))], text=[entry.prompt.format(question="w1 w2")], return_tensors="pt")
    assert int((batch["input_ids"] == config.image_token_index).sum()) == 576
    assert batch["pixel_values"].shape[-2:] == (336, 336)


def test_materialize_restores_buffers_and_leaves_nothing_on_meta():
    config = bp.preset_config(get_entry("llava-1.5-7b"), layers=1, width=64)
    bp.bench_processor(config)
    model = bp.materialize(transformers.LlavaForConditionalGeneration, config, torch.device("cpu"), torch.float32)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    # The buffers are the ones the constructor computes (rotary frequencies, position ids), not to_empty's garbage.
    reference = transformers.LlavaForConditionalGeneration(config)
    ours = dict(model.named_buffers())
    for name, b in reference.named_buffers():
        assert torch.equal(ours[name], b), name
    w = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert 0.015 < float(w.std()) < 0.025
    assert torch.equal(model.model.language_model.norm.weight, torch.ones(64))


def test_layers_shrink_keeps_per_layer_lists_consistent():
    tc = get_entry("paligemma2-3b-mix-224").arch.build().text_config
    assert len(tc.layer_types) == 26
    bp._shrink_text(tc, 3, None)
    assert tc.num_hidden_layers == 3 and tc.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    with pytest.raises(VseamError, match="--layers 40: the model has 3 layers"):
        bp._shrink_text(tc, 40, None)


def test_unsupported_family_and_missing_preset_are_refused(tmp_path):
    with pytest.raises(VseamError, match="bench --preset builds inputs for model_type llava, llava_next, instructblip; "
                                         "'qwen2-vl-7b-instruct' is 'qwen2_vl'"):
        bp.preset_config(get_entry("qwen2-vl-7b-instruct"))
    with pytest.raises(VseamError, match="has no arch: preset") as info:
        bp.preset_config(get_entry("toy-llava"))
    assert "registry/llava-1.5-7b.yaml" in info.value.hint


def test_preset_bench_cli_runs_shrunk_on_cpu(capsys):
    rc = cli(["bench", "search", "--preset", "llava-1.5-7b", "--layers", "1", "--width", "64", "--questions", "2",
              "--strategies", "exact,attribution", "--project", "500", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    r = json.loads(out)
    assert r["architecture"]["heads"] == 32 and r["architecture"]["layers"] == 1 and r["architecture"]["image_tokens"] == 16
    assert [s["name"] for s in r["strategies"]] == ["exact", "attribution"]
    for s in r["strategies"]:
        assert s["seconds"] > 0 and s["peak_memory_gib"] > 0
        assert np.isclose(s["projected_hours"], s["seconds_per_question"] * 500 / 3600, atol=2e-3)
    assert any("shrunk" in n for n in r["notes"])


def test_preset_bench_bad_options_are_one_clear_error(capsys):
    assert cli(["bench", "search", "--preset", "llava-1.5-7b", "--strategies", "exact,fast"]) == 2
    assert "unknown strategy 'fast'" in capsys.readouterr().err
    assert cli(["bench", "search", "--preset", "llava-1.5-7b", "--dtype", "float8"]) == 2
    assert "--dtype float8" in capsys.readouterr().err
