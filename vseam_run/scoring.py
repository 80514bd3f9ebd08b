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


class ScoredSet:
    """Question batches encoded once (image features included) and re-scored under any head edits."""

    def __init__(self, vlm: VLM, items: Sequence[Item], batch_size: int, label: str = "encode") -> None:
        self.vlm = vlm
        self.items = list(items)
        self.batches: list[tuple[Prepared, torch.Tensor, list[Item]]] = []
        with progress(label, len(self.items)) as advance:
            for i in range(0, len(self.items), batch_size):
                chunk = self.items[i : i + batch_size]
                self.batches.append(self._encode(chunk))
                advance(len(chunk))

    def _encode(self, chunk: list[Item]) -> tuple[Prepared, torch.Tensor, list[Item]]:
        prep = self.vlm.prepare(self.vlm.encode([c.image for c in chunk], [c.question for c in chunk]))
        return prep, torch.tensor([c.gold_id for c in chunk], device=self.vlm.device), chunk

    @classmethod
    def score_once(cls, vlm: VLM, items: Sequence[Item], batch_size: int, label: str) -> list[dict]:
        """Score each batch as it is encoded, keeping nothing (bounded memory for one pass)."""
        scorer = cls(vlm, [], batch_size, label)
        rows: list[dict] = []
        with progress(label, len(items)) as advance:
            for i in range(0, len(items), batch_size):
                scorer.batches = [scorer._encode(list(items[i : i + batch_size]))]
                rows += scorer.run()
                advance(len(scorer.batches[0][2]))
        return rows

    @torch.no_grad()
    def run(self, edits: dict[int, HeadEdit] | None = None) -> list[dict]:
        """Per-question rows (qid, split, category, gold, pred, correct, gold_prob)."""
        rows = []
        with edit_heads(self.vlm, edits or {}):
            for prep, gold, chunk in self.batches:
                s = self.vlm.score(self.vlm.last_logits(prep), gold)
                preds = self.vlm.tokenizer.convert_ids_to_tokens(s.pred_id.tolist())
                for it, p, c, g in zip(chunk, preds, s.correct.tolist(), s.gold_prob.tolist()):
                    rows.append(dict(qid=it.qid, split=it.split, category=it.category, gold=it.answer, pred=p, correct=bool(c), gold_prob=float(g)))
        return rows


def accuracy(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / max(len(rows), 1)
