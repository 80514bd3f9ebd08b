"""Train the toy VLMs on the toy world: reproducible (seeded), CPU-friendly, a few minutes each.

`vseam zoo train toy-llava` builds the model from its config (zoo/build.py), trains it to
answer toy-world questions (cross-entropy on the answer token at the last position, the
same position and rule the rest of vseam scores), reports held-out accuracy per level, and
saves a checkpoint folder (safetensors + processor files) that the registry entry loads.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vseam_run.data import toyworld
from vseam_run.data.toyworld.render import shape_masks
from vseam_run.data.toyworld.world import COLORS, KINDS, MATERIALS, SPATIAL_RELATIONS, spatial_holds, spatial_margin
from vseam_run.progress import progress
from vseam_run.zoo.build import TinyVLMConfig, save, tiny_instructblip, tiny_llava

ZOO_DIR = Path(__file__).resolve().parent

LEVELS = ("object", "attribute", "relation")

#: Per-kind facts a question can ask about (kind_facts): present, color, material, the centre's
#: x and y as ordinal thresholds (x > 1/8, x > 2/8, ...), whether the object takes part in a link
#: (its halo: visible at the object), and which kinds it is linked to.
THRESHOLDS = tuple(i / 8 for i in range(1, 8))
FACT_GROUPS = {"present": slice(0, 1), "color": slice(1, 5), "material": slice(5, 8), "x": slice(8, 15),
               "y": slice(15, 22), "linked": slice(22, 23), "links": slice(23, 29)}
N_PAIR_FACTS = 5  # pair_facts: four spatial relations and the link


@dataclass
class TrainRecipe:
    """Everything that determines a trained toy model."""

    arch: str  # "llava" | "instructblip"
    prompt: str
    model: TinyVLMConfig
    steps: int = 4000  # at most; see stop_overall
    batch_size: int = 32
    lr: float = 1e-3
    vision_steps: int = 1500  # stage 1: the vision tower alone, on per-patch facts
    vision_lr: float = 2e-3
    vision_batch_size: int = 64
    patch_weight: float = 0.5  # the stage-1 loss kept during stage 2, so the features stay put
    mention_weight: float = 1.0  # stage 2: each kind word must look its object up (AuxHeads)
    answer_weight: float = 1.0  # stage 2: the last position must hold what the answer needs (AuxHeads)
    # stage 2: one attention head (layer, head) of the language model is asked to look, from each
    # kind word, at the image tokens of that kind's object (lookup_loss). Without it, when the
    # language model learns to find a named object in the image was a matter of luck: from 1,250
    # steps to never in 4,000 with the same recipe and another world.
    lookup_weight: float = 1.0
    lookup_head: tuple[int, int] = (0, 0)
    # When set, the lookup aid is spread instead: question category -> the heads that look up its
    # kind words, by mention order (the first entry for the first kind word, the second for the
    # second; one entry serves every mention). `lookup_head` is then unused. One head per
    # category keeps the answers of each category running through their own head (toy-llava-spread).
    lookup_heads: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # With `lookup_heads`: each lookup head's own output (its slice of the o_proj input) at the kind
    # words it looks up must also say, through a linear read-out, that object's facts
    # (HeadReaders). The attention aid alone shapes where a head looks, not whether what it brings
    # back is used: attempt 3 of toy-llava-spread routed its answers through three layer-0 heads
    # the aid never named.
    head_read_weight: float = 0.0
    warmup: int = 200
    weight_decay: float = 0.01
    train_examples: int = 24000
    eval_examples: int = 2000
    eval_every: int = 250
    # The toy models are deliberately not trained to saturation: a model must make mistakes for
    # negative heads to exist, and the quickstart's accuracy should leave room to move. Training
    # stops at the first evaluation where held-out accuracy reaches every floor: overall, each
    # level, and each question category (so no level passes on one kind of question alone, as the
    # relation level once did on spatial questions while links sat at chance).
    stop_overall: float = 0.84
    stop_level: float = 0.75
    stop_category: float = 0.75
    seed: int = 0
    threads: int = 2
    extra_words: list[str] = field(default_factory=lambda: ["answer"])
    # More training questions of these categories (sample_examples' boost; the held-out set is not
    # boosted): for a model that learns one category far later than the rest.
    boost: dict[str, float] = field(default_factory=dict)
    # Start the image side (vision tower and projector) from this shipped toy model's instead of
    # from scratch, as a real VLM starts from a pretrained CLIP; stage 1 then only has to fit the
    # (unsaved) patch read-outs to it, in `vision_steps` steps. The language model starts from scratch.
    init_image_side: str | None = None


#: Object questions are learned first: at their plain share they were at 0.93-0.97 by the time
#: material questions, learned last, passed 0.75, leaving objects under the 8 % errors negative heads
#: need. At 0.3 of it they keep about 8 % (and are still learned from every other question, which
#: names objects too).
OBJECTS_LESS = {"round": 0.3, "boxy": 0.3, "pointy": 0.3}

#: The size every shipped toy model shares (toy-instructblip adds its Q-Former).
TOY_SIZES = dict(
    image_size=32, patch_size=8, vision_hidden=64, vision_layers=2, vision_heads=4,
    text_hidden=128, text_layers=6, text_heads=8, text_intermediate=256,
)

RECIPES: dict[str, TrainRecipe] = {
    "toy-llava": TrainRecipe(
        arch="llava",
        prompt="<image> {question} answer:",
        model=TinyVLMConfig(**TOY_SIZES),
        boost=OBJECTS_LESS,
    ),
    "toy-instructblip": TrainRecipe(
        arch="instructblip",
        prompt="{question} answer:",
        model=TinyVLMConfig(**TOY_SIZES, qformer_hidden=64, qformer_layers=2, num_query_tokens=16),
        # Material questions were learned last by far (on a world where thin shapes hid their
        # material: 0.54 held-out while objects reached 0.91 and relations 0.86; 0.77 only at
        # 2,250 steps, with relations at 0.99).
        boost={"material": 2.0, **OBJECTS_LESS},
    ),
    # The third toy model (issue 20 item 4): toy-llava's recipe with the lookup aid spread over
    # seven heads in three layers, one head (or two, for the two kind words of a relation) per
    # question category, so that the answers do not all run through one head as they run through
    # L0.H0 in the two models above.
    "toy-llava-spread": TrainRecipe(
        arch="llava",
        prompt="<image> {question} answer:",
        model=TinyVLMConfig(**TOY_SIZES),
        # Attempt 2 (objects at 0.3 of their share, as above) stopped at 1,500 steps with objects at
        # 0.948, under the 8 % errors a level must keep: material and spatial questions, learned
        # last (0.64 and 0.69 at 1,250 steps, objects already 0.92), held the stop back while objects
        # kept improving. Fewer object questions, more of the two laggards, and an evaluation every
        # 125 steps, so training stops nearer the step where the last floor is crossed.
        boost={"round": 0.15, "boxy": 0.15, "pointy": 0.15, "material": 2.0, "spatial": 1.5},
        eval_every=125,
        init_image_side="toy-llava",
        vision_steps=100,
        threads=1,
        lookup_weight=0.5,  # per head: seven of them, so the aid does not drown the answer loss
        lookup_heads={
            "round": [(1, 2)], "boxy": [(1, 2)], "pointy": [(1, 2)],
            "color": [(0, 3)], "material": [(2, 5)],
            "spatial": [(0, 6), (1, 4)], "link": [(2, 1), (1, 7)],
        },
    ),
}


@dataclass
class Encoded:
    """A toy example set as tensors, left-padded, with explicit position ids."""

    inputs: dict[str, torch.Tensor]
    answers: torch.Tensor
    levels: list[str]
    categories: list[str]
    facts: torch.Tensor  # [N, kinds, F] kind_facts of each scene
    patch_kinds: torch.Tensor  # [N, patches] patch_kinds of each scene
    mention: torch.Tensor  # [N, T] kind index of each kind word in the text, -1 elsewhere
    pair: torch.Tensor  # [N, 5] pair_facts of the two kinds a question names (zeros if fewer)
    subject: torch.Tensor  # [N] kind index of the first kind word of the question
    obj: torch.Tensor  # [N] kind index of the second kind word, -1 if the question names one kind

    image_pos: torch.Tensor  # [N, patches] sequence position of the image token standing for each patch

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: v[idx] for k, v in self.inputs.items()}, self.answers[idx]


def kind_facts(scene) -> np.ndarray:
    """[kinds, F] table: one row per kind of the world, zeros where the scene lacks that kind."""
    by_kind = {o.kind: o for o in scene.objects}
    rows = np.zeros((len(KINDS), 1 + len(COLORS) + len(MATERIALS) + 2 * len(THRESHOLDS) + 1 + len(KINDS)), np.float32)
    for i, k in enumerate(KINDS):
        o = by_kind.get(k)
        if o is None:
            continue
        cx, cy = (o.x + o.w / 2) / scene.width, (o.y + o.h / 2) / scene.height
        links = [float(b is not None and b is not o and scene.linked(o.oid, b.oid)) for b in map(by_kind.get, KINDS)]
        rows[i] = ([1.0] + [float(o.color == c) for c in COLORS] + [float(o.material == m) for m in MATERIALS]
                   + [float(cx > t) for t in THRESHOLDS] + [float(cy > t) for t in THRESHOLDS] + [float(any(links))]
                   + links)
    return rows


def patch_kinds(scene, patch: int) -> np.ndarray:
    """[patches] index into KINDS of the object covering most of each patch, -1 for background."""
    g = scene.width // patch
    cover = np.zeros((len(KINDS) + 1, scene.height, scene.width), np.float32)
    for o in scene.objects:
        cover[1 + KINDS.index(o.kind), o.y : o.y + o.h, o.x : o.x + o.w] = shape_masks(o.kind, o.w, o.h)[1]
    per_patch = cover.reshape(len(cover), g, patch, g, patch).sum((2, 4)).reshape(len(cover), -1)
    per_patch[0] = 0.5  # background unless some object covers at least one pixel of the patch
    return per_patch.argmax(0) - 1


def pair_facts(scene, first: str, second: str) -> list[float]:
    """How the first-named object relates to the second: left of, right of, above, below
    (clear relations only) and linked."""
    a, b = scene.by_kind(first), scene.by_kind(second)
    if a is None or b is None:
        return [0.0] * (len(SPATIAL_RELATIONS) + 1)
    m = spatial_margin(scene.width)
    return [float(spatial_holds(a, b, r, m)) for r in SPATIAL_RELATIONS] + [float(scene.linked(a.oid, b.oid))]


def vision_tower(model, arch: str):
    return model.model.vision_tower if arch == "llava" else model.vision_model


def final_norm(model, arch: str) -> torch.nn.Module:
    return model.model.language_model.norm if arch == "llava" else model.language_model.model.norm


def facts_at(index: torch.Tensor, facts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a [B, T] kind index (-1 = none) and the [B, K, F] facts: the mask of indexed tokens and
    the facts row of each of them, in mask order."""
    on = index >= 0
    b = torch.arange(len(index)).unsqueeze(1).expand_as(index)[on]
    return on, facts[b, index[on]]


