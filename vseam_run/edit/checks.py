"""Proof that an edit is what it claims: pixels outside the mask unchanged, pixels inside changed,
and an image–text model (CLIP) preferring the target concept to the source concept on the
masked crop of the edited image."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vseam_run.edit.masks import bbox_of

#: Pixels of the crop outside the mask are set to this gray, so CLIP sees the edited region only.
NEUTRAL = 128


@dataclass(frozen=True)
class PixelCheck:
    """Max |Δ| over pixels outside the mask (0 after paste-back), mean |Δ| inside, on 0–255."""

    outside_max: float
    outside_changed: int
    inside_mean: float
    mask_fraction: float


@dataclass(frozen=True)
class ConceptCheck:
    """P(target) vs the source phrase on the masked crop, in the edited and the original image."""

    target_prob: float
    target_prob_original: float
    target_phrase: str
    source_phrase: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pixel_check(original: Image.Image, edited: Image.Image, mask: np.ndarray) -> PixelCheck:
    a = np.asarray(original.convert("RGB")).astype(np.int16)
    b = np.asarray(edited.convert("RGB")).astype(np.int16)
    diff = np.abs(a - b).max(axis=2)
    outside, inside = diff[~mask], diff[mask]
    return PixelCheck(
        outside_max=float(outside.max()) if outside.size else 0.0,
        outside_changed=int((outside > 0).sum()),
        inside_mean=float(np.abs(a - b)[mask].mean()) if inside.size else 0.0,
        mask_fraction=float(mask.mean()),
    )


def masked_crop(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The mask's bounding box, with the pixels outside the mask set to neutral gray."""
    box = bbox_of(mask)
    arr = np.asarray(image.convert("RGB")).copy()
    arr[~mask] = NEUTRAL
    if box is None:
        return Image.fromarray(arr)
    x0, y0, x1, y1 = box
    return Image.fromarray(arr[y0:y1, x0:x1])


class ConceptScorer:
    """CLIP (transformers CLIPModel + CLIPProcessor): P(target phrase) against the source phrase."""

    def __init__(self, model: Any, processor: Any, device: torch.device, template: str = "a photo of {}") -> None:
        self.model, self.processor, self.device, self.template = model, processor, device, template

    @torch.no_grad()
    def target_probs(self, crops: list[Image.Image], target: str, source: str) -> list[float]:
        texts = [self.template.format(target), self.template.format(source)]
        inputs = self.processor(text=texts, images=crops, return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        logits = self.model(**inputs).logits_per_image.float()  # (images, 2)
        return logits.softmax(-1)[:, 0].cpu().tolist()

    def __call__(self, original: Image.Image, edited: Image.Image, mask: np.ndarray, target: str, source: str) -> ConceptCheck:
        p_edit, p_orig = self.target_probs([masked_crop(edited, mask), masked_crop(original, mask)], target, source)
        return ConceptCheck(p_edit, p_orig, target, source)
