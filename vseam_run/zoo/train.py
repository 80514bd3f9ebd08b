"""Train the toy VLMs on the toy world: reproducible (seeded), CPU-friendly, a few minutes each.

`vseam zoo train toy-llava` builds the model from its config (zoo/build.py), trains it to
answer toy-world questions (cross-entropy on the answer token at the last position, the
same position and rule the rest of vseam scores), reports held-out accuracy per level, and
saves a checkpoint folder (safetensors + processor files) that the registry entry loads.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vseam_run.data import toyworld
from vseam_run.progress import progress
from vseam_run.zoo.build import TinyVLMConfig, save, tiny_instructblip, tiny_llava

ZOO_DIR = Path(__file__).resolve().parent


@dataclass
class TrainRecipe:
    """Everything that determines a trained toy model."""

    arch: str  # "llava" | "instructblip"
    prompt: str
    model: TinyVLMConfig
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    vision_steps: int = 3000  # stage 1: vision tower on scene-content labels
    vision_lr: float = 2e-3
    vision_batch_size: int = 64
    aux_weight: float = 0.5  # the stage-1 loss kept during stage 2, so the features stay put
    readout_weight: float = 1.0  # stage 2: the last position must also describe the whole scene
    warmup: int = 200
    weight_decay: float = 0.01
    train_examples: int = 24000
    eval_examples: int = 2000
    seed: int = 0
    threads: int = 2
    extra_words: list[str] = field(default_factory=lambda: ["answer"])


RECIPES: dict[str, TrainRecipe] = {
    "toy-llava": TrainRecipe(
        arch="llava",
        prompt="<image> {question} answer:",
        model=TinyVLMConfig(
            image_size=32, patch_size=8, vision_hidden=64, vision_layers=2, vision_heads=4,
            text_hidden=128, text_layers=6, text_heads=8, text_intermediate=256,
        ),
    ),
    "toy-instructblip": TrainRecipe(
        arch="instructblip",
        prompt="{question} answer:",
        model=TinyVLMConfig(
            image_size=32, patch_size=8, vision_hidden=64, vision_layers=2, vision_heads=4,
            text_hidden=128, text_layers=6, text_heads=8, text_intermediate=256,
            qformer_hidden=64, qformer_layers=2, num_query_tokens=16,
        ),
    ),
}


@dataclass
class Encoded:
    """A toy example set as tensors, left-padded, with explicit position ids."""

    inputs: dict[str, torch.Tensor]
    answers: torch.Tensor
    levels: list[str]
    categories: list[str]
    content: torch.Tensor  # [N, kinds + colors + materials] multi-hot: what the scene contains
    readout: torch.Tensor  # [N, R] per-kind attributes, coarse positions and links (scene_readout)

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: v[idx] for k, v in self.inputs.items()}, self.answers[idx]


def scene_content(scene) -> list[float]:
    """Which kinds, colors and materials a scene contains (stage-1 labels)."""
    from vseam_run.data.toyworld.world import COLORS, KINDS, MATERIALS

    objs = scene.objects
    return ([float(any(o.kind == k for o in objs)) for k in KINDS]
            + [float(any(o.color == c for o in objs)) for c in COLORS]
            + [float(any(o.material == m for o in objs)) for m in MATERIALS])


def scene_readout(scene) -> list[float]:
    """Everything a question can ask about, per kind: present, color, material, coarse x/y
    position (ordinal thresholds), and which kind pairs are linked.

    Stage 2 asks the language model's last position to predict this alongside the answer.
    Without it, the answer is a pure interaction of question and image (neither alone says
    anything about it) and training sat at the answer prior for thousands of steps; with
    the scene gathered at the last position, answering becomes a lookup.
    """
    from itertools import combinations

    from vseam_run.data.toyworld.world import COLORS, KINDS, MATERIALS

    by_kind = {o.kind: o for o in scene.objects}
    out: list[float] = []
    for k in KINDS:
        o = by_kind.get(k)
        if o is None:
            out += [0.0] * (1 + len(COLORS) + len(MATERIALS) + 6)
            continue
        cx, cy = (o.x + o.w / 2) / scene.width, (o.y + o.h / 2) / scene.height
        out += [1.0] + [float(o.color == c) for c in COLORS] + [float(o.material == m) for m in MATERIALS]
        out += [float(cx > t) for t in (0.3, 0.5, 0.7)] + [float(cy > t) for t in (0.3, 0.5, 0.7)]
    for i, j in combinations(range(len(KINDS)), 2):
        a, b = by_kind.get(KINDS[i]), by_kind.get(KINDS[j])
        out.append(float(a is not None and b is not None and scene.linked(a.oid, b.oid)))
    return out


def final_norm(model, arch: str) -> torch.nn.Module:
    return model.model.language_model.norm if arch == "llava" else model.language_model.model.norm


def vision_tower(model, arch: str):
    return model.model.vision_tower if arch == "llava" else model.vision_model


def patch_features(model, arch: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower's last hidden state at the patch tokens (CLS dropped)."""
    return vision_tower(model, arch)(pixel_values=pixel_values).last_hidden_state[:, 1:]


