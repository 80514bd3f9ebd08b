"""The experiment spec: the YAML contract, as pydantic models.

Every field has a description (shown in errors and docs). Unknown keys are errors
(`extra="forbid"`), strategies and policies are discriminated unions, and all errors
of a file are reported together as `field.path: message (line N)`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vseam_run.errors import SpecError, VseamError
from vseam_run.placement import DeviceMap, Quantization, check_device_map
from vseam_run.yamlio import LoadedYaml, format_validation_error, load_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSpec(_Strict):
    """Fractions of *images* per split; questions follow their image so no image is in two splits."""

    search: float = Field(0.6, ge=0, le=1, description="Fraction used for head search.")
    val: float = Field(0.2, ge=0, le=1, description="Fraction used to choose λ (modulation.lam: auto).")
    test: float = Field(0.2, ge=0, le=1, description="Fraction held out for the final evaluation.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitSpec":
        if abs(self.search + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"search + val + test must be 1 (got {self.search + self.val + self.test:g})")
        return self


class ToyWorldSpec(_Strict):
    """Size of a generated toy-world question set (data.source: toyworld)."""

    seed: int | None = Field(None, description="World seed; defaults to the spec's seed.")
    # Bounded: a billion scenes or 100000-pixel images were accepted and hung with no output.
    images: int = Field(300, ge=4, le=20_000, description="Number of scenes to generate (a few questions each; "
                        "at most 20000: a toy world is generated in memory before the first question is asked).")
    image_size: int = Field(32, ge=24, le=1024, description="Scene size in pixels, 24 to 1024; must match the model: "
                            "the shipped toy-llava and toy-instructblip were trained on 32-pixel scenes (patches of 8).")


class DataSpec(_Strict):
    """Where the questions come from."""

    source: Literal["gqa", "pope", "cocoqa", "toyworld"] = Field(description="Question format.")
    path: Path | None = Field(None, description="Question file (GQA JSON, POPE JSON lines, COCO-QA CSV).")
    images: Path | None = Field(None, description="Folder holding the images.")
    level: Literal["object", "attribute", "relation"] | None = Field(
        None, description="Semantic level to keep: object, attribute or relation (all when unset)."
    )
    categories: list[str] | None = Field(None, description="Categories to keep (e.g. [color, material]); all when unset.")
    limit: int | None = Field(None, ge=1, description="Keep at most this many questions (after filtering).")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Search / val / test fractions, by image.")
    on_missing_image: Literal["error", "skip"] = Field(
        "error", description="A missing or unreadable image stops the run (error) or is skipped and counted (skip)."
    )
    toyworld: ToyWorldSpec = Field(default_factory=ToyWorldSpec, description="Generator settings for source: toyworld.")
    category_from: Literal["program", "file"] = Field(
        "program",
        description="GQA: derive each question's category from its semantic program (program), or take it from the "
        "file name (file: Animal.json → animal, gqa_attribute_color.json → color), as the original release groups them.",
    )

    @model_validator(mode="after")
    def _path_needed(self) -> "DataSpec":
        if self.source != "toyworld" and self.path is None:
            raise ValueError(f"source '{self.source}' needs data.path (the question file)")
        return self


class EditModelRef(_Strict):
    """A registry-style entry for a model the edit stage uses (SAM, CLIP, an inpainting pipeline, a
    text generator): where its weights are and which class loads them. Weights are read from the
    local folder or the Hugging Face cache only, unless VSEAM_ALLOW_DOWNLOAD=1."""

    name: str = Field("", description="Label shown in logs and stored with each edit (defaults to hf_id or path).")
    hf_id: str | None = Field(None, description="Hugging Face id, loaded from the local cache (downloaded only with VSEAM_ALLOW_DOWNLOAD=1).")
    path: Path | None = Field(None, description="Local folder saved with save_pretrained; wins over hf_id.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hf_id.")
    class_name: str | None = Field(
        None, description="Class that loads it: a transformers model class (SAM: SamModel, CLIP: CLIPModel, "
        "rewriter: AutoModelForCausalLM) or, for inpainting, a diffusers pipeline class (AutoPipelineForInpainting). "
        "Resolved only from those namespaces; the role's default when unset.",
    )
    processor_class: str | None = Field(None, description="transformers processor/tokenizer class (SamProcessor, CLIPProcessor, AutoTokenizer); the role's default when unset.")
    trust_remote_code: bool = Field(False, description="Allow code from the checkpoint. Off unless the entry says so.")

    @model_validator(mode="after")
    def _has_location(self) -> "EditModelRef":
        if not self.hf_id and self.path is None:
            raise ValueError("a model entry needs hf_id or path")
        return self

    def label(self) -> str:
        return self.name or self.hf_id or str(self.path)


class EditTextSpec(_Strict):
    """How the edit (source concept → target concept) is written from each question."""

    vocabularies: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Replacement vocabularies by category (animal, indoor, vehicle, color, material, action, ...), "
        "merged over the built-in ones; a target is drawn from the source's category, never the source itself.",
    )
    scene_graphs: Path | None = Field(
        None, description="GQA scene-graph JSON (keyed by image id). Used, where present, for the actual attribute of "
        "'no' questions, exact object boxes, and to skip object swaps that leave another instance in the image.",
    )
    examples: Path | None = Field(None, description="Few-shot examples (counterfactual_prompt_examples.json format) for the rewriter.")
    rewriter: EditModelRef | None = Field(
        None, description="Optional local text-generation model that rewrites each question with the few-shot examples; "
        "its rewrite is used only when it swaps the edited concept for another word of the same vocabulary. Never required.",
    )
    max_new_tokens: int = Field(24, ge=1, description="Tokens the rewriter may generate per question.")


class EditMaskSpec(_Strict):
    """Where each edit may change pixels."""

    source: Literal["box", "sam"] = Field("box", description="box: the question's object boxes; sam: SAM masks prompted with those boxes.")
    margin: int = Field(8, ge=0, description="Pixels the mask is dilated by (inpainting needs some context around the object).")
    sam: EditModelRef | None = Field(None, description="SAM entry (transformers SamModel / SamProcessor); needed for source: sam.")
    min_sam_fraction: float = Field(
        0.05, ge=0, le=1, description="A SAM mask covering less than this fraction of its box is not trusted: the box is used (and recorded)."
    )


class EditInpaintSpec(_Strict):
    """Diffusion inpainting (diffusers) of the masked region."""

    model: EditModelRef | None = Field(None, description="Inpainting pipeline entry (class_name defaults to AutoPipelineForInpainting); needed for recipe: inpaint.")
    steps: int = Field(50, ge=1, description="Denoising steps.")
    guidance: float = Field(7.5, ge=0, description="Classifier-free guidance scale.")
    seed: int = Field(42, description="Generator seed; the same seed, inputs and model give the same edit (and the cache reuses it).")
    negative_prompt: str = Field("low quality, blurry", description="Negative prompt.")
    strength: float = Field(1.0, gt=0, le=1, description="How far the masked region is re-noised (1 = fully repainted).")
    prompt_template: str = Field("a photo of {target}", description="Inpainting prompt; {target} is the edit's target phrase (e.g. 'a green car').")

    @field_validator("prompt_template")
    @classmethod
    def _has_target(cls, v: str) -> str:
        if "{target}" not in v:
            raise ValueError("must contain {target}")
        return v


class EditCheckSpec(_Strict):
    """Proof that an edit is what it claims; failing edits are dropped from later stages and counted."""

    clip: EditModelRef | None = Field(None, description="Image–text model (transformers CLIPModel / CLIPProcessor) scoring target vs source concept on the masked crop; needed for recipe: inpaint.")
    min_target_prob: float = Field(
        0.5, ge=0, le=1, description="Least P(target | masked crop of the edited image) against the source concept for an edit to be kept."
    )
    max_outside_change: float = Field(0.0, ge=0, description="Largest allowed pixel change (0–255) outside the mask; 0 = exact paste-back.")


class EditSpec(_Strict):
    """Counterfactual image edits."""

    recipe: Literal["procedural", "inpaint"] = Field(
        "procedural",
        description="procedural: exact scene-graph edits of the toy world. inpaint: edit text from the question, "
        "box or SAM mask, diffusion inpainting pasted back, and a CLIP concept check (real images).",
    )
    text: EditTextSpec = Field(default_factory=EditTextSpec, description="How edits are written from questions (inpaint).")
    mask: EditMaskSpec = Field(default_factory=EditMaskSpec, description="Masks (inpaint).")
    inpaint: EditInpaintSpec = Field(default_factory=EditInpaintSpec, description="Inpainting settings (inpaint).")
    check: EditCheckSpec = Field(default_factory=EditCheckSpec, description="Edit checks and the concept threshold (inpaint).")
    contact_sheet: int = Field(8, ge=0, description="Rows of the edit contact sheet, drawn across every category (0: none).")
    limit: int | None = Field(None, ge=1, description="Edit at most this many questions (after skipping those with no sensible edit).")

    @model_validator(mode="after")
    def _models_needed(self) -> "EditSpec":
        problems = []
        if self.recipe == "inpaint" and self.inpaint.model is None:
            problems.append("recipe inpaint needs inpaint.model (a diffusers inpainting pipeline)")
        if self.recipe == "inpaint" and self.check.clip is None:
            problems.append("recipe inpaint needs check.clip (the concept check)")
        if self.mask.source == "sam" and self.mask.sam is None:
            problems.append("mask.source sam needs mask.sam (a SamModel entry)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SearchSpec(_Strict):
    """Head search: the effect of ablating each (layer, head) on the gold answer's probability."""

    strategy: Literal["reference", "exact", "attribution", "attribution+verify"] = Field(
        "exact",
        description="reference: one batch-1 pass per head and question (the original method). exact: the same "
        "numbers, batched and with shared prefixes. attribution: first-order estimate from one backward "
        "pass, plus one exactly measured offset per question and layer (1/heads of exact's cost). "
        "attribution+verify: attribution ranks, exact re-scores the top verify_k.",
    )
    scoring: Literal["subset", "signed"] = Field(
        "subset",
        description="subset: positive over correctly answered questions, negative over wrong ones (the paper). "
        "signed: mean (base − ablated) over all; top lists come from its positive and negative parts.",
    )
    ablation: Literal["mean", "zero"] = Field("mean", description="Replace a head's o_proj-input slice by the other heads' mean, or by zeros.")
    top_k: int = Field(10, ge=1, description="Length of the reported top positive / negative head lists.")
    verify_k: int | None = Field(None, ge=1, description="Heads re-scored exactly by attribution+verify (default 3 × top_k).")
    batch_rows: int = Field(64, ge=1, description="Rows per forward pass in exact search (questions × heads).")
    stream: bool = Field(False, description="Exact search holding one batch of questions at a time (each re-encoded per "
                         "layer): the same numbers, memory bounded by the batch instead of the search split, some extra compute.")
    bootstrap: int = Field(1000, ge=1, description="Bootstrap resamples of the search questions for per-head intervals and top-k stability.")


