"""Shared fixtures: tiny LLaVA / InstructBLIP models built from configs, saved with
save_pretrained and loaded back through registry entries — no downloads.

Markers (opt-in):
  slow  long tests, e.g. retraining a toy model (`pytest -m slow`)
  gpu   needs CUDA; skipped without it (`pytest -m gpu`)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("VSEAM_QUIET", "1")
torch.set_num_threads(2)

from vseam_run.data import toyworld  # noqa: E402
from vseam_run.registry import load_entry_file  # noqa: E402
from vseam_run.vlm import VLM  # noqa: E402
from vseam_run.zoo.build import (  # noqa: E402
    INSTRUCTBLIP_MODULES,
    LLAVA_MODULES,
    TinyVLMConfig,
    save,
    tiny_instructblip,
    tiny_llava,
)

WORDS = toyworld.vocabulary() + ["answer"]


def write_entry(folder: Path, name: str, arch: str, **overrides) -> Path:
    """A registry entry for a checkpoint saved in `folder/ckpt`."""
    entry = dict(
        name=name, path="ckpt", dtype="float32", answer_case="lower",
        model_class="LlavaForConditionalGeneration" if arch == "llava" else "InstructBlipForConditionalGeneration",
        prompt="<image> {question} answer:" if arch == "llava" else "{question} answer:",
        modules=LLAVA_MODULES if arch == "llava" else INSTRUCTBLIP_MODULES,
    )
    entry.update(overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(entry))
    return path


def _build(tmp_path_factory, arch: str) -> Path:
    folder = tmp_path_factory.mktemp(f"tiny-{arch}")
    cfg = TinyVLMConfig(text_layers=3, text_heads=4, text_kv_heads=2, seed=1)
    model, processor = (tiny_llava if arch == "llava" else tiny_instructblip)(WORDS, cfg)
    save(model, processor, folder / "ckpt")
    return write_entry(folder, f"tiny-{arch}", arch)


@pytest.fixture(scope="session")
def tiny_llava_entry(tmp_path_factory) -> Path:
    """Registry YAML of a tiny random LLaVA (3 layers × 4 heads, GQA with 2 KV heads)."""
    return _build(tmp_path_factory, "llava")


@pytest.fixture(scope="session")
def tiny_instructblip_entry(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "instructblip")


@pytest.fixture(params=["llava", "instructblip"])
def tiny_entry(request, tiny_llava_entry, tiny_instructblip_entry) -> Path:
    return tiny_llava_entry if request.param == "llava" else tiny_instructblip_entry


def load_vlm(entry_path: Path) -> VLM:
    return VLM.load(load_entry_file(entry_path), torch.device("cpu"), torch.float32)


@pytest.fixture
def tiny_vlm(tiny_entry) -> VLM:
    return load_vlm(tiny_entry)


@pytest.fixture
def toy_examples():
    """A few toy-world examples (image, question, answer), with questions of different lengths
    (the shortest, the longest and four between) so that batches of them are padded."""
    pool = sorted(toyworld.sample_examples(3, 40, 32), key=lambda e: len(e.question.split()))
    return [pool[round(i * (len(pool) - 1) / 5)] for i in range(6)]
