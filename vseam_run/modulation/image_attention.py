"""``policy: image_attention`` — amplify the attention text positions pay to image tokens, in the
manner of PAI (ECCV 2024) and VAF / ClearSight: in the chosen heads, the attention weights from
every non-image query position to the image tokens are multiplied by ``1 + α`` and each row is
renormalised to sum to 1. Heads: every head of the layers from ``from_layer`` on (PAI), or only the
search's top-K heads there (``heads: search``, VAF's "chosen heads"). α and ``from_layer`` are
chosen on val (α = 0, always tried, is the identity).

How the weights are reached without editing the model's code: transformers 5.x attention modules
look their attention function up in ``AttentionInterface`` by ``config._attn_implementation`` at
every call (``eager`` included, when registered). While the intervention is installed, vseam
registers its own function under the model's implementation name; it computes the eager attention
(the same operations as transformers' ``eager_attention_forward``) with the reweighting for the
chosen layers and hands every other call to the original function. Which positions are image
tokens comes from the batch being scored (``vlm.image_positions``) or, for a direct
``model(**inputs)`` / ``generate`` call, from its ``input_ids``. A family whose attention never
goes through that lookup (fused kernels only, or a local function table) is found by
:func:`check_interceptable` on one question before the run, and refused naming the model.

Control: the same number of heads, drawn at random over all layers, amplified by the same α.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn as nn

from vseam_run.errors import VseamError
from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.modulation.common import permuted_scales
from vseam_run.modulation.intervention import Intervention, State, register_kind
from vseam_run.modulation.select import select_grid


def attention_modules(vlm) -> list[nn.Module]:
    """Each layer's attention module: the module whose direct child is the layer's o_proj."""
    out = []
    for layer in range(vlm.num_layers):
        o_proj = vlm.o_proj(layer)
        parent = next((m for m in vlm.layers[layer].modules() if any(c is o_proj for c in m.children())), None)
        if parent is None:  # pragma: no cover - o_proj is always inside its layer
            raise VseamError(f"model '{vlm.entry.name}': layer {layer}'s o_proj has no parent module in the layer")
        out.append(parent)
    return out


def reweighted_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, *, scaling: float, dropout: float, heads: torch.Tensor,
                         image_keys: torch.Tensor, alpha: float, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (as transformers computes it) with text→image weights × (1 + α), renormalised.

    ``query`` [B, Hq, Tq, d], ``key``/``value`` [B, Hkv, Tk, d]; ``heads`` bool [Hq] (which heads are
    reweighted); ``image_keys`` bool [B, Tk]. Query positions are the last Tq key positions.
    """
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    tq, tk = query.shape[2], key.shape[2]
    if attention_mask is None:
        causal = torch.ones(tq, tk, dtype=torch.bool, device=query.device).tril(tk - tq)
        attention_mask = causal[None, None]
    if attention_mask.dtype == torch.bool:  # sdpa-style: True = may attend
        attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(
            ~attention_mask, torch.finfo(scores.dtype).min)
    scores = scores + attention_mask[..., :tk]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    img = image_keys.to(weights.device)
    text_q = ~img[:, tk - tq:]  # [B, Tq]
    amplify = (img[:, None, None, :] & text_q[:, None, :, None] & heads.to(weights.device)[None, :, None, None])
    weights = weights * (1.0 + alpha * amplify.to(weights.dtype))
    weights = weights / weights.sum(-1, keepdim=True)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


class _ImageMask:
    """Where the image tokens of the batch being run are ([B, T] bool), kept while installed."""

    def __init__(self, vlm) -> None:
        self.vlm, self.mask = vlm, None

    def from_ids(self, ids: torch.Tensor) -> None:
        new = ids == self.vlm.image_token_id
        if self.mask is not None and new.shape[0] == self.mask.shape[0] and new.shape[1] < self.mask.shape[1] \
                and not bool(new.any()):
            # A cached generation step: the new tokens are text, after the prompt already seen.
            new = torch.cat([self.mask, new], dim=1)
        self.mask = new

    def keys(self, batch: int, tk: int) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("image_attention: no image positions are known for this forward pass")
        m = self.mask
        if m.shape[0] != batch or m.shape[1] > tk:
            raise RuntimeError(f"image_attention: image positions {tuple(m.shape)} do not fit keys [{batch}, {tk}]")
        if m.shape[1] < tk:
            m = torch.cat([m, torch.zeros(batch, tk - m.shape[1], dtype=torch.bool, device=m.device)], dim=1)
        return m


