"""Answer scoring over a question set, with optional head edits — shared by baseline, λ
selection, held-out evaluation and ablation validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

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
    """Question batches re-scored under any head edits: encoded once and kept (image features
    included), or with `stream` encoded again at each use, one batch in memory at a time (the
    same operations on the same batches: the same numbers, for re-encoding's cost).

    Under torchrun each rank encodes and scores only its own batches (`vseam_run.dist`: whole
    batches, round-robin); `run` gathers the rows in order, so every rank gets all of them.
    Inside `dist.unsharded()` (one rank working alone, e.g. fitting learned scales) `run`
    scores every batch itself.
    """

    def __init__(self, vlm: VLM, items: Sequence[Item], batch_size: int, label: str = "encode", *, stream: bool = False) -> None:
        self.vlm = vlm
        self.items = list(items)
        self.stream = stream
        self._chunks = [self.items[i : i + batch_size] for i in range(0, len(self.items), batch_size)]
        self._held: dict[int, Batch] = {}  # batch index → encoded batch (held mode only)
        if stream:
            return
        mine = dist.current().mine(len(self._chunks))
        with progress(label, sum(len(self._chunks[i]) for i in mine)) as advance:
            for i in mine:
                self.batch(i)
                advance(len(self._chunks[i]))

    @property
    def batches(self) -> list[Batch]:
        """The batches held now (none when streamed)."""
        return [self._held[i] for i in sorted(self._held)]

    def batch(self, i: int) -> Batch:
        """Batch `i`, encoded (and kept, unless streamed)."""
        if i in self._held:
            return self._held[i]
        encoded = _encode(self.vlm, self._chunks[i])
        if not self.stream:
            self._held[i] = encoded
        return encoded

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

    def run(self, edits: dict[int, HeadEdit] | Any = None) -> list[dict]:
        """Per-question rows (qid, split, category, gold, pred, correct, gold_prob), under head edits
        (layer → HeadEdit) or an intervention (anything with ``installed(vlm)``, vseam_run.modulation)."""
        w = dist.current()  # how work is split now (a set may be made sharded and used by one rank alone)
        hooks = edits.installed(self.vlm) if hasattr(edits, "installed") else edit_heads(self.vlm, edits or {})
        with hooks:
            local = {i: _score(self.vlm, self.batch(i)) for i in w.mine(len(self._chunks))}
        return [row for rows in dist.gather_units(len(self._chunks), local, w) for row in rows]

    def every_batch(self) -> Sequence[Batch]:
        """All batches, in order, on this rank (for work that cannot be split: fitting scales);
        streamed, each is encoded when it is indexed."""
        return _Batches(self)


class _Batches(Sequence[Batch]):
    """A ScoredSet's batches as a sequence (held ones kept, streamed ones encoded on access)."""

    def __init__(self, scored: ScoredSet) -> None:
        self._scored = scored

    def __len__(self) -> int:
        return len(self._scored._chunks)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._scored.batch(j) for j in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._scored.batch(i % len(self))


def accuracy(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / max(len(rows), 1)
