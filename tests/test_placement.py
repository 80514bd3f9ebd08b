"""Models placed by accelerate (`device_map`) and quantized weights (`quantization`), on the CPU.

A device map that offloads decoder layers and the LM head to disk runs them through
accelerate's hooks (the weights are on the meta device between calls): the replay, which
calls the layers itself, must give the same numbers as the plain load — bit for bit here,
where every module computes on the CPU. Quantized weights (bitsandbytes' CPU backend) change
the numbers, so they are compared with the quantized model's own forward, within the
tolerance the self-check records. Weights are scaled (zoo.families) so that single heads move
the gold probability by ≥ 0.05.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import WORDS
from vseam_run.data import toyworld
from vseam_run.errors import SpecError, VseamError
from vseam_run.heads import HeadEdit, edit_heads
from vseam_run.registry import load_entry_file
from vseam_run.scoring import Item
from vseam_run.search import SearchItem, search_heads
from vseam_run.vlm import VLM
from vseam_run.zoo.build import TinyVLMConfig
from vseam_run.zoo.families import family_images, write_family

CPU = torch.device("cpu")
LM = "model.language_model"
# Layers 2-3 and the LM head on disk: the second half of the replay and the logits run through
# accelerate's offload hooks.
OFFLOAD = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", f"{LM}.embed_tokens": "cpu",
           f"{LM}.layers.0": "cpu", f"{LM}.layers.1": "cpu", f"{LM}.layers.2": "disk", f"{LM}.layers.3": "disk",
           f"{LM}.norm": "cpu", f"{LM}.rotary_emb": "cpu", "lm_head": "disk"}
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")


def tiny_model(folder: Path, device: torch.device) -> tuple[dict, VLM, list[Item]]:
    """(entry dict, plain VLM, items): a 4-layer LLaVA with scaled weights on `device`, 3 padded
    questions, self-checked as in a run (so the shortcuts the placed loads compare with are on here too)."""
    path, fam = write_family("llava", folder, WORDS, TinyVLMConfig(text_layers=4, text_heads=4, text_kv_heads=2, seed=1))
    plain = VLM.load(load_entry_file(path), device, torch.float32)
    ex = toyworld.sample_examples(5, 3, 32)
    images = family_images(fam, 3, seed=2)
    items = []
    for i, (im, e) in enumerate(zip(images, ex)):
        q = e.question + " ?" * i  # unequal lengths: the batch is padded
        with torch.no_grad():
            top = int(plain.model(**plain.encode([im], [q])).logits[0, -1].argmax())
        items.append(Item(str(i), im, q, e.answer, top, "c"))
    plain.self_check(items)
    return yaml.safe_load(path.read_text()), plain, items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, entry dict, plain VLM, items) on the CPU (see tiny_model)."""
    folder = tmp_path_factory.mktemp("placed")
    return (folder, *tiny_model(folder, CPU))


def placed(tiny, name: str, device: torch.device = CPU, dtype: torch.dtype = torch.float32, **keys) -> VLM:
    folder, entry, _, _ = tiny
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**entry, "name": name, **keys}))
    return VLM.load(load_entry_file(path), device, dtype)


def _search(vlm, items, strategy="exact"):
    search = [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in items]
    kw = dict(batch_size=2, batch_rows=5) if strategy == "exact" else {}
    return search_heads(vlm, search, strategy=strategy, ablation="mean", top_k=3, **kw)


@torch.no_grad()
def _own_ablated(vlm, item, layer, head) -> float:
    """The model's own forward on one question with one head mean-ablated (the reference, one cell)."""
    mask = torch.zeros(1, vlm.num_heads, dtype=torch.bool)
    mask[0, head] = True
    with edit_heads(vlm, {layer: HeadEdit(ablate_mask=mask, mode="mean")}):
        return float(vlm.model(**vlm.encode([item.image], [item.question])).logits[0, -1].float().softmax(-1)[item.gold_id])