@contextlib.contextmanager
def intercepted(vlm, fn_for_layer: Callable[[int], Callable | None], image: _ImageMask | None = None) -> Iterator[None]:
    """While the block runs, every attention call of ``vlm``'s language model goes through
    ``fn_for_layer(layer)`` (a function with the attention interface's signature plus ``original=``),
    or the original function where it returns None."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    modules = attention_modules(vlm)
    layer_of = {id(m): i for i, m in enumerate(modules)}
    impls = {getattr(getattr(m, "config", None), "_attn_implementation", None) or "eager" for m in modules}
    missing = object()
    # The shared table's own entries win over the class-wide ones (transformers' lookup order).
    tables = (ALL_ATTENTION_FUNCTIONS._local_mapping, AttentionInterface._global_mapping)
    saved = [(table, impl, table.get(impl, missing)) for impl in impls for table in tables]
    originals: dict[str, Any] = {}
    for impl in impls:
        found = [prev for table, i, prev in saved if i == impl and prev is not missing]
        originals[impl] = found[0] if found else None  # None: the modeling file's eager default

    def original_for(impl: str, module: nn.Module) -> Callable:
        if originals[impl] is not None:
            return originals[impl]
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"image_attention: {type(module).__name__} has no eager_attention_forward to fall back on")
        return fn

    def wrapper_for(impl: str) -> Callable:
        def wrapped(module, query, key, value, attention_mask, *args, **kwargs):
            original = original_for(impl, module)
            layer = layer_of.get(id(module))
            fn = None if layer is None else fn_for_layer(layer)
            if fn is None:
                return original(module, query, key, value, attention_mask, *args, **kwargs)
            return fn(module, query, key, value, attention_mask, *args, original=original, **kwargs)
        return wrapped

    for table, impl, prev in saved:
        if prev is not missing or table is AttentionInterface._global_mapping:
            table[impl] = wrapper_for(impl)
    hooks = []
    real_last_logits = None
    if image is not None:
        def pre(_mod, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            if ids is not None:
                image.from_ids(ids)
        hooks.append(vlm.model.register_forward_pre_hook(pre, with_kwargs=True))
        real_last_logits = vlm.last_logits

        def last_logits(prep, *args, **kwargs):
            if prep.input_ids is not None:
                image.from_ids(prep.input_ids)
            return real_last_logits(prep, *args, **kwargs)

        vlm.last_logits = last_logits
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        if real_last_logits is not None:
            del vlm.last_logits  # the instance attribute; the class's method shows through again
        for table, impl, prev in reversed(saved):
            if prev is missing:
                table.pop(impl, None)
            else:
                table[impl] = prev


def check_interceptable(vlm, item: Any) -> None:
    """Refuse, naming the model, when one question's forward pass (full model and replay) does not
    send every layer's attention through the interface vseam intercepts."""
    seen: set[int] = set()

    def record(layer: int) -> Callable:
        def fn(module, query, key, value, attention_mask, *args, original, **kwargs):
            seen.add(layer)
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        return fn

    inputs = vlm.encode([item.image], [item.question])
    with torch.no_grad(), intercepted(vlm, record):
        vlm.model(**inputs, use_cache=False)
        full = set(seen)
        seen.clear()
        if vlm.replay:
            vlm.last_logits(vlm.prepare(inputs))
    missed = sorted(set(range(vlm.num_layers)) - (full & seen if vlm.replay else full))
    if missed:
        raise VseamError(
            f"model '{vlm.entry.name}' ({type(vlm.model).__name__}): policy image_attention cannot intercept its attention "
            f"weights: layers {missed} never called transformers' attention interface (fused kernels or a local function "
            "table); the reweighting would silently not happen",
            hint="use another modulation policy for this model (paper, linear, learned, ablate, steer)")


@register_kind
class ImageAttentionIntervention(Intervention):
    """In the heads of ``heads`` ([L, H] bool), text→image attention weights × (1 + α), renormalised."""

    kind: ClassVar[str] = "image_attention"
    control_label: ClassVar[str] = "as many random heads, same α"

    def __init__(self, heads: torch.Tensor, alpha: float, from_layer: int = 0) -> None:
        self.heads = heads.to(torch.bool)
        self.alpha, self.from_layer = float(alpha), int(from_layer)

    def installed(self, vlm) -> contextlib.AbstractContextManager[None]:
        if self.is_identity():
            return contextlib.nullcontext()
        image = _ImageMask(vlm)
        heads, alpha = self.heads, self.alpha
        softcap = getattr(vlm.text_config, "attn_logit_softcapping", None)

        def for_layer(layer: int) -> Callable | None:
            if not bool(heads[layer].any()):
                return None

            def fn(module, query, key, value, attention_mask, *args, original, scaling=None, dropout=0.0, **kwargs):
                if args:
                    raise RuntimeError("image_attention: unexpected positional arguments to the attention function")
                return reweighted_attention(
                    module, query, key, value, attention_mask, scaling=scaling if scaling is not None else query.shape[-1] ** -0.5,
                    dropout=dropout, heads=heads[layer], image_keys=image.keys(query.shape[0], key.shape[2]), alpha=alpha,
                    softcap=kwargs.get("softcap", softcap))
            return fn

        return intercepted(vlm, for_layer, image)

    def is_identity(self) -> bool:
        return self.alpha == 0 or not bool(self.heads.any())

    def heads_changed(self) -> float:
        return 0.0 if self.is_identity() else float(self.heads.sum())

    def control(self, rng: np.random.Generator) -> "ImageAttentionIntervention":
        moved = torch.as_tensor(permuted_scales(self.heads.to(torch.float32).numpy(), rng)) > 0.5
        return ImageAttentionIntervention(moved, self.alpha, self.from_layer)

    def state(self) -> State:
        return State({"heads": self.heads}, {"kind": self.kind, "alpha": self.alpha, "from_layer": self.from_layer})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "ImageAttentionIntervention":
        return cls(tensors["heads"], float(meta["alpha"]), int(meta.get("from_layer", 0)))

    def describe(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "from_layer": self.from_layer,
                "heads": [[l, h] for l, h in torch.nonzero(self.heads).tolist()]}


