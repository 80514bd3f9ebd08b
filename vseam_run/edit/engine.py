"""Concept edits of real images, computed once: plan → mask → inpaint (pasted back) → checks.

Every edit is stored under a content hash of everything that determines its pixels (the image
bytes, the plan, the mask settings and SAM weights, the pipeline's weights, dtype and
parameters, the prompt), so the same edit is never computed twice — not across runs, not
across specs. The concept check is cached next to it, keyed by the CLIP weights. Models are
loaded only when something is actually missing from the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image

from vseam_run.data.base import Question
from vseam_run.edit import models
from vseam_run.edit.checks import ConceptCheck, ConceptScorer, PixelCheck, pixel_check
from vseam_run.edit.inpaint import Inpainter, InpaintParams
from vseam_run.edit.masks import MaskResult, SamMasker, make_mask
from vseam_run.edit.text import EditPlan, EditSkip
from vseam_run.spec import EditSpec
from vseam_run.store.runstore import sha256_file

#: Bump when the computation changes, so cached edits are remade.
ENGINE_VERSION = 1
Log = Callable[[str], None]


@dataclass
class EditRecord:
    """One finished edit: the clean/edited pair later stages use, with its provenance and proof.

    `key` is the content hash the edit is cached under; `passed` says whether it survived
    the checks (`reason` says why not)."""

    qid: str
    level: str
    category: str
    question: str
    original_image: Path
    edited_image: Path
    mask_path: Path
    original_answer: str
    expected_answer: str
    plan: dict[str, Any]
    prompt: str
    seed: int
    pipeline: str
    key: str
    mask_source: str
    pixels: PixelCheck
    concept: ConceptCheck | None = None
    passed: bool = True
    reason: str = ""

    @property
    def text(self) -> str:
        return str(self.plan.get("text", ""))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("original_image", "edited_image", "mask_path"):
            d[k] = str(d[k])
        d["text"] = self.text
        return d


@dataclass
class EditBatch:
    """What an edit stage produced: edits kept for later stages, edits dropped by a check,
    questions skipped (no sensible edit), and how many edits were computed vs found in the cache."""

    kept: list[EditRecord] = field(default_factory=list)
    dropped: list[EditRecord] = field(default_factory=list)
    skipped: list[EditSkip] = field(default_factory=list)
    computed: int | None = 0
    reused: int | None = 0

    @property
    def all(self) -> list[EditRecord]:
        return self.kept + self.dropped

    def summary(self) -> dict[str, float]:
        """The per-run edit-quality summary (metric names under edit.*)."""
        edits = self.all
        out: dict[str, float] = {
            "edit.planned": len(edits), "edit.kept": len(self.kept), "edit.dropped": len(self.dropped),
            "edit.skipped": len(self.skipped),
        }  # fmt: skip
        if self.computed is not None and self.reused is not None:
            out.update({"edit.computed": self.computed, "edit.cached": self.reused})
        if edits:
            out["edit.outside_change_max"] = max(e.pixels.outside_max for e in edits)
            out["edit.inside_change_mean"] = float(np.mean([e.pixels.inside_mean for e in edits]))
            out["edit.mask_fraction_mean"] = float(np.mean([e.pixels.mask_fraction for e in edits]))
            checked = [e.concept for e in edits if e.concept is not None]
            if checked:
                out["edit.concept_prob_mean"] = float(np.mean([c.target_prob for c in checked]))
                out["edit.concept_gain_mean"] = float(np.mean([c.target_prob - c.target_prob_original for c in checked]))
            out["edit.sam_fallbacks"] = sum(e.mask_source.startswith("box (SAM") for e in edits)
        for reason in sorted({e.reason.split(":")[0] for e in self.dropped}):
            out[f"edit.dropped.{reason}"] = sum(e.reason.split(":")[0] == reason for e in self.dropped)
        return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class InpaintEditor:
    """Computes (or finds in the cache) the inpainting edits of planned questions."""

    def __init__(self, spec: EditSpec, device: torch.device, cache_dir: Path, log: Log = lambda s: None) -> None:
        self.spec, self.device, self.root, self.log = spec, device, cache_dir / "inpaint", log
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self._inpainter: Inpainter | None = None
        self._sam: SamMasker | None = None
        self._clip: ConceptScorer | None = None
        assert spec.inpaint.model is not None and spec.check.clip is not None
        self.pipeline_id = f"{spec.inpaint.model.label()}@{models.fingerprint(spec.inpaint.model, 'inpaint')}"
        self.clip_id = models.fingerprint(spec.check.clip, "clip")
        s = spec.inpaint
        self.params = InpaintParams(s.steps, s.guidance, s.seed, s.negative_prompt, s.strength)

    # -- lazy models -----------------------------------------------------------------------------

    @property
    def inpainter(self) -> Inpainter:
        if self._inpainter is None:
            assert self.spec.inpaint.model is not None
            self.log(f"  loading inpainting pipeline {self.spec.inpaint.model.label()}")
            self._inpainter = Inpainter(models.load_inpaint_pipeline(self.spec.inpaint.model, self.device, self.dtype), self.device)
        return self._inpainter

    @property
    def sam(self) -> SamMasker | None:
        m = self.spec.mask
        if m.source != "sam" or m.sam is None:
            return None
        if self._sam is None:
            self.log(f"  loading SAM {m.sam.label()}")
            model, proc = models.load_transformers(m.sam, "sam", self.device)
            self._sam = SamMasker(model, proc, self.device, m.min_sam_fraction)
        return self._sam

    @property
    def clip(self) -> ConceptScorer:
        if self._clip is None:
            assert self.spec.check.clip is not None
            self.log(f"  loading concept checker {self.spec.check.clip.label()}")
            model, proc = models.load_transformers(self.spec.check.clip, "clip", self.device)
            self._clip = ConceptScorer(model, proc, self.device)
        return self._clip

    @property
    def models_loaded(self) -> list[str]:
        """Which models this editor had to load (none when every edit came from the cache)."""
        return [n for n, m in (("inpaint", self._inpainter), ("sam", self._sam), ("clip", self._clip)) if m is not None]

    # -- keys ------------------------------------------------------------------------------------

    def key(self, q: Question, plan: EditPlan, image_sha: str) -> str:
        m = self.spec.mask
        return _digest({
            # What determines the pixels and the check, not which question asked: two questions
            # wanting the same change of the same image share one edit.
            "v": ENGINE_VERSION, "image": image_sha, "boxes": plan.to_json()["boxes"],
            "phrases": [plan.source_phrase, plan.target_phrase],
            "mask": {"source": m.source, "margin": m.margin, "min_sam_fraction": m.min_sam_fraction,
                     "sam": models.fingerprint(m.sam, "sam") if m.source == "sam" else None},
            "pipeline": self.pipeline_id, "dtype": str(self.dtype), "device": self.device.type,
            "params": asdict(self.params), "prompt": plan.prompt(self.spec.inpaint.prompt_template),
        })  # fmt: skip

    # -- edits -----------------------------------------------------------------------------------

    def edit(self, q: Question, plan: EditPlan) -> tuple[EditRecord, bool]:
        """The edit of one planned question, and whether it had to be computed."""
        image_sha = sha256_file(q.image_path)
        key = self.key(q, plan, image_sha)
        folder = self.root / key[:2] / key
        meta_path = folder / "edit.json"
        record = self._cached(meta_path, q, plan)
        computed = record is None
        if record is None:
            record = self._compute(q, plan, key, folder)
        check_path = folder / f"concept-{self.clip_id}.json"
        if record.concept is None:
            record.concept = self._concept(record, plan, check_path)
        return record, computed

    def _compute(self, q: Question, plan: EditPlan, key: str, folder: Path) -> EditRecord:
        original = q.load_image()
        mask: MaskResult = make_mask(original, plan.boxes, self.spec.mask.margin, self.sam)
        prompt = plan.prompt(self.spec.inpaint.prompt_template)
        edited = self.inpainter(original, mask.mask, prompt, self.params)
        folder.mkdir(parents=True, exist_ok=True)
        edited_path, mask_path = folder / "edited.png", folder / "mask.png"
        edited.save(edited_path)
        Image.fromarray(mask.mask.astype(np.uint8) * 255, "L").save(mask_path)
        record = EditRecord(
            qid=q.qid, level=q.level, category=q.category, question=q.question, original_image=q.image_path,
            edited_image=edited_path, mask_path=mask_path, original_answer=plan.original_answer,
            expected_answer=plan.expected_answer, plan=plan.to_json(), prompt=prompt, seed=self.params.seed,
            pipeline=self.pipeline_id, key=key, mask_source=mask.source, pixels=pixel_check(original, edited, mask.mask),
        )  # fmt: skip
        # Written last: its presence marks a complete edit for the cache.
        (folder / "edit.json").write_text(json.dumps(record.to_json(), indent=1))
        return record

    def _cached(self, meta_path: Path, q: Question, plan: EditPlan) -> EditRecord | None:
        try:
            d = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        d.pop("text", None)
        d.pop("concept", None)
        d["pixels"] = PixelCheck(**d["pixels"])
        for k in ("original_image", "edited_image", "mask_path"):
            d[k] = Path(d[k])
        mine = dict(qid=q.qid, level=q.level, category=q.category, question=q.question, original_image=q.image_path,
                    original_answer=plan.original_answer, expected_answer=plan.expected_answer, plan=plan.to_json())
        record = EditRecord(**{**d, **mine, "passed": True, "reason": ""})
        return record if record.edited_image.is_file() and record.mask_path.is_file() else None

    def _concept(self, record: EditRecord, plan: EditPlan, path: Path) -> ConceptCheck:
        try:
            return ConceptCheck(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            pass
        with Image.open(record.original_image) as o, Image.open(record.edited_image) as e, Image.open(record.mask_path) as m:
            mask = np.asarray(m) > 127
            check = self.clip(o.convert("RGB"), e.convert("RGB"), mask, plan.target_phrase, plan.source_phrase)
        path.write_text(json.dumps(check.to_json()))
        return check

    def run(self, items: Iterable[tuple[Question, EditPlan]], progress: Callable[[int], None] = lambda n: None) -> EditBatch:
        out = EditBatch()
        for q, plan in items:
            record, computed = self.edit(q, plan)
            out.computed = (out.computed or 0) + computed
            out.reused = (out.reused or 0) + (not computed)
            judge(record, self.spec)
            (out.kept if record.passed else out.dropped).append(record)
            progress(1)
        return out


def judge(record: EditRecord, spec: EditSpec) -> None:
    """Apply the spec's thresholds: pixels outside the mask, something changed inside, the concept."""
    px, c = record.pixels, record.concept
    if px.outside_max > spec.check.max_outside_change:
        record.passed, record.reason = False, f"outside_change: {px.outside_max:g} > {spec.check.max_outside_change:g} outside the mask"
    elif px.inside_mean == 0:
        record.passed, record.reason = False, "unchanged: no pixel inside the mask changed"
    elif c is not None and c.target_prob < spec.check.min_target_prob:
        record.passed, record.reason = False, f"concept: P({c.target_phrase}) = {c.target_prob:.3f} < {spec.check.min_target_prob:g}"
    else:
        record.passed, record.reason = True, ""
