"""CUDA checks of placed and quantized models (`pytest -m gpu`; skipped without a GPU).

What the CPU tests (tests/test_placement.py) cannot show, because there every module computes
on one CPU device:
- a device_map splitting the decoder's layers over cuda:0 and the CPU: the replay's hidden states,
  the captured masks / rotary tables and the trace's patched activations cross devices through
  accelerate's hooks. Exact search == the plain single-GPU load == the model's own forward
  (reference), the exact trace == the reference trace, attribution == the plain load;
- bitsandbytes' CUDA kernels (4-bit NF4, 8-bit LLM.int8): the self-check passes within the
  tolerance it records, and the exact search equals the quantized model's own forward.
The tiny LLaVA has scaled weights (zoo.families): single heads move the gold probability by
≥ 0.05, far above the float32 tolerances compared here. Every check prints its numbers (-s).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tests.test_placement import LM, _sampled_reference_diff, _search, tiny_model
from tests.test_placement import placed as placed_on
from vseam_run import trace as tr
from vseam_run.vlm import VLM

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")

# Layers 0-1 on the GPU, layers 2-3, the final norm and the LM head on the CPU: the hidden state
# leaves the GPU in the middle of the decoder, and the logits come back from the CPU.
SPLIT = {"model.vision_tower": 0, "model.multi_modal_projector": 0, f"{LM}.embed_tokens": 0, f"{LM}.rotary_emb": 0,
         f"{LM}.layers.0": 0, f"{LM}.layers.1": 0, f"{LM}.layers.2": "cpu", f"{LM}.layers.3": "cpu",
         f"{LM}.norm": "cpu", "lm_head": "cpu"}
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def tiny_cuda(tmp_path_factory):
    """(folder, entry dict, plain VLM on one GPU, items): the 4-layer LLaVA of test_placement, on CUDA."""
    folder = tmp_path_factory.mktemp("placed-gpu")
    return (folder, *tiny_model(folder, CUDA))


def placed(tiny, name: str, dtype: torch.dtype = torch.float32, **keys) -> VLM:
    return placed_on(tiny, name, CUDA, dtype, **keys)


@pytest.fixture(scope="module")
def split(tiny_cuda):
    vlm = placed(tiny_cuda, "split", device_map=SPLIT)
    assert vlm.device.type == "cuda"  # the input embeddings' device
    assert next(vlm.layers[0].parameters()).device.type == "cuda" and next(vlm.layers[3].parameters()).device.type == "cpu"
    return vlm


def test_split_map_search_equals_single_gpu_and_reference(tiny_cuda, split):
    _, _, plain, items = tiny_cuda
    metrics = split.self_check(items)
    print(f"cuda:0 + cpu split: self-check {metrics['check.max_prob_diff']:.3g} (tolerance {metrics['check.tolerance']:g})")
    assert metrics["check.tolerance"] == 1e-4 and metrics["check.max_prob_diff"] <= 1e-4
    want, got = _search(plain, items), _search(split, items)
    assert np.abs(want.effects).max() >= 0.05, "single-head effects too small for the comparison to prove anything"
    diff = np.abs(got.effects - want.effects).max()
    ref = _sampled_reference_diff(split, items, got.effects)
    print(f"cuda:0 + cpu split: exact vs single GPU {diff:.3g}, exact vs reference {ref:.3g}")
    assert diff <= 1e-5 and ref <= 1e-5
    np.testing.assert_array_equal(got.correct, want.correct)


def test_split_map_trace_equals_reference(split):
    from tests.test_trace import make_pairs, sample_cells

    pairs = make_pairs(split, 4)
    fast = tr.exact_trace(split, pairs, window=1, margin=-1.0, batch_size=3, batch_rows=7)
    names = tr._group_names(split, tr.position_groups, pairs[0])
    cells = sample_cells(fast, names)
    ref = tr.reference_trace(split, pairs, window=1, margin=-1.0, cells=cells)
    diffs = [abs(fast.patched[d, p, l, c, fast.groups.index(names[g])] - ref.patched[d, p, l, c, ref.groups.index(names[g])])
             for d, p, l, c, g in cells]
    effects = np.abs(fast.patched - fast.p_base[:, :, None, None, None])
    print(f"cuda:0 + cpu split: trace exact vs reference {max(diffs):.3g} over {len(cells)} cells; largest effect "
          f"{np.nanmax(effects):.3g}")
    assert np.nanmax(effects) > 1e-3, "patching should move the answer far above tolerance"
    assert max(diffs) <= 1e-5
    np.testing.assert_allclose(fast.p_base, ref.p_base, atol=1e-5)


def test_split_map_attribution_equals_single_gpu(tiny_cuda, split):
    _, _, plain, items = tiny_cuda
    want, got = _search(plain, items, "attribution"), _search(split, items, "attribution")
    diff = np.abs(got.effects - want.effects).max()
    print(f"cuda:0 + cpu split: attribution vs single GPU {diff:.3g} (largest {np.abs(want.effects).max():.3g})")
    assert np.abs(want.effects).max() > 0.01
    assert diff <= 1e-5


@needs_bnb
@pytest.mark.parametrize("quant,dtype", [({"bits": 4}, torch.float32), ({"bits": 4}, torch.float16),
                                         ({"bits": 8, "int8_threshold": 0.0}, torch.float32), ({"bits": 8}, torch.float16)])
def test_quantized_on_cuda_equals_its_own_forward(tiny_cuda, quant, dtype):
    _, _, _, items = tiny_cuda
    q = placed(tiny_cuda, f"q{quant['bits']}-{quant.get('int8_threshold', 6)}-{str(dtype)[6:]}", dtype, quantization=quant)
    assert "bit" in type(q.o_proj(0)).__name__ and q.device.type == "cuda"
    metrics = q.self_check(items)
    tol = metrics["check.tolerance"]
    got = _search(q, items)
    ref = _sampled_reference_diff(q, items, got.effects)
    print(f"CUDA quantization {quant} {dtype}: self-check {metrics['check.max_prob_diff']:.3g} (tolerance {tol:g}), "
          f"model batch vs single {metrics['check.model_batch_diff']:.3g}, exact vs own forward {ref:.3g}, "
          f"shortcuts {q.shortcut_report()}")
    assert tol == (5e-2 if quant.get("int8_threshold", 6) > 0 and quant["bits"] == 8 else
                   1e-4 if dtype == torch.float32 else 2e-2)
    assert metrics["check.max_prob_diff"] <= tol
    assert np.abs(got.effects).max() >= 0.05
    assert ref <= tol