class TraceSpec(_Strict):
    """Causal tracing of clean/edited pairs (needs edit) and the logit lens; see vseam_run/trace.py."""

    method: Literal["exact", "attribution", "reference"] = Field(
        "exact",
        description="exact: activation patching, batched and with shared prefixes (checked against reference on a "
        "few cells at run time). attribution: first-order estimate (gradient × activation difference, one forward "
        "and backward pass per batch), for large models. reference: one batch-1 pass of the whole model per cell.",
    )
    components: list[Literal["resid", "attn", "mlp"]] = Field(
        default_factory=lambda: ["resid", "attn", "mlp"],
        description="What is patched at a layer: resid (the layer's output), attn (attention output), mlp (MLP output).",
    )
    directions: list[Literal["clean_to_edited", "edited_to_clean"]] = Field(
        default_factory=lambda: ["clean_to_edited", "edited_to_clean"],
        description="clean_to_edited: clean activations into the edited-image run, target the clean answer. "
        "edited_to_clean: edited activations into the clean-image run, target the edited answer.",
    )
    window: int = Field(1, ge=1, description="Consecutive layers patched together around each layer (ROME's window; 1 = one layer).")
    margin: float = Field(
        0.1, ge=0, le=1,
        description="A pair counts in a direction only if the target's probability on the source image exceeds that on "
        "the base image by at least this much; others are counted as excluded.",
    )
    pairs: int | None = Field(64, ge=1, description="Trace at most this many pairs (the first that pass the margin); null for all.")
    batch_rows: int = Field(64, ge=1, description="Rows (pair × cell) per forward pass in exact tracing.")
    lens: bool = Field(True, description="Also compute the logit lens on clean and edited images.")

    @field_validator("components", "directions")
    @classmethod
    def _nonempty_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one")
        if len(set(v)) != len(v):
            raise ValueError("lists an entry twice")
        return v