@torch.no_grad()
def replay_check(vlm, iv: Intervention, items: list[Any]) -> float:
    """With ``iv`` installed: the largest last-position probability difference between vseam's
    replay and the model's own forward pass on a padded batch (the self-check, with it on)."""
    images, questions = vlm._check_batch(items)
    inputs = vlm.encode(images, questions)
    prep = vlm.prepare(inputs)
    with iv.installed(vlm):
        full = vlm.model(**inputs, use_cache=False).logits[:, -1].float().softmax(-1)
        fast = vlm.last_logits(prep, tail_only=False).softmax(-1) if vlm.replay else full
    return float((fast - full).abs().max())


@register_policy
class ImageAttention(Policy):
    name = "image_attention"

    def preflight(self, vlm, items: list[Any]) -> None:
        if items:
            check_interceptable(vlm, items[0])

    def choose(self, ctx: FitContext) -> Chosen:
        pol, sink, vlm = self.options, ctx.sink, ctx.vlm
        L, H = vlm.num_layers, vlm.num_heads
        if pol.heads == "search":
            from vseam_run.modulation.steer import importance

            m = ctx.result.matrices
            rank = importance(m.positive, m.negative)
        else:
            rank = None

        def intervention(from_layer: int, alpha: float) -> ImageAttentionIntervention:
            heads = torch.zeros(L, H, dtype=torch.bool)
            if rank is None:
                heads[from_layer:] = True
            else:
                sub = np.full((L, H), -np.inf)
                sub[from_layer:] = rank[from_layer:]
                order = np.argsort(-sub.reshape(-1), kind="stable")[: pol.k]
                for i in order:
                    if np.isfinite(sub.reshape(-1)[i]) and sub.reshape(-1)[i] > 0:
                        heads[i // H, i % H] = True
            return ImageAttentionIntervention(heads, alpha, from_layer)

        layers = ([min(int(f * L), L - 1) for f in pol.layer_grid] if pol.from_layer == "auto"
                  else [min(int(pol.from_layer), L - 1)])
        alphas = pol.grid if pol.alpha == "auto" else [float(pol.alpha)]
        candidates = [{"from_layer": l, "alpha": float(a)} for l in dict.fromkeys(layers) for a in dict.fromkeys(alphas)]
        if len(candidates) > 1:
            acc = ctx.val_accuracy("modulation.alpha / from_layer: auto")
            # Ties: the smaller α, then the later first layer (fewer layers changed).
            choice = select_grid(candidates, lambda p: acc(intervention(int(p["from_layer"]), p["alpha"])),
                                 lambda p: (abs(p["alpha"]), -p["from_layer"]))
            best = choice.best
            sink.document("image_attention_selection", choice.rows())
            sink.log("  from layer, α on val: " + ", ".join(
                f"{int(p.params['from_layer'])},{p.params['alpha']:g}→{p.val_accuracy:.3f}" for p in choice.table)
                + f"; chose from layer {int(best['from_layer'])}, α = {best['alpha']:g}")
        else:
            best = candidates[0]
        iv = intervention(int(best["from_layer"]), best["alpha"])
        metrics = {"modulation.alpha": best["alpha"], "modulation.from_layer": float(best["from_layer"])}
        if not iv.is_identity():
            val_items = ctx.sets.get("val", "policy: image_attention").items
            diff = replay_check(vlm, iv, val_items)
            metrics["modulation.check.max_prob_diff"] = diff
            if diff > vlm.check_tolerance():
                raise VseamError(
                    f"model '{vlm.entry.name}': with image_attention installed, vseam's replay differs from the model's own "
                    f"forward pass by {diff:.3g} in last-position probability (tolerance {vlm.check_tolerance():g})",
                    hint="report the model class; use another modulation policy meanwhile")
        sink.record(metrics)
        return Chosen(iv, {"policy": "image_attention", "heads": pol.heads, "from_layer": int(best["from_layer"]),
                           "alpha": best["alpha"], **({"k": pol.k} if pol.heads == "search" else {})})
