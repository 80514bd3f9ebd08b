"""The sharded library calls a full run in test_dist.py does not reach, under torchrun (2 gloo
ranks): the reference search (heads of a layer round-robin), learned scales (fitted by rank 0
alone, broadcast), attribution and reference tracing (whole batches / pairs) and the logit lens.
Each rank computes every call sharded and then alone (`dist.unsharded()`), and says whether the
two agree bit for bit; rank 0 writes every rank's verdicts as JSON to argv[2].

    torchrun --nproc-per-node 2 tests/dist_units.py ENTRY.yaml OUT.json
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from test_trace import amplify, make_pairs
from vseam_run import dist
from vseam_run import trace as tr
from vseam_run.data import toyworld
from vseam_run.registry import load_entry_file
from vseam_run.scoring import Item
from vseam_run.search import SearchItem
from vseam_run.search.strategies import reference_effects
from vseam_run.spec import LearnedPolicy
from vseam_run.stages import modulate as stage
from vseam_run.vlm import VLM


def _items(vlm, n: int, seed: int) -> list[Item]:
    ex = toyworld.sample_examples(seed, n, 32)
    gold = vlm.answer_token_ids([e.answer for e in ex])
    return [Item(f"q{seed}_{i}", e.image, e.question, e.answer, g, "c", "") for i, (e, g) in enumerate(zip(ex, gold)) if g is not None]


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(a, b))


def main(entry: str, out: str) -> None:
    torch.set_num_threads(1)
    vlm = VLM.load(load_entry_file(Path(entry)), torch.device("cpu"), torch.float32)
    amplify(vlm)
    verdicts: dict[str, bool] = {}
    with dist.session(torch.device("cpu")) as world:
        assert world.size == 2
        search = [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in _items(vlm, 3, 7)]

        def both(name: str, fn, fields) -> None:
            sharded = fn()
            with dist.unsharded():
                alone = fn()
            verdicts[name] = _same([getattr(sharded, f) for f in fields], [getattr(alone, f) for f in fields])
            verdicts[name + ".nonzero"] = bool(np.nanmax(np.abs(np.asarray(getattr(alone, fields[0]), dtype=float))) > 0)

        both("reference_search", lambda: reference_effects(vlm, search, "mean"), ["effects", "base_prob", "correct"])
        pairs = make_pairs(vlm, 5)
        both("attribution_trace", lambda: tr.attribution_trace(vlm, pairs, margin=0.0, batch_size=2),
             ["patched", "p_source", "p_base", "eligible"])
        both("reference_trace", lambda: tr.reference_trace(vlm, pairs[:3], margin=0.0, components=["resid"]),
             ["patched", "p_source", "p_base", "eligible"])
        both("logit_lens", lambda: tr.logit_lens(vlm, pairs, batch_size=2), ["prob", "rank"])

        by_split = {"search": _items(vlm, 5, 8), "val": _items(vlm, 3, 9)}
        pol = LearnedPolicy(policy="learned", epochs=2, lr=0.2, kl=0.5, l2=0.1)
        settings = stage.Settings(pol, batch_size=2, seed=3)
        logged: list = []
        sink = stage.Sink(lambda m: None, lambda k, v: None, lambda *a: None, lambda *a: None, logged.append, Path("."))
        matcher = stage.Matcher()
        no_search = SimpleNamespace(matrices=None)  # learned scales do not read the search's matrices
        sharded = stage.choose_scales(vlm, no_search, stage.SplitSets(vlm, by_split, 2), settings, matcher, sink)
        fitted_here = any("learned epoch" in str(m) for m in logged)
        with dist.unsharded():
            alone = stage.choose_scales(vlm, no_search, stage.SplitSets(vlm, by_split, 2), settings, matcher, sink)
        verdicts["learned"] = torch.equal(sharded.scales, alone.scales) and sharded.params == alone.params
        verdicts["learned.nonzero"] = float((alone.scales - 1).abs().max()) > 1e-3
        # Rank 0 fitted (and logged its epochs); the other rank only received the result.
        verdicts["learned.fitted_by_rank0_only"] = fitted_here == world.main
        every: list = [None, None]
        tdist.all_gather_object(every, verdicts)
        if world.main:
            Path(out).write_text(json.dumps(every))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