class LinearPolicy(_Strict):
    """Scale every head by clip(1 + λ·score, lo, hi): the released script's policy (it fixed λ = 1 and
    evaluated in-sample), not the paper's framework figure (that is `policy: paper`)."""

    policy: Literal["linear"] = "linear"
    lam: float | Literal["auto"] = Field(1.0, description="λ, or auto: pick from `grid` by val-split accuracy (ties → smaller |λ|).")
    grid: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0, 8.0], description="λ values tried when lam: auto.")
    clip: tuple[float, float] = Field((0.0, 2.0), description="[lo, hi] bounds of a head's scale.")
    eps: float = Field(0.0, ge=0, description="Scores with |score| ≤ eps count as 0.")
    score: Literal["signed", "pos_minus_neg"] = Field("signed", description="Head score: the signed effect, or positive − negative.")

    @field_validator("grid")
    @classmethod
    def _grid_usable(cls, v: list[float]) -> list[float]:
        # Checked here, not when λ is chosen after the whole search.
        if not v:
            raise ValueError("the λ grid is empty; give at least one value, e.g. [0, 1, 2]")
        bad = [x for x in v if not math.isfinite(x)]
        if bad:
            raise ValueError(f"the λ grid must hold finite numbers (got {', '.join(map(str, bad))})")
        return v

    @field_validator("lam", "eps")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number (got {v})")
        return v

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] <= 1.0 <= v[1]:
            # 1 must be reachable, or λ = 0 would not mean "leave the heads alone".
            raise ValueError(f"clip must satisfy lo ≤ 1 ≤ hi (got [{v[0]}, {v[1]}])")
        return v


