"""Do a toy model's answers run through one head? (issue 20 item 4)

Two measures, on toy-world questions of every level seeded apart from training's and from the
planting bench's (`SEED`):

- the accuracy each head costs when it alone is ablated (`plant.measure_use`, mean-ablation by
  default: the head search's rule; `vseam zoo heads` gives the zero-ablation view);
- the top positive head of an exact head search on each level's questions.

A model whose answers do not all run through one head has no head that is the top positive head
at all three levels (`one_head_everywhere` is None), and at least `MIN_HEADS` heads in at least
`MIN_LAYERS` layers that each cost >= `MATTERS` accuracy (`spread_enough`).
"""

from __future__ import annotations

from dataclasses import dataclass

from vseam_run.zoo.plant import HeadUse, measure_use, use_questions

LEVELS = ("object", "attribute", "relation")
MATTERS = 0.05  # accuracy a head must cost, ablated alone, to count as used
MIN_HEADS, MIN_LAYERS = 5, 2
SEED = 515_151


@dataclass
class Spread:
    use: HeadUse
    top_positive: dict[str, tuple[int, int, float]]  # level -> (layer, head, score)

    def used(self) -> list[tuple[int, int, float]]:
        return self.use.used(MATTERS)

    def one_head_everywhere(self) -> tuple[int, int] | None:
        """The head that is the top positive head at every level, if one is."""
        tops = {(l, h) for l, h, _ in self.top_positive.values()}
        return next(iter(tops)) if len(tops) == 1 and len(self.top_positive) == len(LEVELS) else None

    def spread_enough(self) -> bool:
        used = self.used()
        return len(used) >= MIN_HEADS and len({l for l, _, _ in used}) >= MIN_LAYERS

    def to_json(self) -> dict:
        used = self.used()
        top = self.one_head_everywhere()
        return {"base_accuracy": round(self.use.base_accuracy, 4), "questions": self.use.n, "ablation": self.use.mode,
                f"heads_costing_{MATTERS}": [[l, h, round(d, 4)] for l, h, d in used],
                "layers_with_such_heads": sorted({l for l, _, _ in used}),
                "top_positive_by_level": {k: [l, h, round(s, 4)] for k, (l, h, s) in self.top_positive.items()},
                "one_head_top_everywhere": list(top) if top else None,
                "spread_enough": self.spread_enough(),
                "drops": self.use.drops.round(4).tolist(),
                "drops_by_level": {k: v.round(4).tolist() for k, v in self.use.by_level.items()}}


def top_positive_by_level(vlm, items: list, n: int = 64, batch_size: int = 16) -> dict[str, tuple[int, int, float]]:
    """Top positive head of an exact search (subset scoring, mean ablation) on the first `n`
    questions of each level among `items` (scoring.Item)."""
    from vseam_run.data.toyworld.questions import CATEGORY_LEVEL
    from vseam_run.search import SearchItem, search_heads

    out = {}
    for level in LEVELS:
        mine = [it for it in items if CATEGORY_LEVEL.get(it.category) == level][:n]
        if not mine:
            continue
        found = search_heads(vlm, [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in mine],
                             strategy="exact", scoring="subset", ablation="mean", top_k=1, batch_size=batch_size)
        out[level] = found.matrices.top_positive[0]
    return out


def measure(vlm, images: int = 240, n_search: int = 64, mode: str = "mean", log=None) -> Spread:
    """Both measures on `images` toy-world scenes (about 2.5 questions each)."""
    items = use_questions(vlm, images, seed=SEED)
    use = measure_use(vlm, items, mode=mode, log=log)
    return Spread(use, top_positive_by_level(vlm, items, n_search))