def content_loss(model, arch: str, head: torch.nn.Linear, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Max-pooled patch features must say what the scene contains. Max pooling pushes each
    patch to describe the object under it, which the language model can then look up."""
    logits = head(patch_features(model, arch, pixel_values).max(1).values)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


def encode(processor, prompt: str, examples: list) -> Encoded:
    processor.tokenizer.padding_side = "left"
    texts = [prompt.format(question=e.question) for e in examples]
    batch = processor(images=[e.image for e in examples], text=texts, return_tensors="pt", padding=True)
    inputs = dict(batch)
    # The same position rule vseam scores with (positions count real tokens only).
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    answers = torch.tensor(processor.tokenizer.convert_tokens_to_ids([e.answer for e in examples]))
    content = torch.tensor([scene_content(e.scene) for e in examples])
    readout = torch.tensor([scene_readout(e.scene) for e in examples])
    return Encoded(inputs, answers, [e.level for e in examples], [e.category for e in examples], content, readout)


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


def train(name: str, out_dir: Path | None = None, *, steps: int | None = None, quick: bool = False, log=print) -> dict:
    """Train one toy model and save it; returns the report (also written as train_report.json).

    `quick` shrinks the data and stage 1 to a few items (for tests of the mechanics).
    """
    recipe = RECIPES[name]
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

    t0 = time.perf_counter()
    train_set = encode(processor, recipe.prompt, toyworld.sample_examples(random.Random(recipe.seed), recipe.train_examples, recipe.model.image_size))
    eval_set = encode(processor, recipe.prompt, toyworld.sample_examples(random.Random(10_000 + recipe.seed), recipe.eval_examples, recipe.model.image_size))
    log(f"data: {recipe.train_examples} train / {recipe.eval_examples} held-out examples in {time.perf_counter() - t0:.1f}s")

    gen = torch.Generator().manual_seed(recipe.seed)
    n = len(train_set.answers)
    head = torch.nn.Linear(recipe.model.vision_hidden, train_set.content.shape[1])
    t0 = time.perf_counter()
    _pretrain_vision(model, recipe, head, train_set, gen, log)
    vision_seconds = time.perf_counter() - t0

    readout_head = torch.nn.Linear(recipe.model.text_hidden, train_set.readout.shape[1])
    last_hidden: dict[str, torch.Tensor] = {}
    hook = final_norm(model, recipe.arch).register_forward_hook(lambda _m, _i, out: last_hidden.__setitem__("h", out[:, -1]))
    params = list(model.parameters()) + list(head.parameters()) + list(readout_head.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe.warmup, recipe.steps))
    perm, pos = torch.randperm(n, generator=gen), 0
    model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    with progress(f"train {name}", recipe.steps) as advance:
        for step in range(recipe.steps):
            if pos + recipe.batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + recipe.batch_size]
            pos += recipe.batch_size
            inputs, answers = train_set.batch(idx)
            loss = torch.nn.functional.cross_entropy(last_logits(model, inputs), answers)
            if recipe.readout_weight:
                loss = loss + recipe.readout_weight * torch.nn.functional.binary_cross_entropy_with_logits(
                    readout_head(last_hidden["h"]), train_set.readout[idx])
            if recipe.aux_weight:
                loss = loss + recipe.aux_weight * content_loss(model, recipe.arch, head, inputs["pixel_values"], train_set.content[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            advance(1)
            if (step + 1) % 500 == 0:
                acc = evaluate(model, eval_set)
                model.train()
                log(f"step {step + 1}: loss {np.mean(losses[-500:]):.3f}  held-out acc {acc['overall']:.3f}  "
                    + " ".join(f"{k} {v:.2f}" for k, v in acc.items() if k in ("object", "attribute", "relation")))
    seconds = time.perf_counter() - t0 + vision_seconds
    hook.remove()  # the auxiliary heads are training aids only; they are not saved
    model.eval()
    acc = evaluate(model, eval_set)
    save(model, processor, out_dir)
    report = {"model": name, "recipe": {**asdict(recipe)}, "train_seconds": round(seconds, 1), "held_out_accuracy": acc,
              "parameters": sum(p.numel() for p in model.parameters())}
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report


def _pretrain_vision(model, recipe: TrainRecipe, head, data: Encoded, gen: torch.Generator, log) -> None:
    """Stage 1: the vision tower learns to see kinds, colors and materials (a from-scratch
    stand-in for the pretrained CLIP a real LLaVA starts from). Shapes are otherwise the
    slowest thing to learn, and every question names its objects by shape."""
    if recipe.vision_steps <= 0:
        return
    params = list(vision_tower(model, recipe.arch).parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.vision_lr)
    n = len(data.answers)
    model.train()
    with progress("stage 1: vision", recipe.vision_steps) as advance:
        for step in range(recipe.vision_steps):
            idx = torch.randint(0, n, (recipe.vision_batch_size,), generator=gen)
            loss = content_loss(model, recipe.arch, head, data.inputs["pixel_values"][idx], data.content[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            advance(1)
            if (step + 1) % 1000 == 0:
                log(f"vision step {step + 1}: content loss {loss.item():.3f}")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