class TopKPolicy(_Strict):
    """Scale the top-k positive heads by α and the top-k negative heads by β."""

    policy: Literal["topk"] = "topk"
    k: int = Field(5, ge=1, description="Heads per list.")
    alpha: float = Field(1.5, ge=0, description="Scale of the top positive heads.")
    beta: float = Field(0.5, ge=0, description="Scale of the top negative heads.")


def _clip_contains_one(v: tuple[float, float]) -> tuple[float, float]:
    if not v[0] <= 1.0 <= v[1]:
        raise ValueError(f"clip must satisfy lo ≤ 1 ≤ hi (got [{v[0]}, {v[1]}])")
    return v


class PaperPolicy(_Strict):
    """The paper's framework figure: top-K positive heads × (1 + λ·pos/max pos), top-K negative heads
    × (1 − λ·neg/max neg), clipped; K and λ chosen on the val split from the grids (ties → gentler)."""

    policy: Literal["paper"] = "paper"
    k: int | Literal["auto"] = Field("auto", description="Heads per list, or auto: pick from `k_grid` on val.")
    lam: float | Literal["auto"] = Field("auto", description="λ ≥ 0, or auto: pick from `grid` on val (0 included = no change).")
    k_grid: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16], description="K values tried when k: auto.")
    grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0], description="λ values tried when lam: auto.")
    clip: tuple[float, float] = Field((0.0, 2.0), description="[lo, hi] bounds of a head's scale.")

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _clip_contains_one(v)

    @field_validator("k_grid")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError("k_grid needs at least one value, all ≥ 1")
        return v

    @field_validator("grid")
    @classmethod
    def _nonneg_lam(cls, v: list[float]) -> list[float]:
        if not v or min(v) < 0 or not all(math.isfinite(x) for x in v):
            raise ValueError("grid needs at least one λ, all finite and ≥ 0")
        return v

    @field_validator("lam")
    @classmethod
    def _lam_nonneg(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and (v < 0 or not math.isfinite(v)):
            raise ValueError("λ must be ≥ 0 (the formula's signs already say which heads go up or down)")
        return v


class LearnedPolicy(_Strict):
    """Per-head scales fitted by gradient descent on the search split (cross-entropy of the gold token
    plus penalties keeping scales near 1 and the answer distribution near the unmodulated one),
    early-stopped on val accuracy; evaluated on test like every policy."""

    policy: Literal["learned"] = "learned"
    positions: Literal["all", "last_vs_rest"] = Field(
        "all", description="all: one scale per head. last_vs_rest: one for the last position, one for all others."
    )
    epochs: int = Field(30, ge=1, description="Most passes over the search split.")
    patience: int = Field(5, ge=1, description="Stop after this many epochs without a better val accuracy.")
    lr: float = Field(0.05, gt=0, description="Adam learning rate on the scales.")
    l2: float = Field(1.0, ge=0, description="Weight of mean (scale − 1)²: keeps scales near 1.")
    kl: float = Field(1.0, ge=0, description="Weight of KL(unmodulated ‖ modulated) of the next-token distribution.")
    l1: float = Field(0.0, ge=0, description="Weight of mean |scale − 1|: pushes heads back to exactly 1 (sparsity).")
    clip: tuple[float, float] = Field((0.0, 2.0), description="[lo, hi] bounds a scale is projected into after each step.")

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _clip_contains_one(v)


class NonePolicy(_Strict):
    """No modulation (evaluation of the baseline only)."""

    policy: Literal["none"] = "none"


def _grid_nonneg(v: list[float]) -> list[float]:
    if not v or min(v) < 0 or not all(math.isfinite(x) for x in v):
        raise ValueError("grid needs at least one value, all finite and ≥ 0")
    return v


def _k_grid_positive(v: list[int]) -> list[int]:
    if not v or min(v) < 1:
        raise ValueError("k_grid needs at least one value, all ≥ 1")
    return v


# The rival policies' grids (one check each, shared).
_StrengthGrid = Annotated[list[float], AfterValidator(_grid_nonneg)]
_KGrid = Annotated[list[int], AfterValidator(_k_grid_positive)]


class AblatePolicy(_Strict):
    """Deactivate the top-K negative heads (AD-HH): their o_proj-input slices zeroed (or the other
    heads' mean); K chosen on val from `k_grid`, K = 0 (no change) always competing."""

    policy: Literal["ablate"] = "ablate"
    k: int | Literal["auto"] = Field("auto", description="Heads to ablate, or auto: pick from `k_grid` (and 0) on val.")
    k_grid: _KGrid = Field(default_factory=lambda: [1, 2, 4, 8, 16], description="K values tried when k: auto.")
    mode: Literal["zero", "mean"] = Field("zero", description="zero: the head's slice set to 0. mean: to the other heads' mean.")

    @field_validator("k")
    @classmethod
    def _k_nonneg(cls, v: int | str) -> int | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError("k must be ≥ 0")
        return v


class SteerPolicy(_Strict):
    """Add α × (mean last-position slice on correctly answered search questions − on wrongly answered
    ones) to K heads' o_proj-input slices (ICT / VTI); K and α chosen on val."""

    policy: Literal["steer"] = "steer"
    heads: Literal["search", "probe"] = Field(
        "search", description="search: top-K by the search's positive and negative scores. probe: top-K by a per-head "
        "linear probe's balanced accuracy on val (fitted on the search split) predicting a correct answer (ICT).")
    k: int | Literal["auto"] = Field("auto", description="Heads steered, or auto: pick from `k_grid` on val.")
    k_grid: _KGrid = Field(default_factory=lambda: [1, 4, 16], description="K values tried when k: auto.")
    alpha: float | Literal["auto"] = Field("auto", description="Strength α ≥ 0, or auto: pick from `grid` on val (0 = no change).")
    grid: _StrengthGrid = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0], description="α values tried when alpha: auto.")


