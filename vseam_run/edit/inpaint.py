"""Diffusion inpainting of a masked region, pasted back so nothing outside the mask changes.

Inpainting pipelines repaint the whole canvas through the VAE, so even "unmasked" pixels come
back slightly altered (and the original method saved that whole image). Here only the masked
pixels are taken from the generated image; every other pixel is the original's, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class InpaintParams:
    """Everything besides the model that determines a generated region."""

    steps: int
    guidance: float
    seed: int
    negative_prompt: str
    strength: float


def paste_back(original: Image.Image, generated: Image.Image, mask: np.ndarray) -> Image.Image:
    """Masked pixels from `generated` (resized to the original's size), all others from `original`."""
    orig = np.asarray(original.convert("RGB"))
    gen = np.asarray(generated.convert("RGB").resize(original.size, Image.Resampling.BICUBIC))
    out = np.where(mask[..., None], gen, orig)
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _canvas(size: int, multiple: int) -> int:
    """The generation size: the image's, rounded up to what the VAE accepts."""
    return max(multiple, -(-size // multiple) * multiple)


class Inpainter:
    """A loaded diffusers inpainting pipeline; `calls` counts generations (the cache's proof)."""

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe, self.device = pipe, device
        self.calls = 0

    @torch.no_grad()
    def __call__(self, image: Image.Image, mask: np.ndarray, prompt: str, p: InpaintParams) -> Image.Image:
        multiple = int(getattr(self.pipe, "vae_scale_factor", 8)) * 1
        w, h = _canvas(image.width, multiple), _canvas(image.height, multiple)
        gen = torch.Generator(device="cpu").manual_seed(p.seed)
        out = self.pipe(
            prompt=prompt, image=image.convert("RGB"), mask_image=Image.fromarray(mask.astype(np.uint8) * 255, "L"),
            num_inference_steps=p.steps, guidance_scale=p.guidance, negative_prompt=p.negative_prompt or None,
            strength=p.strength, generator=gen, height=h, width=w,
        )  # fmt: skip
        self.calls += 1
        return paste_back(image, out.images[0], mask)
