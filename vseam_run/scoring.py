"""Answer scoring over a question set, with optional head edits — shared by baseline, λ
selection, held-out evaluation and ablation validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from vseam_run import dist
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
    """Question batches encoded once (image features included) and re-scored under any head edits.

    Under torchrun each rank encodes and scores only its own batches (`vseam_run.dist`: whole
    batches, round-robin); `run` gathers the rows in order, so every rank gets all of them.
    """

    def __init__(self, vlm: VLM, items: Sequence[Item], batch_size: int, label: str = "encode") -> None:
        self.vlm = vlm
        self.items = list(items)
        self._chunks = [self.items[i : i + batch_size] for i in range(0, len(self.items), batch_size)]
        self._world = dist.current()
        self._mine = self._world.mine(len(self._chunks))
        self.batches: list[Batch] = []  # this rank's batches (all of them in one process)
        self._every: list[Batch] | None = None
        with progress(label, sum(len(self._chunks[i]) for i in self._mine)) as advance:
            for i in self._mine:
                self.batches.append(_encode(vlm, self._chunks[i]))
                advance(len(self._chunks[i]))

    @staticmethod
    def score_once(vlm: VLM, items: Sequence[Item], batch_size: int, label: str) -> list[dict]:
        """Score each batch as it is encoded, keeping nothing (bounded memory for one pass)."""
        chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
        mine = dist.current().mine(len(chunks))
        with progress(label, sum(len(chunks[i]) for i in mine)) as advance:

            def one(chunk: list[Item]) -> list[dict]:
                rows = _score(vlm, _encode(vlm, chunk))
                advance(len(chunk))
                return rows

            return [row for rows in dist.map_units(chunks, one) for row in rows]

    def run(self, edits: dict[int, HeadEdit] | None = None) -> list[dict]:
        """Per-question rows (qid, split, category, gold, pred, correct, gold_prob)."""
        with edit_heads(self.vlm, edits or {}):
            local = {i: _score(self.vlm, batch) for i, batch in zip(self._mine, self.batches)}
        return [row for rows in dist.gather_units(len(self._chunks), local, self._world) for row in rows]

    def every_batch(self) -> list[Batch]:
        """All batches on this rank, in order (for work that cannot be split: fitting scales)."""
        if len(self._mine) == len(self._chunks):
            return self.batches
        if self._every is None:
            self._every = [_encode(self.vlm, chunk) for chunk in self._chunks]
        return self._every


def accuracy(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / max(len(rows), 1)
