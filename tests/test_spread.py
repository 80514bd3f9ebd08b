"""The third toy model (issue 20 item 4): the head read-out aid that trains it and the measure of
whether a model's answers run through one head (vseam_run/zoo/spread.py)."""

from __future__ import annotations

import numpy as np
import torch

from vseam_run.zoo import spread as sp
from vseam_run.zoo.plant import HeadUse
from vseam_run.zoo.train import HeadReaders, RECIPES


def test_head_readers_read_only_their_own_heads_slice():
    """The aid's loss for head (1, 2) depends on that head's slice of layer 1's o_proj input and
    on nothing else: changing another head's slice, or another layer, leaves it unchanged."""
    torch.manual_seed(0)
    hd, heads = 4, 3
    readers = HeadReaders([(1, 2)], hd, n_facts=5)
    facts = (torch.rand(2, 6, 5) > 0.5).float()
    facts[:, :, 0] = 1.0  # present
    mention = torch.full((2, 7), -1)
    mention[0, 3], mention[1, 5] = 1, 4  # kind words naming kinds 1 and 4
    o = {1: torch.randn(2, 7, heads * hd), 0: torch.randn(2, 7, heads * hd)}
    base = readers.loss(o, [((1, 2), mention)], facts)
    other = {1: o[1].clone(), 0: torch.randn_like(o[0])}
    other[1][..., : 2 * hd] += 5.0  # heads 0 and 1 of layer 1
    assert torch.allclose(readers.loss(other, [((1, 2), mention)], facts), base)
    mine = {1: o[1].clone(), 0: o[0]}
    mine[1][0, 3, 2 * hd:] += 5.0  # head 2 at the first kind word
    assert not torch.allclose(readers.loss(mine, [((1, 2), mention)], facts), base)
    # A batch without any kind word for the head costs nothing.
    assert readers.loss(o, [((1, 2), torch.full((2, 7), -1))], facts).item() == 0.0


def test_spread_recipe_names_heads_in_several_layers():
    r = RECIPES["toy-llava-spread"]
    heads = {tuple(h) for hs in r.lookup_heads.values() for h in hs}
    assert len(heads) >= sp.MIN_HEADS and len({l for l, _ in heads}) >= sp.MIN_LAYERS
    assert all(l < r.model.text_layers and h < r.model.text_heads for l, h in heads)


def _use(drops: dict[tuple[int, int], float]) -> HeadUse:
    m = np.zeros((4, 4))
    for (l, h), d in drops.items():
        m[l, h] = d
    return HeadUse(0.85, m, 100, "mean")


def test_one_head_everywhere_and_spread_enough():
    top_same = {lv: (0, 0, 0.4) for lv in sp.LEVELS}
    top_varied = {"object": (0, 0, 0.4), "attribute": (1, 2, 0.3), "relation": (0, 0, 0.2)}
    five_in_two = _use({(0, 0): 0.3, (0, 1): 0.06, (1, 2): 0.05, (2, 3): 0.1, (2, 0): 0.07})
    assert sp.Spread(five_in_two, top_same).one_head_everywhere() == (0, 0)
    assert sp.Spread(five_in_two, top_varied).one_head_everywhere() is None
    # Two levels alone cannot show that one head is top at all three.
    assert sp.Spread(five_in_two, {k: top_same[k] for k in ("object", "attribute")}).one_head_everywhere() is None
    assert sp.Spread(five_in_two, top_varied).spread_enough()
    assert not sp.Spread(_use({(0, h): 0.2 for h in range(4)} | {(0, 0): 0.3}), top_varied).spread_enough()  # 4 heads
    one_layer = _use({(1, h): 0.2 for h in range(4)} | {(1, 0): 0.3})
    one_layer.drops[1] = 0.2  # 4 heads, and all in one layer
    assert not sp.Spread(one_layer, top_varied).spread_enough()
    just_under = _use({(0, 0): 0.3, (0, 1): 0.06, (1, 2): 0.049, (2, 3): 0.1, (2, 0): 0.07})
    assert not sp.Spread(just_under, top_varied).spread_enough()
    j = sp.Spread(five_in_two, top_varied).to_json()
    assert j["spread_enough"] and j["one_head_top_everywhere"] is None and j["layers_with_such_heads"] == [0, 1, 2]


def test_shipped_spread_model_has_no_one_head_and_its_layer0_heads_matter():
    """What the README reports for the shipped toy-llava-spread, on fewer questions (a cheap
    re-measure): the top positive head differs between levels, and L0.H1 and L0.H4 each cost at
    least 0.05 accuracy when mean-ablated (0.139 and 0.101 on 596 questions)."""
    from vseam_run.registry import get_entry
    from vseam_run.vlm import VLM
    from vseam_run.zoo.plant import measure_use, use_questions

    vlm = VLM.load(get_entry("toy-llava-spread"), torch.device("cpu"), torch.float32)
    items = use_questions(vlm, 100, seed=sp.SEED)
    use = measure_use(vlm, items, heads=[(0, 1), (0, 4)], mode="mean")
    assert use.drops[0, 1] >= sp.MATTERS and use.drops[0, 4] >= sp.MATTERS, use.drops[0]
    found = sp.Spread(use, sp.top_positive_by_level(vlm, items, n=32))
    assert set(found.top_positive) == set(sp.LEVELS)
    assert found.one_head_everywhere() is None, found.top_positive


def test_zoo_spread_refuses_an_unknown_ablation(capsys):
    from vseam_run.cli.main import cli

    assert cli(["zoo", "spread", "toy-llava-spread", "--ablation", "half"]) == 2
    err = capsys.readouterr()
    assert "--ablation" in err.out + err.err and "Traceback" not in err.out + err.err
