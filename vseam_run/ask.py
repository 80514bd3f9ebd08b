"""One question, base vs modulated: the generated answers, the first token's top-5 probabilities
and which heads the modulation changes (what `vseam ask` prints)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vseam_run.generation import generate_batch, installed

__all__ = ["Answer", "AskResult", "ask", "heads_changed"]


@dataclass
class Answer:
    text: str
    top5: list[tuple[str, float]]  # first answer token: (token, probability)


@dataclass
class AskResult:
    base: Answer
    modulated: Answer | None
    heads: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def _answer(vlm, image, question: str, max_new_tokens: int, intervention) -> Answer:
    with installed(vlm, intervention):
        logits = vlm.model(**vlm.encode([image], [question]), use_cache=False).logits[0, -1].float()
        text = generate_batch(vlm, [image], [question], max_new_tokens)[0].text
    probs = logits.softmax(-1)
    top = probs.topk(5)
    tokens = vlm.tokenizer.convert_ids_to_tokens(top.indices.tolist())
    return Answer(text, [(t, float(p)) for t, p in zip(tokens, top.values.tolist())])


def heads_changed(intervention) -> list[dict[str, Any]]:
    """Every head the intervention changes, largest change first (scale interventions: their scales)."""
    scales = getattr(intervention, "scales", None)
    if scales is None:
        return []
    rows = []
    if scales.dim() == 2:
        for l, h in (scales != 1).nonzero().tolist():
            s = float(scales[l, h])
            rows.append({"layer": l, "head": h, "scale": s, "change": s - 1.0})
    else:  # [L, 2, H]: rest, last position
        for l, h in (scales != 1).any(1).nonzero().tolist():
            rest, last = float(scales[l, 0, h]), float(scales[l, 1, h])
            rows.append({"layer": l, "head": h, "scale (rest)": rest, "scale (last)": last,
                         "change": max(rest - 1.0, last - 1.0, key=abs)})
    return sorted(rows, key=lambda r: -abs(r["change"]))


def ask(vlm, image, question: str, intervention=None, *, max_new_tokens: int = 16) -> AskResult:
    """The base model's answer and, with an intervention, the modulated one."""
    base = _answer(vlm, image, question, max_new_tokens, None)
    if intervention is None:
        return AskResult(base, None)
    return AskResult(base, _answer(vlm, image, question, max_new_tokens, intervention), heads_changed(intervention))
