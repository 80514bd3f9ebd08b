"""CUDA checks (`pytest -m gpu`; skipped without a GPU): the fast search in float16 / bfloat16 on
tiny models, and the preset benchmark at full width. Weights are scaled so single-head effects
reach ≥ 0.05, far above the tolerance; gold is the model's own answer for half the questions so
that heads matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vseam_run.registry import load_entry_file
from vseam_run.search import SearchItem, search_heads
from vseam_run.vlm import VLM

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Largest |exact − reference| allowed per dtype: float32 as on a CPU; the half types round every
# activation to 8 (bf16) or 11 (fp16) mantissa bits, and the two paths round in different places.
# Measured with this file's helpers on the CPU (torch 2.13), both models, both ablation modes:
# max diff float32 3.4e-7, float16 7.3e-4, bfloat16 6.4e-3, for max effects 0.12-0.17.
TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}
SCALE = 8.0  # max single-head effect 0.12 (LLaVA) / 0.17 (InstructBLIP) at this scale; 0.004 unscaled


def scaled_tiny(folder: Path, arch: str) -> Path:
    """A tiny model (3 layers × 4 heads, 2 KV heads) with its language model's weights × SCALE."""
    from tests.conftest import WORDS, write_entry
    from vseam_run.zoo.build import TinyVLMConfig, save, tiny_instructblip, tiny_llava

    build = tiny_llava if arch == "llava" else tiny_instructblip
    model, processor = build(WORDS, TinyVLMConfig(text_layers=3, text_heads=4, text_kv_heads=2, seed=1))
    lm = model.model.language_model if arch == "llava" else model.language_model.model
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.mul_(SCALE)
        model.get_output_embeddings().weight.mul_(SCALE)
    save(model, processor, folder / "ckpt")
    return write_entry(folder, f"scaled-{arch}", arch)


def search_items(vlm: VLM) -> list[SearchItem]:
    from vseam_run.data import toyworld

    ex = toyworld.sample_examples(11, 6, 32)
    gold = vlm.answer_token_ids([e.answer for e in ex])
    items = [SearchItem(str(i), e.image, e.question, g) for i, (e, g) in enumerate(zip(ex, gold))]
    for it in items[::2]:  # the model's own answer: answered right, so positive heads exist
        batch = vlm.processor(images=[it.image], text=[vlm.entry.prompt.format(question=it.question)], return_tensors="pt")
        batch = {k: (v.to(vlm.device, vlm.dtype) if v.is_floating_point() else v.to(vlm.device)) for k, v in batch.items()}
        with torch.no_grad():
            it.gold_id = int(vlm.model(**batch).logits[0, -1].argmax())
    return items


def exact_vs_reference(entry: Path, device: torch.device, dtype: str, mode: str) -> tuple[float, float]:
    """(max |exact − reference|, max |reference effect|) on padded batches of unequal questions."""
    vlm = VLM.load(load_entry_file(entry), device, getattr(torch, dtype))
    items = search_items(vlm)
    ref = search_heads(vlm, items, strategy="reference", scoring="signed", ablation=mode)
    ex = search_heads(vlm, items, strategy="exact", scoring="signed", ablation=mode, batch_size=3, batch_rows=5)
    return float(np.abs(ex.effects - ref.effects).max()), float(np.abs(ref.effects).max())


@pytest.fixture(scope="module", params=["llava", "instructblip"])
def scaled_entry(request, tmp_path_factory) -> Path:
    return scaled_tiny(tmp_path_factory.mktemp(f"scaled-{request.param}"), request.param)


@pytest.mark.parametrize("mode", ["mean", "zero"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_exact_equals_reference_on_cuda(scaled_entry, dtype, mode):
    diff, effect = exact_vs_reference(scaled_entry, torch.device("cuda"), dtype, mode)
    assert effect >= 0.05, f"single-head effects {effect:.3f} too small for the comparison to mean anything"
    assert diff <= TOL[dtype], f"{dtype}: exact differs from reference by {diff:.2e} (tolerance {TOL[dtype]:.0e})"


def test_preset_bench_full_width_on_cuda():
    """llava-1.5-7b's real widths (hidden 4096, 32 heads, CLIP-L/336 → 576 image tokens), 2 layers, bf16."""
    from vseam_run.bench_preset import PresetBench, run_preset_bench

    r = run_preset_bench(PresetBench("llava-1.5-7b", layers=2, questions=2, device="cuda", dtype="bfloat16",
                                     strategies=("exact", "attribution"), batch_size=2, batch_rows=32))
    assert r.architecture["image_tokens"] == 576 and r.architecture["hidden"] == 4096
    assert [s.name for s in r.strategies] == ["exact", "attribution"]
    weights_gib = r.architecture["parameters_billion"] * 1e9 * 2 / 2**30
    assert all(s.peak_memory_gib >= weights_gib for s in r.strategies)
