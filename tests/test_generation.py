"""Greedy generation (vseam_run.generation): padded batches give batch-1's answers, with and
without a modulation, and the modulation acts at every generated position."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from vseam_run.generation import GenerationReport, generate_answers, generate_batch
from vseam_run.heads import edit_heads
from vseam_run.learned import edits_for


@dataclass
class Q:
    qid: str
    image: Image.Image
    question: str


def _items(toy_examples) -> list[Q]:
    return [Q(str(i), e.image, e.question) for i, e in enumerate(toy_examples)]


def _strong_scales(vlm, positions: bool = False) -> torch.Tensor:
    """Scales far from 1 on many heads, so that the modulated answers differ from the base ones."""
    g = torch.Generator().manual_seed(3)
    shape = (vlm.num_layers, 2, vlm.num_heads) if positions else (vlm.num_layers, vlm.num_heads)
    return torch.rand(shape, generator=g) * 4.0


@pytest.mark.parametrize("modulated", [False, True])
def test_padded_batches_equal_batch_one(tiny_vlm, toy_examples, modulated):
    items = _items(toy_examples)
    edits = edits_for(_strong_scales(tiny_vlm)) if modulated else None
    lengths = {tiny_vlm.encode([it.image], [it.question])["input_ids"].shape[1] for it in items}
    assert len(lengths) > 1  # the batch is padded
    report = GenerationReport()
    batched = generate_answers(tiny_vlm, items, max_new_tokens=6, batch_size=len(items), edits=edits, report=report)
    with edit_heads(tiny_vlm, edits or {}):
        alone = [generate_batch(tiny_vlm, [it.image], [it.question], 6)[0] for it in items]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert report.batched and report.checked_rows == 3 and not report.mismatches
    assert all(len(g.token_ids) == 6 for g in alone)  # a random model never stops early: 6 tokens compared


def test_modulation_changes_answers_and_is_removed(tiny_vlm, toy_examples):
    items = _items(toy_examples)
    base = generate_answers(tiny_vlm, items, max_new_tokens=6, batch_size=3)
    mod = generate_answers(tiny_vlm, items, max_new_tokens=6, batch_size=3, edits=edits_for(_strong_scales(tiny_vlm)))
    again = generate_answers(tiny_vlm, items, max_new_tokens=6, batch_size=3)
    assert [g.token_ids for g in base] != [g.token_ids for g in mod]
    assert [g.token_ids for g in base] == [g.token_ids for g in again]  # the hooks are gone afterwards


@pytest.mark.parametrize("positions", [False, True])
def test_hooks_act_at_every_generated_position(tiny_llava_entry, toy_examples, positions):
    """generate() with the cache and a hand loop without it (every position recomputed each step,
    the modulation on every forward) give the same tokens: the hooks act on generated tokens too.
    For position-dependent scales the loop applies 'last' to each new token when it is computed,
    the rule the cached generation follows."""
    from tests.conftest import load_vlm

    vlm = load_vlm(tiny_llava_entry)
    scales = _strong_scales(vlm, positions)
    edits = edits_for(scales)
    item = _items(toy_examples)[0]
    with edit_heads(vlm, edits):
        got = generate_batch(vlm, [item.image], [item.question], 5)[0].token_ids
    inputs = vlm.encode([item.image], [item.question])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    past = None
    out: list[int] = []
    with edit_heads(vlm, edits), torch.no_grad():
        for _ in range(5):
            if positions:  # each token's own step decides its scale: run incrementally, as generation does
                step = vlm.model(**{**inputs, "input_ids": ids, "attention_mask": mask}, use_cache=True) if past is None else \
                    vlm.model(input_ids=ids[:, -1:], attention_mask=mask, past_key_values=past, use_cache=True)
                past = step.past_key_values
            else:
                step = vlm.model(**{**inputs, "input_ids": ids, "attention_mask": mask}, use_cache=False)
            nxt = int(step.logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
    assert tuple(out) == got
    with torch.no_grad():
        plain = generate_batch(vlm, [item.image], [item.question], 5)[0].token_ids
    assert plain != got  # the modulation matters, so the comparison above could fail


def test_first_generated_token_is_the_scored_argmax(tiny_vlm, toy_examples):
    items = _items(toy_examples)
    got = generate_answers(tiny_vlm, items, max_new_tokens=2, batch_size=3)
    prep = tiny_vlm.prepare(tiny_vlm.encode([it.image for it in items], [it.question for it in items]))
    argmax = tiny_vlm.last_logits(prep).argmax(-1).tolist()
    assert [g.token_ids[0] for g in got] == argmax


def test_batching_falls_back_to_batch_one_on_a_mismatch(tiny_vlm, toy_examples, monkeypatch):
    """A padded batch that answers differently from batch-1 turns batching off for the call."""
    import vseam_run.generation as gen

    real = gen.generate_batch

    def flawed(vlm, images, questions, n):  # a batch of several rows answers its first row wrong
        out = real(vlm, images, questions, n)
        if len(images) > 1:
            out[0] = gen.Generated("wrong", (0,), None)
        return out

    monkeypatch.setattr(gen, "generate_batch", flawed)
    items = _items(toy_examples)
    report = GenerationReport()
    got = gen.generate_answers(tiny_vlm, items, max_new_tokens=3, batch_size=3, report=report)
    assert not report.batched and report.mismatches[0]["qid"] == "0"
    assert [g.token_ids for g in got] == [real(tiny_vlm, [it.image], [it.question], 3)[0].token_ids for it in items]
