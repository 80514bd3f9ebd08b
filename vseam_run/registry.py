"""Model registry: one YAML file per model says how to load it and where its heads live.

Adding a model means adding a file to `registry/` (or pointing a spec's `model:` at a YAML
file); no code changes. Class names are resolved only from the transformers namespace.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vseam_run.errors import SpecError, VseamError
from vseam_run.placement import DeviceMap, Quantization, check_device_map
from vseam_run.yamlio import format_validation_error, load_yaml

from vseam_run.shipped import PACKAGE_DIR, shipped_dir

# The shipped entries: the repository's registry/, copied into the package by a wheel build.
DEFAULT_REGISTRY_DIRS = [shipped_dir("registry")]


class ModulePaths(BaseModel):
    """Dotted module paths, relative to the loaded model object, of the sites interventions need."""

    model_config = ConfigDict(extra="forbid")

    decoder: str = Field(description="The language model's decoder stack (takes `inputs_embeds`, applies the final norm).")
    layers: str = Field(description="The ModuleList of decoder layers; must be an attribute of `decoder`.")
    attention: str = Field("self_attn", description="Attention module, relative to one layer.")
    o_proj: str = Field("self_attn.o_proj", description="Attention output projection, relative to one layer; heads are slices of its input.")
    mlp: str = Field("mlp", description="MLP module, relative to one layer.")
    final_norm: str = Field(description="Final norm before the LM head.")
    lm_head: str = Field(description="The LM head (hidden → vocabulary logits).")


class ModelEntry(BaseModel):
    """How to load one VLM and where its heads live."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Registry name used in specs, e.g. llava-1.5-7b.")
    description: str = Field("", description="One line shown by `vseam models`.")
    hf_id: str | None = Field(None, description="Hugging Face model id, loaded from the local cache.")
    path: str | None = Field(
        None,
        description="Local checkpoint folder. `{package}` expands to the vseam_run package folder; "
        "a relative path is relative to the entry file.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hf_id.")
    model_class: str = Field(description="transformers class name, e.g. LlavaForConditionalGeneration.")
    processor_class: str = Field("AutoProcessor", description="transformers processor class name.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float16", description="dtype used on CUDA when the spec says dtype: auto (CPU always uses float32)."
    )
    prompt: str = Field(description="Prompt template; must contain {question}. Include the image token where the processor expects it.")
    answer_case: Literal["as_is", "lower", "capitalize"] = Field(
        "as_is", description="How gold answers are cased before taking their first token (LLaVA answers 'Yes', InstructBLIP 'yes')."
    )
    text_config: str = Field("text_config", description="Attribute of model.config with the language model's sizes.")
    image_token_attr: str = Field(
        "image_token_index",
        description="Attribute of model.config holding the image/query placeholder token id (image_token_index for "
        "LLaVA, LLaVA-NeXT, PaliGemma, Gemma3; image_token_id for Qwen2-VL, Idefics3, SmolVLM); checked at load, "
        "used to find the image positions (vlm.image_positions).",
    )
    modules: ModulePaths
    trust_remote_code: bool = Field(False, description="Allow code from the checkpoint. Off unless the entry says so.")

    @field_validator("prompt")
    @classmethod
    def _prompt_has_question(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError("must contain {question}")
        return v

    @field_validator("model_class", "processor_class")
    @classmethod
    def _is_transformers_class(cls, v: str) -> str:
        import transformers

        # A class, not just any name there (`pipeline`, `logging` would pass a hasattr check).
        if not v.isidentifier() or not isinstance(getattr(transformers, v, None), type):
            close = difflib.get_close_matches(v, [n for n in dir(transformers) if n[:1].isupper()], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"'{v}' is not a class in the transformers namespace{hint}")
        return v

    @field_validator("model_class")
    @classmethod
    def _is_model_class(cls, v: str) -> str:
        import transformers

        # Only a model may be built from an entry: `TrainingArguments` or a tokenizer is a
        # class in the namespace too, and would fail (or do something else) much later.
        from transformers.models.auto.auto_factory import _BaseAutoModelClass

        found = getattr(transformers, v, None)
        if isinstance(found, type) and not issubclass(found, (transformers.PreTrainedModel, _BaseAutoModelClass)):
            close = difflib.get_close_matches(v, [n for n in dir(transformers) if n.endswith("ForConditionalGeneration")], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"'{v}' is not a model class (a transformers PreTrainedModel){hint}")
        return v

    @field_validator("processor_class")
    @classmethod
    def _is_processor_class(cls, v: str) -> str:
        import transformers

        # Only a processor where a processor is meant: TrainingArguments or a model class is a class
        # in the namespace too, and failed only at load.
        found = getattr(transformers, v, None)
        allowed = (transformers.ProcessorMixin, transformers.AutoProcessor)
        if isinstance(found, type) and not (issubclass(found, allowed[0]) or found is allowed[1]):
            close = difflib.get_close_matches(v, [n for n in dir(transformers) if n.endswith("Processor")], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; AutoProcessor picks the checkpoint's own"
            raise ValueError(f"'{v}' is not a processor class (a transformers ProcessorMixin, or AutoProcessor){hint}")
        return v

    @model_validator(mode="after")
    def _has_weights_location(self) -> "ModelEntry":
        if not self.hf_id and not self.path:
            raise ValueError("an entry needs hf_id or path")
        return self

    allow_missing_weights: list[str] = Field(
        default_factory=list,
        description="Tensor names (fnmatch patterns) the checkpoint may lack; any other missing tensor refuses the "
        "run, since transformers would fill it with random weights.",
    )
    allow_unexpected_weights: list[str] = Field(
        default_factory=list,
        description="Tensor names (fnmatch patterns) the checkpoint may hold that the model class has no place for.",
    )

    # Where the entry came from; used to resolve relative paths.
    _source: Path | None = None

    def resolved_path(self) -> Path | None:
        if not self.path:
            return None
        p = self.path.replace("{package}", str(PACKAGE_DIR))
        path = Path(p).expanduser()
        if not path.is_absolute() and self._source is not None:
            path = (self._source.parent / path).resolve()
        return path

    def remote_code_notice(self) -> str | None:
        """What an entry with trust_remote_code does, said plainly (validate and run both print it)."""
        if not self.trust_remote_code:
            return None
        where = self.resolved_path() or self.hf_id
        return (f"note: registry entry '{self.name}' sets trust_remote_code: true: loading it runs Python code "
                f"from the checkpoint folder ({where}); use it only for a checkpoint you trust")

    def to_yaml(self) -> str:
        # The allow-lists and placement keys are dumped only when set, so entries without them hash as before.
        unset = {k for k in ("allow_missing_weights", "allow_unexpected_weights") if not getattr(self, k)}
        unset |= {k for k in ("device_map", "quantization") if getattr(self, k) is None}
        return yaml.safe_dump(self.model_dump(exclude=unset), sort_keys=False)

    def content_hash(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()

    # Appended last so older entries dump and hash as before apart from this one key.
    arch: "ArchPreset | None" = Field(
        None,
        description="Optional: the real architecture as transformers config kwargs, for `vseam validate` and "
        "`vseam bench search --preset` on machines without the checkpoint.",
    )
    device_map: DeviceMap | None = Field(
        None,
        description="Spread the model over devices through accelerate: auto, balanced, balanced_low_0, sequential, or "
        "an explicit map of module names to devices (0, cuda:1, cpu, disk). A spec's device_map wins.",
    )
    quantization: Quantization | None = Field(
        None, description="Quantized weights through bitsandbytes, e.g. {bits: 4} or {bits: 8}. A spec's quantization wins."
    )

    @field_validator("device_map")
    @classmethod
    def _device_map_form(cls, v):
        return check_device_map(v)


def registry_dirs() -> list[Path]:
    """Registry folders: VSEAM_REGISTRY (os.pathsep-separated) first, then the shipped one."""
    extra = [Path(p) for p in os.environ.get("VSEAM_REGISTRY", "").split(os.pathsep) if p]
    return extra + DEFAULT_REGISTRY_DIRS


def load_entry_file(path: Path) -> ModelEntry:
    """Parse and validate one registry file; every error is reported at once as `field: message`."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise SpecError(str(path), ["(top level): a registry entry must be a mapping"])
    try:
        entry = ModelEntry.model_validate(doc.data)
    except ValidationError as e:
        raise SpecError(str(path), format_validation_error(e, doc, ModelEntry)) from None
    entry._source = Path(path).resolve()
    return entry


def available() -> dict[str, Path]:
    """Entry name → file, for every YAML file in the registry folders (earlier folders win)."""
    found: dict[str, Path] = {}
    for d in registry_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def get_entry(name_or_path: str) -> ModelEntry:
    """Look an entry up by name, or load it from a YAML path. Unknown names get close matches."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_entry_file(Path(name_or_path))
    known = available()
    if name_or_path in known:
        return load_entry_file(known[name_or_path])
    close = difflib.get_close_matches(name_or_path, list(known), n=3, cutoff=0.4)
    did_you_mean = f"did you mean {' or '.join(close)}? " if close else ""
    raise VseamError(
        f"unknown model '{name_or_path}': {did_you_mean}known models: {', '.join(sorted(known))}",
        hint="`vseam models` lists them; or pass a path to a registry YAML file",
    )


class ArchPreset(BaseModel):
    """A model's architecture as config kwargs, buildable offline (no download, no weights).

    `model_type` picks the transformers config class (`AutoConfig.for_model`); nested
    sub-configs (`text_config`, `vision_config`) are plain mappings with their own model_type.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_type: str = Field(description="transformers model_type, e.g. llava, llava_next, qwen2_vl, paligemma.")
    config: dict = Field(default_factory=dict, description="Keyword arguments of the config class.")

    @field_validator("model_type")
    @classmethod
    def _known_model_type(cls, v: str) -> str:
        from transformers import CONFIG_MAPPING

        if v not in CONFIG_MAPPING:
            close = difflib.get_close_matches(v, list(CONFIG_MAPPING.keys()), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"'{v}' is not a transformers model_type{hint}")
        return v

    def build(self):
        """The transformers config object (a PretrainedConfig)."""
        from transformers import AutoConfig

        try:
            return AutoConfig.for_model(self.model_type, **self.config)
        except (TypeError, ValueError, KeyError) as e:
            raise VseamError(f"arch preset ({self.model_type}): cannot build its config: {e}") from None


ModelEntry.model_rebuild()