class ImageAttentionPolicy(_Strict):
    """Multiply the attention text positions pay to image tokens by (1 + α) and renormalise, in layers
    from `from_layer` on, in every head or the search's top-K (PAI / VAF); α and the first layer on val."""

    policy: Literal["image_attention"] = "image_attention"
    alpha: float | Literal["auto"] = Field("auto", description="α ≥ 0, or auto: pick from `grid` on val (0 = no change).")
    grid: _StrengthGrid = Field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0], description="α values tried when alpha: auto.")
    from_layer: int | Literal["auto"] = Field("auto", description="First layer changed, or auto: pick from `layer_grid` on val.")
    layer_grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75],
                                    description="First layers tried when from_layer: auto, as fractions of the depth (0 = layer 0).")
    heads: Literal["all", "search"] = Field("all", description="all: every head of those layers (PAI). search: the search's "
                                            "top-k heads there by positive and negative scores (VAF).")
    k: int = Field(8, ge=1, description="Heads amplified with heads: search.")

    @field_validator("layer_grid")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or min(v) < 0 or max(v) >= 1:
            raise ValueError("layer_grid needs at least one fraction of the depth, each in [0, 1)")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and (v < 0 or not math.isfinite(v)):
            raise ValueError("α must be finite and ≥ 0")
        return v

    @field_validator("from_layer")
    @classmethod
    def _layer(cls, v: int | str) -> int | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError("from_layer must be ≥ 0")
        return v