class PatchReader(torch.nn.Module):
    """Reads, off each token of an image sequence, which kind covers its patch and that object's facts."""

    def __init__(self, width: int, n_kinds: int, n_facts: int):
        super().__init__()
        self.kind = torch.nn.Linear(width, n_kinds + 1)
        self.facts = torch.nn.Linear(width, n_facts - 1)  # all but "present"

    def loss(self, feats: torch.Tensor, kinds: torch.Tensor, facts: torch.Tensor) -> torch.Tensor:
        """feats [B, P, D], kinds [B, P] (-1 = background), facts [B, K, F]."""
        loss = F.cross_entropy(self.kind(feats).flatten(0, 1), (kinds + 1).flatten())
        on, target = facts_at(kinds, facts)
        if on.any():
            loss = loss + F.binary_cross_entropy_with_logits(self.facts(feats[on]), target[:, 1:])
        return loss


def _facts_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on kind_facts rows; an absent object's facts beyond "absent" are undefined and weigh nothing."""
    weight = torch.ones_like(target)
    weight[:, 1:] = target[:, :1]
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


class AuxHeads(torch.nn.Module):
    """Training aids, not saved: linear read-outs of the facts of `kind_facts` at three places.

    - every image patch (vision tower output) and, for InstructBLIP, every Q-Former query
      (query i stands for patch i): which kind covers it, and that object's facts. A
      from-scratch stand-in for the pretrained CLIP (and Q-Former) a real model starts from;
      it makes each object's patches say what it is, where it is and what it is linked to.
    - every kind word of the question (language model output): that object's facts. This teaches the
      language model to look its objects up in the image, the step every question needs;
      without it the answer is a pure interaction of question and image and training sat at
      the answer prior for thousands of steps.
    - the last position, where the answer is read: the first-named object's facts and how it
      relates to the second (`answer_loss`), so the answer needs one more linear step.
    """

    def __init__(self, vision_hidden: int, query_hidden: int | None, text_hidden: int, n_kinds: int, n_facts: int):
        super().__init__()
        self.patch = PatchReader(vision_hidden, n_kinds, n_facts)
        self.query = PatchReader(query_hidden, n_kinds, n_facts) if query_hidden else None
        self.mention_facts = torch.nn.Linear(text_hidden, n_facts)
        self.subject_facts = torch.nn.Linear(text_hidden, n_facts)
        self.object_facts = torch.nn.Linear(text_hidden, n_facts)
        self.pair_facts = torch.nn.Linear(text_hidden, N_PAIR_FACTS)

    def image_loss(self, taps: dict[str, torch.Tensor], kinds: torch.Tensor, facts: torch.Tensor) -> torch.Tensor:
        loss = self.patch.loss(taps["patches"], kinds, facts)
        if self.query is not None:
            loss = loss + self.query.loss(taps["queries"], kinds, facts)
        return loss

    def mention_loss(self, hidden: torch.Tensor, mention: torch.Tensor, facts: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, D], mention [B, T] (kind index of a kind word, -1 elsewhere)."""
        on, target = facts_at(mention, facts)
        return _facts_bce(self.mention_facts(hidden[on]), target)

    def answer_loss(self, hidden: torch.Tensor, subject: torch.Tensor, obj: torch.Tensor, facts: torch.Tensor,
                    pair: torch.Tensor) -> torch.Tensor:
        """At the last position, where the answer is read: the first-named object's facts and,
        for two-object questions (obj >= 0), the second's and how the two relate. Every answer
        is a simple function of these and the question's wording."""
        h = hidden[:, -1]
        rows = torch.arange(len(subject))
        loss = _facts_bce(self.subject_facts(h), facts[rows, subject])
        two = obj >= 0
        if two.any():
            loss = loss + _facts_bce(self.object_facts(h[two]), facts[rows[two], obj[two]])
            loss = loss + F.binary_cross_entropy_with_logits(self.pair_facts(h[two]), pair[two])
        return loss


