"""The field's rival interventions beside V-SEAM's (ablate, steer, image_attention), on tiny
models: every policy at strength 0 gives the unmodulated numbers bit for bit; image_attention
equals attention computed by hand; steer equals adding the vector by hand; a family whose
attention cannot be intercepted is refused naming the model; every kind round-trips."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import load_vlm
from vseam_run.errors import VseamError
from vseam_run.modulation import load_file, save_file, state_from_saved, state_to_saved
from vseam_run.modulation.ablate import AblateIntervention
from vseam_run.modulation.image_attention import ImageAttentionIntervention, check_interceptable
from vseam_run.modulation.steer import SteerIntervention, directions, probe_accuracy
from vseam_run.scoring import Item, ScoredSet
from vseam_run.spec import Spec
from vseam_run.stages import modulate as stage


@pytest.fixture(scope="module")
def vlm(tiny_llava_entry):
    return load_vlm(tiny_llava_entry)


@pytest.fixture(scope="module")
def items(vlm):
    from vseam_run.data import toyworld

    examples = toyworld.sample_examples(5, 24, 32)
    gold = vlm.answer_token_ids([e.answer for e in examples])
    return [Item(f"q{i}", e.image, e.question, e.answer, g if g is not None else 0, "c", "val")
            for i, (e, g) in enumerate(zip(examples, gold))]


def _policy(options: dict):
    base = {"name": "t", "model": "toy-llava", "data": {"source": "toyworld"}, "search": {"strategy": "exact"}}
    return Spec.model_validate({**base, "modulation": options}).modulation


def _fake_result(vlm) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    shape = (vlm.num_layers, vlm.num_heads)
    m = SimpleNamespace(positive=rng.random(shape), negative=rng.random(shape), signed=rng.normal(size=shape))
    return SimpleNamespace(matrices=m)


class _Sink(stage.Sink):
    def __init__(self, tmp: Path) -> None:
        self.metrics: dict = {}
        self.docs: dict = {}
        super().__init__(self.metrics.update, self.docs.__setitem__, lambda *a: None, lambda *a: None,
                         lambda *a: None, tmp)


STRENGTH_ZERO = [
    {"policy": "none"},
    {"policy": "paper", "k": 4, "lam": 0},
    {"policy": "linear", "lam": 0},
    {"policy": "topk", "k": 4, "alpha": 1.0, "beta": 1.0},
    {"policy": "ablate", "k": 0},
    {"policy": "steer", "k": 4, "alpha": 0},
    {"policy": "image_attention", "alpha": 0, "from_layer": 0},
]


@pytest.mark.parametrize("options", STRENGTH_ZERO, ids=[o["policy"] for o in STRENGTH_ZERO])
def test_every_policy_at_strength_zero_is_bit_identical(vlm, items, options, tmp_path):
    scored = ScoredSet(vlm, items, 8, "val")
    settings = stage.Settings(_policy(options))
    sets = stage.SplitSets(vlm, {"val": items, "search": items}, 8)
    chosen = stage.choose_scales(vlm, _fake_result(vlm), sets, settings, stage.Matcher(), _Sink(tmp_path))
    iv = chosen.intervention
    assert iv.is_identity() and iv.heads_changed() == 0
    assert scored.run(iv) == scored.run()  # every row, gold probabilities compared as floats: bit for bit


def test_learned_identity_scales_with_hooks_forced_on_are_bit_identical(vlm, items):
    from vseam_run.modulation.learned import edits_for

    scored = ScoredSet(vlm, items, 8, "val")
    ones = torch.ones(vlm.num_layers, vlm.num_heads)
    assert scored.run(edits_for(ones, every_layer=True)) == scored.run()


def _prep(vlm, items):
    return vlm.prepare(vlm.encode([it.image for it in items], [it.question for it in items]))


# ---------------------------------------------------------------------------
# image_attention against a hand computation
# ---------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _hand_attention(attn, hidden, cos, sin, mask, image, heads, alpha) -> torch.Tensor:
    """One Llama attention layer written out: projections, rotary, causal softmax, the text→image
    weights × (1 + α) in `heads`, rows renormalised, values, output projection."""
    b, t, _ = hidden.shape
    d = attn.head_dim
    q = attn.q_proj(hidden).view(b, t, -1, d).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, t, -1, d).transpose(1, 2)
    v = attn.v_proj(hidden).view(b, t, -1, d).transpose(1, 2)
    cos, sin = cos[:, None], sin[:, None]
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = torch.zeros(b, t, q.shape[1], d)
    for row in range(b):
        for h in range(q.shape[1]):
            scores = (q[row, h] @ k[row, h].T) / d ** 0.5
            if mask is not None:
                allowed = mask[row, 0] > torch.finfo(scores.dtype).min / 2 if mask.dtype != torch.bool else mask[row, 0]
            else:
                allowed = torch.ones(t, t, dtype=torch.bool).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
            w = scores.softmax(-1)
            if heads[h]:
                for i in range(t):
                    if not image[row, i]:
                        w[i] = torch.where(image[row], w[i] * (1 + alpha), w[i])
                        w[i] = w[i] / w[i].sum()
            out[row, :, h] = w @ v[row, h]
    return attn.o_proj(out.reshape(b, t, -1))


def test_image_attention_equals_the_hand_computation(vlm, items):
    layer, alpha = 1, 8.0
    heads = torch.zeros(vlm.num_layers, vlm.num_heads, dtype=torch.bool)
    heads[layer, [0, 3]] = True
    heads[2] = True
    iv = ImageAttentionIntervention(heads, alpha, from_layer=1)
    prep = _prep(vlm, items[:4])
    attn = vlm.layers[layer].self_attn
    seen: dict = {}

    def capture(_m, args, kwargs, out):
        seen.setdefault("inputs", (kwargs.get("hidden_states", args[0] if args else None), kwargs))
        seen.setdefault("outputs", []).append(out[0])

    handle = attn.register_forward_hook(capture, with_kwargs=True)
    try:
        base = vlm.last_logits(prep)
        with iv.installed(vlm):
            moved = vlm.last_logits(prep)
    finally:
        handle.remove()
    hidden, kwargs = seen["inputs"]
    cos, sin = kwargs["position_embeddings"]
    image = vlm.image_positions(prep)
    assert image.any(dim=1).all() and (~image).any(dim=1).all()
    with torch.no_grad():
        hand = _hand_attention(attn, hidden, cos, sin, kwargs.get("attention_mask"), image, heads[layer], alpha)
    unmodulated, intercepted = seen["outputs"]
    real = prep.attention_mask.bool()  # left padding attends to nothing: its rows are not compared
    torch.testing.assert_close(intercepted[real], hand[real], atol=1e-5, rtol=1e-4)
    # The reweighting is far (>100x) above that tolerance, and the answer moves.
    assert float((intercepted[real] - unmodulated[real]).abs().max()) > 1e-3
    assert float((moved.softmax(-1) - base.softmax(-1)).abs().max()) > 1e-3
    # Hooks and the attention table are restored.
    assert torch.equal(vlm.last_logits(prep), base) and "last_logits" not in vars(vlm)


def test_image_attention_replay_equals_the_full_forward_with_it_on(vlm, items):
    from vseam_run.modulation.image_attention import replay_check

    heads = torch.ones(vlm.num_layers, vlm.num_heads, dtype=torch.bool)
    diff = replay_check(vlm, ImageAttentionIntervention(heads, 1.0), items)
    assert diff <= vlm.check_tolerance()


def test_image_attention_refuses_a_family_it_cannot_intercept(vlm, items, monkeypatch):
    from transformers.modeling_utils import AttentionInterface
    from transformers.models.llama import modeling_llama

    check_interceptable(vlm, items[0])  # the tiny LLaVA's attention goes through the table
    private = AttentionInterface()  # a family with its own local function table: vseam's entry is never seen
    private._local_mapping.update({"sdpa": AttentionInterface._global_mapping["sdpa"], "eager": modeling_llama.eager_attention_forward})
    monkeypatch.setattr(modeling_llama, "ALL_ATTENTION_FUNCTIONS", private)
    with pytest.raises(VseamError, match=r"model 'tiny-llava'.*cannot intercept its attention"):
        check_interceptable(vlm, items[0])


# ---------------------------------------------------------------------------
# steer and ablate against hand computations
# ---------------------------------------------------------------------------


def test_steer_equals_adding_the_vector_by_hand(vlm, items):
    layer, head, d = 2, 1, vlm.head_dim
    vec = torch.linspace(-3.0, 3.0, d)
    iv = SteerIntervention([(layer, head)], vec[None], vlm.num_layers, vlm.num_heads)
    prep = _prep(vlm, items[:4])
    base = vlm.last_logits(prep)
    with iv.installed(vlm):
        steered = vlm.last_logits(prep)
    # By hand: the o_proj is linear, so adding v to head h's input slice adds W[:, h·d:(h+1)·d] v to its output,
    # at the last position only.
    o_proj = vlm.o_proj(layer)
    shift = o_proj.weight[:, head * d:(head + 1) * d] @ vec

    def add(_m, _args, out):
        out = out.clone()
        out[:, -1] += shift
        return out

    handle = o_proj.register_forward_hook(add)
    try:
        by_hand = vlm.last_logits(prep)
    finally:
        handle.remove()
    torch.testing.assert_close(steered, by_hand, atol=1e-5, rtol=1e-5)
    assert float((steered.softmax(-1) - base.softmax(-1)).abs().max()) > 1e-3


def test_ablate_zeroes_exactly_the_chosen_heads(vlm, items):
    from vseam_run.heads import HeadEdit, edit_heads

    prep = _prep(vlm, items[:4])
    iv = AblateIntervention([(0, 1), (2, 3)], vlm.num_layers, vlm.num_heads)
    with iv.installed(vlm):
        ablated = vlm.last_logits(prep)
    scales = torch.ones(vlm.num_layers, vlm.num_heads)
    scales[0, 1] = scales[2, 3] = 0.0
    with edit_heads(vlm, {l: HeadEdit(factors=scales[l]) for l in range(vlm.num_layers)}):
        zeroed = vlm.last_logits(prep)
    assert torch.equal(ablated, zeroed)
    assert not torch.allclose(ablated, vlm.last_logits(prep))
    drawn = iv.control(np.random.default_rng(0))
    assert len(drawn.heads) == 2 and not set(drawn.heads) & set(iv.heads)


def test_steer_direction_and_probe():
    g = torch.Generator().manual_seed(0)
    n, L, H, d = 64, 2, 3, 4
    y = torch.arange(n) % 3 != 0
    x = torch.randn(n, L, H, d, generator=g)
    x[y, 1, 2] += 2.0  # only head (1, 2) tells right from wrong
    dirs = directions(x, y)
    assert dirs.shape == (L, H, d)
    torch.testing.assert_close(dirs[1, 2], x[y, 1, 2].mean(0) - x[~y, 1, 2].mean(0))
    acc = probe_accuracy(x[:48], y[:48], x[48:], y[48:])
    assert acc.shape == (L, H) and np.unravel_index(acc.argmax(), acc.shape) == (1, 2) and acc[1, 2] > 0.9
    with pytest.raises(ValueError, match="both correctly and wrongly"):
        directions(x, torch.ones(n, dtype=torch.bool))


def test_every_kind_round_trips(tmp_path, vlm):
    heads = torch.zeros(vlm.num_layers, vlm.num_heads, dtype=torch.bool)
    heads[1, 2] = True
    ivs = [AblateIntervention([(0, 1)], 3, 4, "mean"),
           SteerIntervention([(1, 2), (2, 0)], torch.randn(2, vlm.head_dim), 3, 4, 0.5),
           ImageAttentionIntervention(heads, 0.5, 1)]
    for iv in ivs:
        for back in (state_from_saved(state_to_saved(iv)), load_file(save_file(iv, tmp_path / f"{iv.kind}.safetensors"))[0]):
            assert type(back) is type(iv) and back.fingerprint_key() == iv.fingerprint_key()