ModulationSpec = Annotated[
    LinearPolicy | TopKPolicy | PaperPolicy | LearnedPolicy | NonePolicy | AblatePolicy | SteerPolicy | ImageAttentionPolicy,
    Field(discriminator="policy"),
]


class AblationSpec(_Strict):
    """Ablation validation: do the found heads matter more than random ones?"""

    k: int = Field(5, ge=1, description="Heads ablated per group (top positive, top negative, random).")
    trials: int = Field(10, ge=1, description="Random-head trials (seeded).")
    mode: Literal["zero", "mean"] = Field("zero", description="How heads are ablated.")


class ExtraDataSpec(_Strict):
    """A further dataset on which the chosen modulation is also evaluated (all of it: no split)."""

    name: str = Field(max_length=100, description="Label used in metric names: eval.<name>.* (at most 100 characters: stage names are stored in 128).")
    source: Literal["gqa", "pope", "cocoqa", "toyworld"]
    path: Path | None = None
    images: Path | None = None
    level: Literal["object", "attribute", "relation"] | None = None
    categories: list[str] | None = None
    limit: int | None = Field(None, ge=1)
    on_missing_image: Literal["error", "skip"] = "error"
    toyworld: ToyWorldSpec = Field(default_factory=ToyWorldSpec)
    category_from: Literal["program", "file"] = Field("program", description="As data.category_from: GQA categories from the semantic program or the file name.")

    @model_validator(mode="after")
    def _path_needed(self) -> "ExtraDataSpec":
        if self.source != "toyworld" and self.path is None:
            raise ValueError(f"source '{self.source}' needs a path (the question file)")
        return self