@contextlib.contextmanager
def taps(model, arch: str) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks recording, on every forward pass, the patch features (vision tower
    output, CLS dropped), the Q-Former query outputs (InstructBLIP) and the language model's
    final hidden states (all positions)."""
    seen: dict[str, torch.Tensor] = {}
    sites = [(vision_tower(model, arch), lambda _m, _i, out: seen.__setitem__("patches", out.last_hidden_state[:, 1:])),
             (final_norm(model, arch), lambda _m, _i, out: seen.__setitem__("hidden", out))]
    if arch == "instructblip":
        sites.append((model.language_projection, lambda _m, args, _o: seen.__setitem__("queries", args[0])))
    handles = [m.register_forward_hook(fn) for m, fn in sites]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def image_forward(model, arch: str, inputs: dict[str, torch.Tensor]) -> None:
    """Run only the image side (vision tower, and the Q-Former for InstructBLIP), for the taps."""
    if arch == "llava":
        vision_tower(model, arch)(pixel_values=inputs["pixel_values"])
    else:
        model.get_image_features(pixel_values=inputs["pixel_values"], qformer_input_ids=inputs["qformer_input_ids"],
                                 qformer_attention_mask=inputs["qformer_attention_mask"])


def encode(processor, prompt: str, examples: list, patch_size: int, image_token_id: int) -> Encoded:
    processor.tokenizer.padding_side = "left"
    texts = [prompt.format(question=e.question) for e in examples]
    batch = processor(images=[e.image for e in examples], text=texts, return_tensors="pt", padding=True)
    inputs = dict(batch)
    # The same position rule vseam scores with (positions count real tokens only).
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    tok = processor.tokenizer
    answers = torch.tensor(tok.convert_tokens_to_ids([e.answer for e in examples]))
    kind_ids = torch.tensor(tok.convert_tokens_to_ids(list(KINDS)))
    ids = inputs["input_ids"]
    hit = ids.unsqueeze(-1) == kind_ids
    mention = torch.where(hit.any(-1), hit.int().argmax(-1), -1)
    facts = torch.from_numpy(np.stack([kind_facts(e.scene) for e in examples]))
    kinds = torch.from_numpy(np.stack([patch_kinds(e.scene, patch_size) for e in examples]))
    # The first kind word names the subject; a second one, the object of a relation.
    subject = torch.zeros(len(examples), dtype=torch.long)
    obj = torch.full((len(examples),), -1)
    pair = torch.zeros(len(examples), N_PAIR_FACTS)
    for i, e in enumerate(examples):
        named = mention[i][mention[i] >= 0]
        subject[i] = named[0]
        if len(named) >= 2:
            obj[i] = named[-1]
            pair[i] = torch.tensor(pair_facts(e.scene, KINDS[named[0]], KINDS[named[-1]]))
    # Image tokens stand for the patches in order (LLaVA: patch features; InstructBLIP: query i,
    # which stage 1 teaches to describe patch i).
    is_image = ids == image_token_id
    image_pos = torch.nonzero(is_image)[:, 1].reshape(len(examples), -1)
    return Encoded(inputs, answers, [e.level for e in examples], [e.category for e in examples], facts, kinds, mention,
                   pair, subject, obj, image_pos)


def lookup_loss(attn: torch.Tensor, mention: torch.Tensor, patch_kinds: torch.Tensor, image_pos: torch.Tensor) -> torch.Tensor:
    """−log of the attention mass that each kind word (mention >= 0) puts on the image tokens of its
    object's patches; attn [B, T, T] is one head's attention. Kind words whose kind is not in the
    image (the answer to "Is there a …?" may be no) are left free."""
    on = mention >= 0
    b, t = torch.nonzero(on, as_tuple=True)
    rows = attn[b, t][:, None].gather(-1, image_pos[b][:, None]).squeeze(1)  # [M, patches]
    target = patch_kinds[b] == mention[b, t][:, None]
    keep = target.any(-1)
    if not keep.any():
        return attn.new_zeros(())
    mass = (rows * target).sum(-1)[keep]
    return -torch.log(mass.clamp_min(1e-6)).mean()


def lookup_targets(recipe: TrainRecipe, data: Encoded, idx: torch.Tensor) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """The lookup aid's (head, mention) pairs for a batch: with one lookup head, every kind word
    on it; with `lookup_heads`, each head gets the kind words (by category and mention order) it
    is assigned, the rest of its mention tensor set to -1 (left free)."""
    mention = data.mention[idx]
    if not recipe.lookup_heads:
        return [(tuple(recipe.lookup_head), mention)]
    order = (mention >= 0).long().cumsum(-1) - 1  # 0 for the first kind word, 1 for the second, ...
    cats = [data.categories[i] for i in idx.tolist()]
    out: dict[tuple[int, int], torch.Tensor] = {}
    for b, cat in enumerate(cats):
        heads = recipe.lookup_heads.get(cat, [])
        for t in torch.nonzero(mention[b] >= 0).flatten().tolist():
            if not heads:
                continue
            head = tuple(heads[min(int(order[b, t]), len(heads) - 1)])
            m = out.setdefault(head, torch.full_like(mention, -1))
            m[b, t] = mention[b, t]
    return list(out.items())


class HeadReaders(torch.nn.Module):
    """Training aid, not saved: one linear read-out of kind_facts per lookup head, off that head's
    slice of the o_proj input (what the head writes, before mixing) at the kind words it serves."""

    def __init__(self, heads: list[tuple[int, int]], head_dim: int, n_facts: int):
        super().__init__()
        self.head_dim = head_dim
        self.read = torch.nn.ModuleDict({f"{l}_{h}": torch.nn.Linear(head_dim, n_facts) for l, h in heads})

    def loss(self, o_inputs: dict[int, torch.Tensor], targets, facts: torch.Tensor) -> torch.Tensor:
        """o_inputs: layer -> [B, T, heads * head_dim]; targets: lookup_targets' (head, mention) pairs."""
        loss = facts.new_zeros(())
        for (layer, head), mention in targets:
            on, target = facts_at(mention, facts)
            if on.any():
                x = o_inputs[layer][..., head * self.head_dim : (head + 1) * self.head_dim]
                loss = loss + _facts_bce(self.read[f"{layer}_{head}"](x[on]), target)
        return loss