def _sampled_reference_diff(vlm, items, effects) -> float:
    """max |exact − reference| over (question, layer, head) cells spread over the grid."""
    worst = 0.0
    for q, it in enumerate(items):
        with torch.no_grad():
            base = float(vlm.model(**vlm.encode([it.image], [it.question])).logits[0, -1].float().softmax(-1)[it.gold_id])
        for layer, head in ((0, q % 4), (vlm.num_layers // 2, (q + 1) % 4), (vlm.num_layers - 1, (q + 2) % 4)):
            worst = max(worst, abs(effects[q, layer, head] - (base - _own_ablated(vlm, it, layer, head))))
    return worst


def test_disk_offload_gives_the_plain_numbers(tiny):
    _, _, plain, items = tiny
    off = placed(tiny, "offload", device_map=OFFLOAD)
    # Really offloaded: between calls the disk layers' weights are not in memory.
    assert off.layers[3].mlp.down_proj.weight.device.type == "meta"
    assert off.device == CPU and off.model.hf_device_map[f"{LM}.layers.2"] == "disk"
    metrics = off.self_check(items)
    assert metrics["check.max_prob_diff"] <= 1e-4 and metrics["check.tolerance"] == 1e-4
    want, got = _search(plain, items), _search(off, items)
    assert np.abs(want.effects).max() >= 0.05, "single-head effects too small for the comparison to prove anything"
    diff = np.abs(got.effects - want.effects).max()
    ref = _sampled_reference_diff(off, items, got.effects)
    print(f"disk offload: exact search vs the plain load, max |diff| {diff:.3g}; self-check "
          f"{metrics['check.max_prob_diff']:.3g}; exact vs reference {ref:.3g}")
    assert diff <= 1e-6
    np.testing.assert_array_equal(got.correct, want.correct)
    assert ref <= 1e-5


def test_gradients_through_offloaded_layers(tiny):
    """The attribution search (a backward pass through the replay) under disk offload == plain."""
    _, _, plain, items = tiny
    off = placed(tiny, "offload-grad", device_map=OFFLOAD)
    want, got = _search(plain, items, "attribution"), _search(off, items, "attribution")
    print(f"disk offload: attribution vs the plain load, max |diff| {np.abs(got.effects - want.effects).max():.3g}")
    assert np.abs(want.effects).max() > 0.01
    assert np.abs(got.effects - want.effects).max() <= 1e-6


def test_auto_map_on_the_cpu(tiny):
    _, _, plain, items = tiny
    auto = placed(tiny, "auto", device_map="auto")
    assert auto.device == CPU  # everything fits in CPU memory: accelerate keeps it there
    assert auto.self_check(items)["check.max_prob_diff"] <= 1e-4
    prep_a, prep_p = (v.prepare(v.encode([it.image for it in items], [it.question for it in items])) for v in (auto, plain))
    with torch.no_grad():
        assert torch.equal(auto.last_logits(prep_a), plain.last_logits(prep_p))


@needs_bnb
@pytest.mark.parametrize("quant", [{"bits": 4}, {"bits": 8, "int8_threshold": 0.0}])
def test_quantized_fast_path_equals_its_own_forward(tiny, quant):
    _, _, plain, items = tiny
    q = placed(tiny, f"q{quant['bits']}", quantization=quant)
    assert "bit" in type(q.o_proj(0)).__name__  # Linear4bit / Linear8bitLt: the weights really are quantized
    metrics = q.self_check(items)
    assert metrics["check.tolerance"] == 1e-4 and metrics["check.max_prob_diff"] <= 1e-4
    got = _search(q, items)
    assert np.abs(got.effects).max() >= 0.05
    diff = _sampled_reference_diff(q, items, got.effects)
    print(f"quantization {quant}: self-check {metrics['check.max_prob_diff']:.3g}, exact vs own forward {diff:.3g}, "
          f"vs float32 weights {np.abs(got.effects - _search(plain, items).effects).max():.3g}")
    assert diff <= 1e-5


@needs_bnb
def test_int8_outliers_widen_the_recorded_tolerance(tiny, caplog):
    """LLM.int8 with outlier decomposition chooses outlier columns over the batch: the model's own
    numbers move with the batch, the check allows (and records) 5e-2 and passes. bitsandbytes'
    per-matmul 'inputs will be cast to float16' warning (float32 run) is said once by the run, not per call."""
    _, _, _, items = tiny
    q = placed(tiny, "q8-outliers", quantization={"bits": 8})
    with caplog.at_level("WARNING"):
        metrics = q.self_check(items)
    assert not [r for r in caplog.records if "will be cast" in r.getMessage()]
    print(f"int8 threshold 6: self-check {metrics['check.max_prob_diff']:.3g}, model batch vs single "
          f"{metrics['check.model_batch_diff']:.3g}")
    assert metrics["check.tolerance"] == 5e-2 and metrics["check.max_prob_diff"] <= 5e-2


def test_spec_placement_overrides_the_entry_and_is_validated(tiny_llava_entry):
    from vseam_run.placement import with_spec
    from vseam_run.spec import Spec, load_spec

    spec = Spec.model_validate(dict(name="x", model=str(tiny_llava_entry), data={"source": "toyworld"},
                                    device_map="auto", quantization={"bits": 4}))
    merged = with_spec(load_entry_file(tiny_llava_entry), spec)
    assert merged.device_map == "auto" and merged.quantization.bits == 4
    assert merged.content_hash() != load_entry_file(tiny_llava_entry).content_hash()  # quantization is in the fingerprint
    plain = Spec.model_validate(dict(name="x", model=str(tiny_llava_entry), data={"source": "toyworld"}))
    assert "device_map" not in plain.to_yaml() and "quantization" not in load_entry_file(tiny_llava_entry).to_yaml()


def test_bad_placement_in_a_spec_file_names_the_field(tmp_path, tiny_llava_entry):
    from vseam_run.spec import load_spec

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(dict(name="x", model=str(tiny_llava_entry), data={"source": "toyworld"},
                                     device_map={"lm_head": "gpu0"}, quantization={"bits": 3})))
    with pytest.raises(SpecError) as e:
        load_spec(f)
    text = "\n".join(e.value.errors)
    assert "device_map" in text and "gpu0" in text and "quantization.bits" in text


def test_gpu_map_on_a_cpu_machine_is_found_before_loading(tiny_llava_entry, tmp_path):
    from vseam_run.checks import machine_problems
    from vseam_run.spec import Spec

    if torch.cuda.is_available():
        pytest.skip("checks what a machine without CUDA says")
    spec = Spec.model_validate(dict(name="x", model=str(tiny_llava_entry), data={"source": "toyworld"}, device="cpu",
                                    workdir=str(tmp_path), device_map={"": 1}))
    problems = [p for p in machine_problems(spec, load_entry_file(tiny_llava_entry)) if p.startswith("device_map")]
    assert any("GPU 1" in p and "no CUDA GPU" in p for p in problems), problems
    assert any("device: cpu" in p for p in problems), problems


def test_incomplete_explicit_map_is_one_clear_error(tiny):
    with pytest.raises(VseamError) as e:
        placed(tiny, "partial", device_map={f"{LM}.layers.0": "cpu"})
    msg = e.value.message
    assert "device_map" in msg and "partial" in msg and "model.vision_tower" in msg and f"{LM}.layers.1" in msg, msg
    with pytest.raises(VseamError) as e:
        placed(tiny, "misspelt", device_map={**OFFLOAD, f"{LM}.layer.9": "cpu"})
    assert "'model.language_model.layer.9' is not a module" in e.value.message


def test_torchrun_with_a_device_map_is_refused(tiny_llava_entry, tmp_path, monkeypatch):
    from vseam_run.placement import placement_problems
    from vseam_run.spec import Spec

    monkeypatch.setenv("WORLD_SIZE", "2")
    spec = Spec.model_validate(dict(name="x", model=str(tiny_llava_entry), data={"source": "toyworld"}, device_map="auto"))
    assert any("torchrun" in p for p in placement_problems(spec, load_entry_file(tiny_llava_entry)))


def test_gpu_fit_counts_what_accelerate_would_place():
    """The fit of llava-1.5-13b's real architecture (meta device): weights per dtype from the
    parameter count, more GPUs for smaller ones, every decoder layer placed exactly once, and
    a planner check that the chosen count is the fewest (one GPU fewer leaves modules over)."""
    import transformers
    from accelerate import infer_auto_device_map

    from vseam_run.bench_preset import preset_config
    from vseam_run.gpu_fit import DTYPES, meta_model, preset_fits
    from vseam_run.registry import get_entry

    entry = get_entry("llava-1.5-13b")
    fits, assumes = preset_fits(entry, 24.0, rows=32, text_tokens=16)
    by = {f.dtype: f for f in fits}
    model = meta_model(transformers.LlavaForConditionalGeneration, preset_config(entry))
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(by["float32"].weights_gib - n_params * 4 / 2**30) < 0.05
    assert abs(by["bfloat16"].weights_gib - n_params * 2 / 2**30) < 0.05
    assert by["nf4"].weights_gib < by["int8"].weights_gib < by["bfloat16"].weights_gib
    assert by["float32"].gpus > by["bfloat16"].gpus >= by["int8"].gpus >= 1
    for f in fits:
        assert sum(f.layers_per_gpu) == 40 and len(f.layers_per_gpu) == f.gpus
    f32 = by["float32"]
    cap = int((24.0 - f32.reserve_gib) * 2**30)
    fewer = infer_auto_device_map(model, max_memory={**{i: cap for i in range(f32.gpus - 1)}, "cpu": 0},
                                  dtype=DTYPES["float32"][0], no_split_module_classes=model._no_split_modules)
    assert not all(isinstance(d, int) for d in fewer.values())


def test_bench_preset_fit_only_cli():
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vseam_run", "bench", "search", "--preset", "llava-1.5-7b", "--gpu-memory", "16",
                        "--fit-only", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fit = {f["dtype"]: f for f in json.loads(r.stdout)["fit"]}
    assert fit["float32"]["gpus"] >= 2 and fit["nf4"]["gpus"] == 1
