"""Edit masks: the question's boxes dilated by a margin, or SAM masks prompted with those boxes.

A mask is a boolean H×W array (True = may change). SAM masks are kept inside their dilated
box (an edit stays local to the object it is about) and a SAM mask that covers almost none of
its box is not trusted: the box is used instead, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from vseam_run.data.base import Box


@dataclass(frozen=True)
class MaskResult:
    """The mask, how it was made ("box", "sam" or "box (SAM fallback: …)"), and its box."""

    mask: np.ndarray
    source: str

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())


def box_mask(size: tuple[int, int], boxes: Sequence[Box], margin: int = 0) -> np.ndarray:
    """The union of `boxes` (x, y, w, h in pixels) on a (width, height) canvas, grown by `margin` px."""
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    for b in boxes:
        x0, y0 = max(0, int(np.floor(b.x)) - margin), max(0, int(np.floor(b.y)) - margin)
        x1, y1 = min(w, int(np.ceil(b.x + b.w)) + margin), min(h, int(np.ceil(b.y + b.h)) + margin)
        mask[y0:y1, x0:x1] = True
    return mask


def dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    """Grow a mask by `margin` pixels (a square structuring element)."""
    if margin <= 0:
        return mask.copy()
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (torch.nn.functional.max_pool2d(t, 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0).numpy()


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) around the True pixels, exclusive end; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class SamMasker:
    """Box-prompted SAM (transformers SamModel + SamProcessor): one mask per box, the candidate
    with the best predicted IoU, unioned."""

    def __init__(self, model: Any, processor: Any, device: torch.device, min_fraction: float = 0.05) -> None:
        self.model, self.processor, self.device, self.min_fraction = model, processor, device, min_fraction

    @torch.no_grad()
    def __call__(self, image: Any, boxes: Sequence[Box], margin: int) -> MaskResult:
        size = image.size
        prompts = [[[b.x, b.y, b.x + b.w, b.y + b.h] for b in boxes]]
        inputs = self.processor(images=image, input_boxes=prompts, return_tensors="pt")
        model_inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("pixel_values", "input_boxes")}
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        out = self.model(**model_inputs, multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]  # (boxes, candidates, H, W)
        best = out.iou_scores[0].float().cpu().argmax(-1)  # (boxes,)
        union = np.zeros((size[1], size[0]), dtype=bool)
        for i, b in enumerate(boxes):
            inside = box_mask(size, [b], margin)
            m = masks[i, int(best[i])].numpy().astype(bool) & box_mask(size, [b], 0)
            if m.sum() < self.min_fraction * max(1, box_mask(size, [b], 0).sum()):
                return MaskResult(box_mask(size, boxes, margin), f"box (SAM fallback: mask {i} covers under {self.min_fraction:.0%} of its box)")
            union |= dilate(m, margin) & inside
        return MaskResult(union, "sam")


def make_mask(image: Any, boxes: Sequence[Box], margin: int, sam: SamMasker | None = None) -> MaskResult:
    """The edit's mask: SAM's when a masker is given, else the dilated boxes."""
    if sam is not None:
        return sam(image, boxes, margin)
    return MaskResult(box_mask(image.size, boxes, margin), "box")