@contextlib.contextmanager
def o_proj_inputs(model, arch: str, layers: set[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward pre-hooks recording, on every forward pass, the o_proj input of the given language
    model layers (the heads' outputs side by side)."""
    seen: dict[int, torch.Tensor] = {}
    blocks = model.model.language_model.layers if arch == "llava" else model.language_model.model.layers
    handles = [blocks[l].self_attn.o_proj.register_forward_pre_hook(
        lambda _m, args, l=l: seen.__setitem__(l, args[0])) for l in sorted(layers)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def last_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def evaluate(model, data: Encoded, batch_size: int = 256) -> dict[str, float]:
    """Held-out accuracy overall and per level (argmax == answer token)."""
    model.eval()
    preds = []
    for i in range(0, len(data.answers), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data.answers)))
        inputs, _ = data.batch(idx)
        preds.append(last_logits(model, inputs).argmax(-1))
    correct = (torch.cat(preds) == data.answers).numpy()
    out = {"overall": float(correct.mean())}
    for key in sorted(set(data.levels)):
        m = np.array([lv == key for lv in data.levels])
        out[key] = float(correct[m].mean())
    for key in sorted(set(data.categories)):
        m = np.array([c == key for c in data.categories])
        out[f"category.{key}"] = float(correct[m].mean())
    return out


def train(name: str, out_dir: Path | None = None, *, steps: int | None = None, quick: bool = False, log=print,
          recipe: TrainRecipe | None = None) -> dict:
    """Train one toy model and save it; returns the report (also written as train_report.json).

    `quick` shrinks the data and stage 1 to a few items (for tests of the mechanics).
    """
    recipe = recipe or RECIPES[name]
    changes: dict = {"model": recipe.model}
    if steps is not None:
        changes["steps"] = steps
    if quick:
        changes.update(train_examples=128, eval_examples=32, vision_steps=min(recipe.vision_steps, 3), batch_size=16, vision_batch_size=16)
    recipe = TrainRecipe(**{**asdict(recipe), **changes})
    out_dir = Path(out_dir) if out_dir else ZOO_DIR / name
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    words = toyworld.vocabulary() + recipe.extra_words
    build = tiny_llava if recipe.arch == "llava" else tiny_instructblip
    model, processor = build(words, recipe.model)
    if recipe.init_image_side:
        _copy_image_side(model, ZOO_DIR / recipe.init_image_side, recipe.arch)
    if recipe.lookup_weight:  # attention weights are needed for the lookup aid; saved models use sdpa
        model.set_attn_implementation("eager")
    size, patch = recipe.model.image_size, recipe.model.patch_size

    t0 = time.perf_counter()
    image_token = model.config.image_token_id
    train_set = encode(processor, recipe.prompt, toyworld.sample_examples(random.Random(recipe.seed), recipe.train_examples, size,
                                                                          recipe.boost), patch, image_token)
    eval_set = encode(processor, recipe.prompt, toyworld.sample_examples(random.Random(10_000 + recipe.seed), recipe.eval_examples, size), patch, image_token)
    log(f"data: {recipe.train_examples} train / {recipe.eval_examples} held-out examples in {time.perf_counter() - t0:.1f}s")

    gen = torch.Generator().manual_seed(recipe.seed)
    n = len(train_set.answers)
    m = recipe.model
    aux = AuxHeads(m.vision_hidden, m.qformer_hidden if recipe.arch == "instructblip" else None, m.text_hidden,
                   train_set.facts.shape[1], train_set.facts.shape[2])
    read_heads = sorted({tuple(h) for hs in recipe.lookup_heads.values() for h in hs}) if recipe.head_read_weight else []
    readers = HeadReaders(read_heads, m.text_hidden // m.text_heads, train_set.facts.shape[2])
    t0 = time.perf_counter()
    with taps(model, recipe.arch) as seen, o_proj_inputs(model, recipe.arch, {l for l, _ in read_heads}) as o_in:
        _pretrain_image_side(model, recipe, aux, train_set, gen, seen, log)
        params = list(model.parameters()) + list(aux.parameters()) + list(readers.parameters())
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe.warmup, recipe.steps))
        perm, pos = torch.randperm(n, generator=gen), 0
        model.train()
        losses: list[float] = []
        with progress(f"train {name}", recipe.steps) as advance:
            for step in range(recipe.steps):
                if pos + recipe.batch_size > n:
                    perm, pos = torch.randperm(n, generator=gen), 0
                idx = perm[pos : pos + recipe.batch_size]
                pos += recipe.batch_size
                inputs, answers = train_set.batch(idx)
                # The answer is read at the last position, the rule the rest of vseam scores
                # with; the training aids read the other positions through the taps.
                out = model(**inputs, output_attentions=bool(recipe.lookup_weight))
                loss = F.cross_entropy(out.logits[:, -1], answers)
                facts = train_set.facts[idx]
                if recipe.lookup_weight:
                    attentions = out.attentions if recipe.arch == "llava" else out.language_model_outputs.attentions
                    targets = lookup_targets(recipe, train_set, idx)
                    for (layer, head), mention in targets:
                        loss = loss + recipe.lookup_weight * lookup_loss(
                            attentions[layer][:, head], mention, train_set.patch_kinds[idx], train_set.image_pos[idx])
                    if read_heads:
                        loss = loss + recipe.head_read_weight * readers.loss(o_in, targets, facts)
                if recipe.mention_weight:
                    loss = loss + recipe.mention_weight * aux.mention_loss(seen["hidden"], train_set.mention[idx], facts)
                if recipe.answer_weight:
                    loss = loss + recipe.answer_weight * aux.answer_loss(
                        seen["hidden"], train_set.subject[idx], train_set.obj[idx], facts, train_set.pair[idx])
                if recipe.patch_weight:
                    loss = loss + recipe.patch_weight * aux.image_loss(seen, train_set.patch_kinds[idx], facts)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                advance(1)
                if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps:
                    acc = evaluate(model, eval_set)
                    log(f"step {step + 1} ({time.perf_counter() - t0:.0f}s): loss {np.mean(losses[-recipe.eval_every:]):.3f}  "
                        f"held-out acc {acc['overall']:.3f}  "
                        + " ".join(f"{k.removeprefix('category.')} {v:.2f}" for k, v in acc.items() if k != "overall"))
                    diag = aux_accuracy(model, aux, eval_set, seen)
                    log("  read-outs: " + " ".join(f"{k} {v:.2f}" for k, v in diag.items()))
                    model.train()
                    if reached_floors(acc, recipe):
                        log(f"held-out accuracy reached the floors (overall {recipe.stop_overall}, every level "
                            f"{recipe.stop_level}, every category {recipe.stop_category}): stopping at step {step + 1}")
                        break
    seconds = time.perf_counter() - t0
    model.eval()
    model.set_attn_implementation("sdpa")
    save(model, processor, out_dir)  # the auxiliary read-outs are training aids only; not saved
    report = {"model": name, "recipe": {**asdict(recipe)}, "steps_run": step + 1, "train_seconds": round(seconds, 1),
              "held_out_accuracy": acc,
              "parameters": sum(p.numel() for p in model.parameters())}
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report


def _copy_image_side(model, checkpoint: Path, arch: str) -> None:
    """Load the vision tower and projector weights of a trained checkpoint into `model` (LLaVA only)."""
    if arch != "llava":
        raise ValueError("init_image_side is implemented for LLaVA-architecture recipes only")
    trained = type(model).from_pretrained(checkpoint)
    model.model.vision_tower.load_state_dict(trained.model.vision_tower.state_dict())
    model.model.multi_modal_projector.load_state_dict(trained.model.multi_modal_projector.state_dict())


def reached_floors(acc: dict[str, float], recipe: TrainRecipe) -> bool:
    """The stop rule: held-out accuracy at least the recipe's floor overall, on every level and on
    every question category."""
    return (acc["overall"] >= recipe.stop_overall
            and min(acc[lv] for lv in LEVELS) >= recipe.stop_level
            and min(v for k, v in acc.items() if k.startswith("category.")) >= recipe.stop_category)


@torch.no_grad()
def aux_accuracy(model, aux: AuxHeads, data: Encoded, seen: dict, n: int = 256) -> dict[str, float]:
    """Bit accuracy of the training aids' read-outs on held-out examples (diagnostics only)."""
    model.eval()
    idx = torch.arange(min(n, len(data.answers)))
    inputs, _ = data.batch(idx)
    model(**inputs)
    facts, kinds = data.facts[idx], data.patch_kinds[idx]
    out: dict[str, float] = {}
    for site, reader in (("patch", aux.patch), ("query", aux.query)):
        if reader is None:
            continue
        feats = seen["patches" if site == "patch" else "queries"]
        out[f"{site}.kind"] = float((reader.kind(feats).argmax(-1) - 1 == kinds).float().mean())
        on, target = facts_at(kinds, facts)
        pred, truth = reader.facts(feats[on]) > 0, target[:, 1:] > 0.5
        for g, s in list(FACT_GROUPS.items())[1:]:
            out[f"{site}.{g}"] = float((pred[:, s.start - 1 : s.stop - 1] == truth[:, s.start - 1 : s.stop - 1]).float().mean())
    on, target = facts_at(data.mention[idx], facts)
    truth = target > 0.5
    pred = aux.mention_facts(seen["hidden"][on]) > 0
    for g, s in FACT_GROUPS.items():
        rows = slice(None) if g == "present" else truth[:, 0]
        out[f"mention.{g}"] = float((pred[rows, s] == truth[rows, s]).float().mean())
    last = seen["hidden"][:, -1]
    truth = facts[torch.arange(len(idx)), data.subject[idx]] > 0.5
    pred = aux.subject_facts(last) > 0
    for g, s in FACT_GROUPS.items():
        rows = slice(None) if g == "present" else truth[:, 0]
        out[f"last.{g}"] = float((pred[rows, s] == truth[rows, s]).float().mean())
    on = data.obj[idx] >= 0
    out["last.pair"] = float(((aux.pair_facts(last[on]) > 0) == (data.pair[idx][on] > 0.5)).float().mean())
    return out


def _pretrain_image_side(model, recipe: TrainRecipe, aux: AuxHeads, data: Encoded, gen: torch.Generator, seen: dict, log) -> None:
    """Stage 1: the image side alone (vision tower, and the Q-Former for InstructBLIP) learns
    to say, at every patch, which object covers it and that object's facts. Shapes are
    otherwise the slowest thing to learn, and every question names its objects by shape."""
    if recipe.vision_steps <= 0:
        return
    params = list(vision_tower(model, recipe.arch).parameters()) + list(aux.patch.parameters())
    if aux.query is not None:
        params += list(model.qformer.parameters()) + [model.query_tokens] + list(aux.query.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.vision_lr)
    n = len(data.answers)
    model.train()
    with progress("stage 1: image side", recipe.vision_steps) as advance:
        for step in range(recipe.vision_steps):
            idx = torch.randint(0, n, (recipe.vision_batch_size,), generator=gen)
            inputs, _ = data.batch(idx)
            image_forward(model, recipe.arch, inputs)
            loss = aux.image_loss(seen, data.patch_kinds[idx], data.facts[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            advance(1)
            if (step + 1) % 500 == 0:
                log(f"image-side step {step + 1}: patch loss {loss.item():.3f}")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
