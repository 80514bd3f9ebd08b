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
    batch_size: int = 64
    lr: float = 2e-3
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

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: v[idx] for k, v in self.inputs.items()}, self.answers[idx]


def encode(processor, prompt: str, examples: list) -> Encoded:
    processor.tokenizer.padding_side = "left"
    texts = [prompt.format(question=e.question) for e in examples]
    batch = processor(images=[e.image for e in examples], text=texts, return_tensors="pt", padding=True)
    inputs = dict(batch)
    # The same position rule vseam scores with (positions count real tokens only).
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    answers = torch.tensor(processor.tokenizer.convert_tokens_to_ids([e.answer for e in examples]))
    return Encoded(inputs, answers, [e.level for e in examples], [e.category for e in examples])


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


def train(name: str, out_dir: Path | None = None, *, steps: int | None = None, log=print) -> dict:
    """Train one toy model and save it; returns the report (also written as train_report.json)."""
    recipe = RECIPES[name]
    if steps is not None:
        recipe = TrainRecipe(**{**asdict(recipe), "model": recipe.model, "steps": steps})
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

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe.warmup, recipe.steps))
    gen = torch.Generator().manual_seed(recipe.seed)
    n = len(train_set.answers)
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
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            advance(1)
            if (step + 1) % 500 == 0:
                acc = evaluate(model, eval_set)
                model.train()
                log(f"step {step + 1}: loss {np.mean(losses[-500:]):.3f}  held-out acc {acc['overall']:.3f}  "
                    + " ".join(f"{k} {v:.2f}" for k, v in acc.items() if k in ("object", "attribute", "relation")))
    seconds = time.perf_counter() - t0
    model.eval()
    acc = evaluate(model, eval_set)
    save(model, processor, out_dir)
    report = {"model": name, "recipe": {**asdict(recipe)}, "train_seconds": round(seconds, 1), "held_out_accuracy": acc,
              "parameters": sum(p.numel() for p in model.parameters())}
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