class EvaluateSpec(_Strict):
    """Held-out evaluation of the modulation and ablation validation."""

    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples for the accuracy-difference interval.")
    extra: list[ExtraDataSpec] = Field(default_factory=list, description="Further datasets to evaluate the chosen modulation on.")
    ablation: AblationSpec | None = Field(None, description="Ablation validation settings; omit to skip it.")
    protocol: Literal["held_out", "in_sample", "both"] = Field(
        "held_out",
        description="Where the modulation is evaluated: held_out (the test split), in_sample (the search split, "
        "the questions the heads were scored on, as the released code did) or both, side by side.",
    )
    answer_match: Literal["first_token", "variants", "generate"] = Field(
        "first_token",
        description="first_token: correct = the argmax is the gold answer's first token. variants: for yes/no "
        "answers, any case or leading-space variant of yes / no counts (e.g. 'yes', '▁Yes', 'YES'). generate: "
        "answers generated greedily (modulation active at every position) and judged by the benchmark's rule "
        "(answer_rule), for the baseline, the evaluation and every evaluate.extra set; first-token accuracy is "
        "recorded beside it, and the modulation is still chosen on val by the first-token rule.",
    )
    max_new_tokens: int = Field(16, ge=1, le=512, description="answer_match generate: tokens generated per answer at most.")
    answer_rule: Literal["auto", "gqa", "pope", "cocoqa"] = Field(
        "auto", description="answer_match generate: the benchmark rule for data (auto: by data.source; the toy world "
        "uses GQA's). evaluate.extra sets are judged by their own source's rule.",
    )
    control_draws: int = Field(
        5, ge=0, description="Random-head controls: seeded draws of the policy's scale values on random heads (0: none)."
    )


