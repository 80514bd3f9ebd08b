"""Answer scoring over a question set, with optional head edits — shared by baseline, λ
selection, held-out evaluation and ablation validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from vseam_run.heads import HeadEdit, edit_heads
from vseam_run.progress import progress
from vseam_run.vlm import VLM, Prepared


@dataclass
class Item:
    """A question ready to score: image, text, gold answer and its first token id."""

    qid: str
    image: Image.Image
    question: str
    answer: str
    gold_id: int
    category: str
    split: str = ""


Batch = tuple[Prepared, torch.Tensor, list[Item]]


def _encode(vlm: VLM, chunk: list[Item]) -> Batch:
    prep = vlm.prepare(vlm.encode([c.image for c in chunk], [c.question for c in chunk]))
    return prep, torch.tensor([c.gold_id for c in chunk], device=vlm.device), chunk


@torch.no_grad()
def _score(vlm: VLM, batch: Batch) -> list[dict]:
    prep, gold, chunk = batch
    s = vlm.score(vlm.last_logits(prep), gold)
    preds = vlm.tokenizer.convert_ids_to_tokens(s.pred_id.tolist())
    return [
        dict(qid=it.qid, split=it.split, category=it.category, gold=it.answer, pred=p, correct=bool(c), gold_prob=float(g))
        for it, p, c, g in zip(chunk, preds, s.correct.tolist(), s.gold_prob.tolist())
    ]


class ScoredSet:
    """Question batches encoded once (image features included) and re-scored under any head edits."""

    def __init__(self, vlm: VLM, items: Sequence[Item], batch_size: int, label: str = "encode") -> None:
        self.vlm = vlm
        self.items = list(items)
        self.batches: list[Batch] = []
        with progress(label, len(self.items)) as advance:
            for i in range(0, len(self.items), batch_size):
                self.batches.append(_encode(vlm, self.items[i : i + batch_size]))
                advance(len(self.batches[-1][2]))

    @staticmethod
    def score_once(vlm: VLM, items: Sequence[Item], batch_size: int, label: str) -> list[dict]:
        """Score each batch as it is encoded, keeping nothing (bounded memory for one pass)."""
        rows: list[dict] = []
        with progress(label, len(items)) as advance:
            for i in range(0, len(items), batch_size):
                rows += _score(vlm, _encode(vlm, list(items[i : i + batch_size])))
                advance(min(batch_size, len(items) - i))
        return rows

    def run(self, edits: dict[int, HeadEdit] | None = None) -> list[dict]:
        """Per-question rows (qid, split, category, gold, pred, correct, gold_prob)."""
        with edit_heads(self.vlm, edits or {}):
            return [row for batch in self.batches for row in _score(self.vlm, batch)]


def accuracy(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / max(len(rows), 1)
