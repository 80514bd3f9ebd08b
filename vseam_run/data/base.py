"""The one record every question source produces, so later stages never see a file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

Level = Literal["object", "attribute", "relation"]


@dataclass(frozen=True)
class Box:
    """An object's box in image pixels (GQA's x, y, w, h)."""

    x: float
    y: float
    w: float
    h: float


@dataclass
class Question:
    """One VQA item.

    `image_path` is where the image lives on disk; `image_id` groups questions that
    share an image (splits are made by image so no image falls in two splits).
    `category` is the finer group inside a level (animal, color, spatial, ...).
    `objects`/`boxes` are the involved objects and their boxes when the source has them
    (GQA, the toy world); edits use them for masks.
    """

    qid: str
    image_id: str
    image_path: Path
    question: str
    answer: str
    level: Level
    category: str
    objects: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """Open the image as RGB. Raises VseamError naming the question if it is missing or corrupt."""
        from vseam_run.errors import VseamError

        try:
            with Image.open(self.image_path) as im:
                return im.convert("RGB")
        except FileNotFoundError as e:
            raise VseamError(
                f"question {self.qid}: image not found: {self.image_path}",
                hint="check data.images, or set data.on_missing_image: skip",
            ) from e
        except Exception as e:  # PIL raises several types for corrupt files
            raise VseamError(
                f"question {self.qid}: cannot read image {self.image_path}: {e}",
                hint="replace the file, or set data.on_missing_image: skip",
            ) from e
