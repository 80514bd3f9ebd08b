"""Loading the edit stage's models (SAM, CLIP, the inpainting pipeline, the optional rewriter) from
their entries: a local folder or a Hugging Face id, offline unless VSEAM_ALLOW_DOWNLOAD=1,
safetensors only, classes resolved only from the transformers / diffusers namespaces.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from vseam_run.errors import VseamError
from vseam_run.spec import EditModelRef

Role = Literal["sam", "clip", "inpaint", "rewriter"]

#: The default classes and the file that marks a saved checkpoint, per role.
DEFAULT_CLASS: dict[str, tuple[str, str | None, str]] = {
    "sam": ("SamModel", "SamProcessor", "config.json"),
    "clip": ("CLIPModel", "CLIPProcessor", "config.json"),
    "inpaint": ("AutoPipelineForInpainting", None, "model_index.json"),
    "rewriter": ("AutoModelForCausalLM", "AutoTokenizer", "config.json"),
}
#: The field each role is set by, for messages.
FIELD = {"sam": "edit.mask.sam", "clip": "edit.check.clip", "inpaint": "edit.inpaint.model", "rewriter": "edit.text.rewriter"}


def downloads_allowed() -> bool:
    return os.environ.get("VSEAM_ALLOW_DOWNLOAD") == "1"


def source_of(ref: EditModelRef, role: Role) -> str:
    """Where the weights are (a folder or a hub id); raises VseamError naming the field when they
    are not on this machine (and downloads are not allowed)."""
    marker = DEFAULT_CLASS[role][2]
    if ref.path is not None:
        path = Path(ref.path).expanduser()
        if not (path / marker).is_file():
            raise VseamError(f"{FIELD[role]}: no checkpoint at {path} ({marker} missing)",
                             hint="the folder must be saved with save_pretrained")  # fmt: skip
        return str(path)
    assert ref.hf_id is not None
    if not downloads_allowed():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ref.hf_id, marker, revision=ref.revision), str):
            raise VseamError(
                f"{FIELD[role]}: weights for {ref.hf_id} are not on this machine",
                hint=f"download them once with `hf download {ref.hf_id}`, set VSEAM_ALLOW_DOWNLOAD=1, or give a local `path:`",
            )
    return ref.hf_id


def missing(refs: dict[Role, EditModelRef | None]) -> list[str]:
    """`field: problem` lines for every entry whose weights are not here (pipeline.preflight)."""
    problems = []
    for role, ref in refs.items():
        if ref is None:
            continue
        try:
            source_of(ref, role)
            resolve_class(ref, role)
        except VseamError as e:
            problems.append(str(e).replace("\n  hint:", " —"))
    return problems


def resolve_class(ref: EditModelRef, role: Role, processor: bool = False) -> type:
    """The entry's (or the role's default) class, from transformers — or diffusers for inpainting."""
    default_model, default_proc, _ = DEFAULT_CLASS[role]
    name = (ref.processor_class or default_proc) if processor else (ref.class_name or default_model)
    assert name is not None
    if role == "inpaint" and not processor:
        import diffusers

        cls = getattr(diffusers, name, None) if name.isidentifier() else None
        ok = isinstance(cls, type) and (name == "AutoPipelineForInpainting" or issubclass(cls, diffusers.DiffusionPipeline))
        where = "a diffusers pipeline class (e.g. AutoPipelineForInpainting, StableDiffusionInpaintPipeline)"
    else:
        import transformers

        cls = getattr(transformers, name, None) if name.isidentifier() else None
        ok = isinstance(cls, type)
        if ok and not processor:
            ok = issubclass(cls, transformers.PreTrainedModel) or name.startswith("AutoModel")
        where = "a transformers " + ("processor or tokenizer class" if processor else "model class")
    if not ok:
        raise VseamError(f"{FIELD[role]}: '{name}' is not {where}", hint="fix class_name / processor_class in the entry")
    return cls  # type: ignore[return-value]


def _common(ref: EditModelRef) -> dict[str, Any]:
    kw: dict[str, Any] = {"local_files_only": not downloads_allowed()}
    if ref.revision and ref.path is None:
        kw["revision"] = ref.revision
    if ref.trust_remote_code:
        kw["trust_remote_code"] = True
    return kw


def load_transformers(ref: EditModelRef, role: Role, device: Any, dtype: Any = None) -> tuple[Any, Any]:
    """(model in eval mode on `device`, processor) for a transformers entry."""
    src = source_of(ref, role)
    model_cls, proc_cls = resolve_class(ref, role), resolve_class(ref, role, processor=True)
    kw = _common(ref)
    try:
        model = model_cls.from_pretrained(src, use_safetensors=True, **({"dtype": dtype} if dtype is not None else {}), **kw)
        processor = proc_cls.from_pretrained(src, **kw)
    except OSError as e:
        raise VseamError(f"{FIELD[role]}: cannot load {src}: {e}", hint="the weights must be safetensors") from e
    return model.to(device).eval(), processor


def load_inpaint_pipeline(ref: EditModelRef, device: Any, dtype: Any) -> Any:
    """The diffusers inpainting pipeline of an entry, on `device` (float16 on CUDA is the caller's choice)."""
    src = source_of(ref, "inpaint")
    cls = resolve_class(ref, "inpaint")
    try:
        pipe = cls.from_pretrained(src, **_dtype_kw(dtype), use_safetensors=True, **_common(ref))
    except (OSError, ValueError) as e:
        raise VseamError(f"edit.inpaint.model: cannot load {src}: {e}", hint="the pipeline must be saved with safetensors") from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_kw(dtype: Any) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (0.36); older releases know only the first."""
    import inspect

    from diffusers.pipelines import pipeline_utils

    return {"dtype": dtype} if hasattr(pipeline_utils, "_resolve_dtype") or "dtype" in inspect.signature(
        pipeline_utils.DiffusionPipeline.from_pretrained).parameters else {"torch_dtype": dtype}


def fingerprint(ref: EditModelRef | None, role: Role) -> str:
    """What identifies the weights an entry loads: its fields, plus — for a local folder — the
    names, sizes and modification times of the files in it (retrained weights change the key)."""
    if ref is None:
        return "none"
    blob: dict[str, Any] = {"role": role, **ref.model_dump(mode="json", exclude={"name"})}
    if ref.path is not None and Path(ref.path).is_dir():
        blob["files"] = sorted(
            (str(p.relative_to(ref.path)), p.stat().st_size, int(p.stat().st_mtime))
            for p in Path(ref.path).rglob("*") if p.is_file()
        )  # fmt: skip
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