class Spec(_Strict):
    """One experiment: model, data, and the stages to run."""

    name: str = Field(max_length=256, description="Run name shown in `vseam runs` (at most 256 characters, the registry's limit on every database).")
    model: str = Field(description="Registry name (see `vseam models`) or a path to a registry YAML file.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the registry entry's dtype on CUDA, float32 on CPU."
    )
    device_map: DeviceMap | None = Field(
        None, description="Spread the model over devices (accelerate): auto, balanced, balanced_low_0, sequential or an "
        "explicit map of module names to devices (0, cuda:1, cpu, disk); overrides the registry entry's.")
    quantization: Quantization | None = Field(
        None, description="Quantized weights (bitsandbytes), e.g. {bits: 4}; overrides the registry entry's.")
    seed: int = Field(0, ge=0, description="Seed for splits, generation and random baselines (≥ 0: numpy refuses negative seeds).")
    batch_size: int = Field(16, ge=1, description="Questions per forward pass.")
    stream: bool = Field(False, description="Every stage holds one batch of encoded inputs at a time (baseline, search, "
                         "tracing, λ / learned scales, evaluation; each batch re-encoded when it is needed again): the same "
                         "numbers, memory bounded by the batch instead of the split, some extra compute. search.stream "
                         "does it for the exact search alone.")
    workdir: Path = Field(Path(".vseam"), description="Cache (generated data, edits) and run artifacts live here.")

    @field_validator("workdir", mode="before")
    @classmethod
    def _workdir_not_empty(cls, v: Any) -> Any:
        # `--set workdir=` would otherwise be Path("") = the current folder, filled with caches.
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ValueError("is empty; give a folder (default .vseam), or '.' for the current folder")
        return v

    data: DataSpec
    edit: EditSpec | None = Field(None, description="Counterfactual edits; omit to skip.")
    trace: TraceSpec | None = Field(None, description="Causal tracing and logit lens on the edit pairs; needs edit.")
    search: SearchSpec | None = Field(None, description="Head search; omit to skip.")
    modulation: ModulationSpec | None = Field(None, description="Attention modulation; needs search.")
    evaluate: EvaluateSpec | None = Field(None, description="Held-out evaluation; needs search.")

    @model_validator(mode="before")
    @classmethod
    def _default_policy(cls, data: Any) -> Any:
        # `modulation: {lam: 2}` means the linear policy (the released script's), the historical default;
        # a discriminated union would otherwise reject it for lack of a tag.
        if isinstance(data, dict) and isinstance(data.get("modulation"), dict) and "policy" not in data["modulation"]:
            data = {**data, "modulation": {"policy": "linear", **data["modulation"]}}
        return data

    @field_validator("device_map")
    @classmethod
    def _device_map_form(cls, v: Any) -> Any:
        return check_device_map(v)

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _stage_order(self) -> "Spec":
        problems = []
        if self.modulation is not None and self.modulation.policy != "none" and self.search is None:
            problems.append("modulation needs a search section (it scales the heads the search scores)")
        # Without a search, evaluate may only say how the baseline is judged (answer_match: generate …).
        if self.evaluate is not None and self.search is None and (self.evaluate.extra or self.evaluate.ablation):
            problems.append("evaluate needs a search section (evaluate.extra / evaluate.ablation evaluate a modulation)")
        if self.trace is not None and self.edit is None:
            problems.append("trace needs an edit section (it traces clean/edited pairs)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_yaml(self) -> str:
        # Placement keys only when set: specs without them dump and hash as before.
        unset = {k for k in ("device_map", "quantization") if getattr(self, k) is None}
        return yaml.safe_dump(self.model_dump(mode="json", exclude=unset), sort_keys=False, allow_unicode=True)

    def content_hash(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a raw spec mapping.

    `modulation.policy=X` naming another policy than the spec's starts that section afresh from
    X's defaults (the old policy's fields would not fit X), and is applied before the other
    overrides, so `--set modulation.policy=steer --set modulation.alpha=1` works in either order.
    """
    errors = []
    overrides = sorted(overrides, key=lambda item: item.split("=", 1)[0].strip() != "modulation.policy")
    for item in overrides:
        if "=" not in item:
            errors.append(f"--set {item}: expected key=value (e.g. --set {item.strip() or 'seed'}=1)")
            continue
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                errors.append(f"--set {key}: '{part}' is not a section")
                break
            node = node[part]
        else:
            if parts == ["modulation", "policy"] and node.get("policy") != value:
                node.clear()  # a policy switch: the section restarts from the new policy's defaults
            node[parts[-1]] = value
    if errors:
        raise SpecError(source, errors)
    return data


def _semantic_checks(model: Any) -> list[str]:
    """Checks pydantic cannot do alone (the model must be in the registry). Files, weights and
    devices are checked when a run starts (pipeline.preflight), so a spec for another machine
    still validates here."""
    from vseam_run import registry

    if not isinstance(model, str):
        return []
    try:
        registry.get_entry(model)
    except SpecError as e:
        return [f"model: registry entry {e.source} is invalid: " + "; ".join(e.errors)]
    except VseamError as e:
        return [f"model: {e.message}"]
    return []


def data_file_problems(spec: Spec) -> list[str]:
    """Missing question files / image folders, as `field: message` lines."""
    datasets: list[tuple[str, Any]] = [("data", spec.data)]
    if spec.evaluate:
        datasets += [(f"evaluate.extra.{i}", d) for i, d in enumerate(spec.evaluate.extra)]
    errors = []
    for prefix, d in datasets:
        if d.source == "toyworld":
            continue
        if d.path is None or not Path(d.path).exists():
            errors.append(f"{prefix}.path: question file not found: {d.path} (download the dataset and point {prefix}.path at it)")
        if d.images is not None and not Path(d.images).is_dir():
            errors.append(f"{prefix}.images: image folder not found: {d.images}")
    return errors


def load_spec(path: Path, overrides: list[str] | None = None) -> Spec:
    """Read, override and validate a spec file. Raises SpecError listing every problem at once.

    Relative data paths are taken relative to the current directory (where `vseam run` is called).
    """
    doc = load_yaml(path)
    return validate_doc(doc, str(path), overrides or [])


def validate_doc(doc: LoadedYaml, source: str, overrides: list[str]) -> Spec:
    if not isinstance(doc.data, dict):
        raise SpecError(source, ["(top level): a spec must be a mapping of sections (name, model, data, ...)"])
    data = apply_overrides(doc.data, overrides, source)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        # Report an unknown model together with the other errors, not after they are fixed. A
        # field set by --set is named by its override, not by the YAML line it replaced.
        set_by = {item.split("=", 1)[0].strip(): item for item in overrides if "=" in item}
        errors = format_validation_error(e, doc, Spec, overrides=set_by)
        raise SpecError(source, errors + _semantic_checks(data.get("model"))) from None
    errors = _semantic_checks(spec.model)
    if errors:
        raise SpecError(source, errors)
    return spec
