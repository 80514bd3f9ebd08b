"""Inspect a checkpoint without reading its weights, and check registry entries against it.

`vseam models new` builds the model's module tree on the meta device from its config (no
weights read, no memory used), finds the sites vseam needs — the language model's decoder
stack, its ModuleList of layers, the attention module and its output projection (the Linear
whose input is heads × head_dim wide), the MLP, the final norm, the LM head — and writes a
registry entry. `vseam validate` uses the same tree to check every path of an entry.

Configs come from local files only (a checkpoint folder or the Hugging Face cache) unless
VSEAM_ALLOW_DOWNLOAD=1; a registry entry's `arch:` preset stands in when neither is there.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vseam_run.errors import VseamError
from vseam_run.registry import ModelEntry

# Names of attention output projections across transformers families, most common first.
OUT_PROJ_NAMES = ("o_proj", "out_proj", "o", "dense", "c_proj", "wo", "proj", "out")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "fc")
NORM_NAMES = ("norm", "final_layer_norm", "final_norm", "ln_f", "norm_f", "layer_norm")
TEXT_CONFIG_ATTRS = ("text_config", "language_config", "llm_config", "text_cfg")
IMAGE_TOKEN_ATTRS = ("image_token_index", "image_token_id")

# Prompts by model_type, written from the processors' chat templates and the model cards;
# used when the checkpoint brings no chat template. The tokenizer adds BOS itself, so none
# starts with it. Users are always told to check the prompt.
PROMPTS: dict[str, str] = {
    "llava": "USER: <image>\n{question} Answer the question using a single word or phrase. ASSISTANT:",
    "llava_next": "[INST] <image>\n{question} Answer the question using a single word or phrase. [/INST]",
    "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{question} Answer the question using a single word or phrase."
    "<|im_end|>\n<|im_start|>assistant\n",
    # The processor puts BOS after the image tokens and ends the prompt with "\n" itself.
    "paligemma": "<image>answer en {question}",
    "idefics3": "User:<image>{question} Answer the question using a single word or phrase.<end_of_utterance>\nAssistant:",
    "smolvlm": "<|im_start|>User:<image>{question} Answer the question using a single word or phrase."
    "<end_of_utterance>\nAssistant:",
    "gemma3": "<start_of_turn>user\n<start_of_image>{question} Answer the question using a single word or phrase."
    "<end_of_turn>\n<start_of_turn>model\n",
    "instructblip": "Question: {question} Short answer:",
    # BLIP-2's processor puts the query tokens in front itself; the prompt carries no placeholder.
    "blip-2": "Question: {question} Answer:",
}
PROMPTS["qwen2_5_vl"] = PROMPTS["qwen2_vl"]
# Families whose answers come lower-case (PaliGemma's "answer en" task, InstructBLIP's short answers).
LOWER_CASE_ANSWERS = {"paligemma", "instructblip", "blip-2"}


@dataclass
class Arch:
    """Sizes of the language model, read from its config."""

    config_class: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int

    def describe(self) -> str:
        kv = f" ({self.kv_heads} KV heads)" if self.kv_heads != self.heads else ""
        return f"{self.config_class}: {self.layers} layers × {self.heads} heads{kv}, head_dim {self.head_dim}, hidden {self.hidden}"


@dataclass
class Inspection:
    """What `vseam models new` found in a checkpoint."""

    source: str
    local_path: Path | None
    model_type: str
    model_class: str
    model_class_origin: str
    processor_class: str
    text_config_attr: str
    image_token_attr: str | None
    image_token_id: int | None
    arch: Arch
    modules: dict[str, str]
    prompt: str
    prompt_origin: str
    answer_case: str
    dtype: str
    answer_case_origin: str = "vseam's default"
    notes: list[str] = field(default_factory=list)


# ---- configs and classes ---------------------------------------------------------------------


def _allow_download() -> bool:
    return os.environ.get("VSEAM_ALLOW_DOWNLOAD") == "1"


def load_config(source: str, revision: str | None = None, trust_remote_code: bool = False):
    """The config of a checkpoint folder or a Hub id (local cache only unless VSEAM_ALLOW_DOWNLOAD=1).
    `trust_remote_code` only where a registry entry says so: then, as `vseam run` does, the
    checkpoint folder's own Python code is run."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            source, revision=revision, local_files_only=not _allow_download(), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        where = "folder" if Path(source).exists() else "Hub id"
        raise VseamError(
            f"cannot read the config of {source} ({where}): {str(e).splitlines()[0]}",
            hint=f"only config.json is needed: `hf download {source} config.json`, or set VSEAM_ALLOW_DOWNLOAD=1; "
            "a config that needs the checkpoint's own code loads only with trust_remote_code: true in its registry "
            "entry (that runs Python code from the checkpoint folder)",
        ) from None


def cached_config(entry: ModelEntry):
    """The entry's checkpoint config if it is on this machine, else None (never downloads)."""
    path = entry.resolved_path()
    if path is not None:
        return load_config(str(path), trust_remote_code=entry.trust_remote_code) if (path / "config.json").is_file() else None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(entry.hf_id, "config.json", revision=entry.revision), str):
        return load_config(entry.hf_id, entry.revision, trust_remote_code=entry.trust_remote_code)
    return None


def text_config(config, attr: str | None = None):
    """The language model's config (the config itself for text-only layouts)."""
    if attr and getattr(config, attr, None) is not None:
        return getattr(config, attr)
    return config.get_text_config()


def text_config_attr(config) -> str:
    sub = config.get_text_config()
    for attr in TEXT_CONFIG_ATTRS:
        if getattr(config, attr, None) is sub:
            return attr
    return "text_config"  # absent: vseam then reads the top-level config


def arch_of(config, attr: str | None = None) -> Arch:
    tc = text_config(config, attr)
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    kv = getattr(tc, "num_key_value_heads", None) or heads
    return Arch(type(tc).__name__, tc.num_hidden_layers, heads, kv, head_dim, tc.hidden_size)


def model_class_for(config, override: str | None = None) -> tuple[type, str]:
    """The transformers model class (a PreTrainedModel subclass) and where its name came from."""
    import transformers
    from transformers import PreTrainedModel

    if override:
        name, origin = override, "--model-class"
    elif getattr(config, "architectures", None):
        name, origin = config.architectures[0], "config.architectures"
    else:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as MAP

        name, origin = MAP.get(config.model_type), f"transformers' image-text-to-text class for '{config.model_type}'"
        if name is None:
            raise VseamError(
                f"config of model_type '{config.model_type}' names no architecture and transformers maps it to no "
                "image-text-to-text class",
                hint="pass --model-class NAME (a transformers *ForConditionalGeneration class)",
            )
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise VseamError(
            f"model class '{name}' (from {origin}) is not a model class in the transformers namespace",
            hint="vseam loads only transformers' own classes (no remote code); pass --model-class NAME",
        )
    return cls, origin


def processor_class_name(model_type: str) -> str:
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    return PROCESSOR_MAPPING_NAMES.get(model_type) or "AutoProcessor"


def meta_model(model_cls: type, config) -> nn.Module:
    """The model's module tree on the meta device: shapes only, no memory, no weights read."""
    try:
        with torch.device("meta"):
            return model_cls._from_config(config)
    except Exception as e:  # noqa: BLE001 - any construction failure is a config/class mismatch
        raise VseamError(
            f"cannot build {model_cls.__name__} from a {type(config).__name__}: {type(e).__name__}: {str(e).splitlines()[0]}",
            hint="model_class must be the class the checkpoint was saved with (config.architectures)",
        ) from None


# ---- finding the module paths ----------------------------------------------------------------


def _path_of(root: nn.Module, target: nn.Module) -> str | None:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    return None


def _linears(mod: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in mod.named_modules() if isinstance(m, nn.Linear)]


def _is_out_proj(lin: nn.Linear, arch: Arch) -> bool:
    return lin.in_features == arch.heads * arch.head_dim and lin.out_features == arch.hidden


def find_decoder(model: nn.Module, arch: Arch) -> tuple[str, str]:
    """(decoder path, layers attribute): the module owning both the input embeddings and a
    ModuleList of `arch.layers` layers. Vision towers own their own layer lists, not the
    token embeddings, so they are not mistaken for the language model."""
    emb = model.get_input_embeddings()
    found = []
    for name, mod in model.named_modules():
        children = dict(mod.named_children())
        lists = [k for k, c in children.items() if isinstance(c, nn.ModuleList) and len(c) == arch.layers]
        if lists and any(c is emb for c in children.values()):
            found.append((name, lists[0]))
    if len(found) != 1:
        raise VseamError(
            f"{type(model).__name__}: found {len(found)} modules owning the token embeddings and {arch.layers} layers "
            f"({', '.join(n for n, _ in found) or 'none'}); cannot tell which is the language model",
            hint="write modules.decoder and modules.layers by hand (print(model) lists the tree)",
        )
    return found[0]


def find_attention(layer: nn.Module, arch: Arch) -> tuple[str, str]:
    """(attention child, output projection path relative to the layer)."""
    cands = []
    for name, child in layer.named_children():
        low = name.lower()
        if ("attn" in low or "attention" in low) and "cross" not in low:
            outs = [(n, lin) for n, lin in _linears(child) if _is_out_proj(lin, arch)]
            if outs:
                cands.append((name, outs))
    if not cands:
        raise VseamError(
            f"{type(layer).__name__}: no attention child with a Linear of input heads × head_dim "
            f"({arch.heads} × {arch.head_dim}) and output {arch.hidden}",
            hint="write modules.attention and modules.o_proj by hand",
        )
    name, outs = min(cands, key=lambda c: (c[0] not in ("self_attn", "self_attention", "attention", "attn"), c[0]))
    by_name = [o for o in outs if o[0].rsplit(".", 1)[-1] in OUT_PROJ_NAMES]
    # q_proj has the same shape when heads × head_dim == hidden: prefer the known names, then
    # the last matching Linear (output projections are registered after q/k/v).
    sub = min(by_name, key=lambda o: OUT_PROJ_NAMES.index(o[0].rsplit(".", 1)[-1]))[0] if by_name else outs[-1][0]
    return name, f"{name}.{sub}"


def find_mlp(layer: nn.Module, attention: str, hidden: int | None = None) -> str:
    children = dict(layer.named_children())
    for want in MLP_NAMES:
        if want in children:
            return want
    # No MLP module (OPT's fc1/fc2 sit on the layer itself): the MLP's output is the Linear
    # child that maps back to the hidden width from a wider one.
    outs = [n for n, c in children.items() if n != attention and isinstance(c, nn.Linear)
            and hidden is not None and c.out_features == hidden and c.in_features > hidden]
    if len(outs) == 1:
        return outs[0]
    rest = [(n, sum(p.numel() for p in c.parameters())) for n, c in children.items()
            if n != attention and "norm" not in n.lower() and _linears(c)]
    if not rest:
        raise VseamError(f"{type(layer).__name__}: no MLP child found", hint="write modules.mlp by hand")
    return max(rest, key=lambda r: r[1])[0]


def find_final_norm(decoder: nn.Module, decoder_path: str) -> str:
    norms = [n for n, c in decoder.named_children() if "norm" in type(c).__name__.lower() or n in NORM_NAMES]
    if not norms:
        raise VseamError(f"{type(decoder).__name__}: no final norm child found", hint="write modules.final_norm by hand")
    best = min(norms, key=lambda n: NORM_NAMES.index(n) if n in NORM_NAMES else len(NORM_NAMES))
    return f"{decoder_path}.{best}" if decoder_path else best


def find_modules(model: nn.Module, arch: Arch) -> dict[str, str]:
    """Registry `modules:` for a model (real or on the meta device)."""
    decoder, layers_attr = find_decoder(model, arch)
    layers = model.get_submodule(decoder).get_submodule(layers_attr) if decoder else model.get_submodule(layers_attr)
    attention, o_proj = find_attention(layers[0], arch)
    head = model.get_output_embeddings()
    lm_head = _path_of(model, head) if head is not None else None
    if not lm_head:
        raise VseamError(f"{type(model).__name__}: no LM head (get_output_embeddings() is None)",
                         hint="vseam needs a model class with a language-modelling head")
    return dict(
        decoder=decoder,
        layers=f"{decoder}.{layers_attr}" if decoder else layers_attr,
        attention=attention,
        o_proj=o_proj,
        mlp=find_mlp(layers[0], attention, arch.hidden),
        final_norm=find_final_norm(model.get_submodule(decoder), decoder),
        lm_head=lm_head,
    )


def check_modules(model: nn.Module, arch: Arch, modules: dict[str, str]) -> list[str]:
    """Every problem with an entry's module paths on `model`, as `modules.X: message` lines."""
    errors: list[str] = []

    def resolve(root: nn.Module, path: str) -> nn.Module | None:
        try:
            return root.get_submodule(path)
        except AttributeError:
            return None

    def hint_for(key: str) -> str:
        try:
            return f" (found: '{find_modules(model, arch)[key]}')"
        except VseamError:
            return ""

    top = {k: resolve(model, modules[k]) for k in ("decoder", "layers", "final_norm", "lm_head")}
    for k, mod in top.items():
        if mod is None:
            errors.append(f"modules.{k}: '{modules[k]}' does not resolve on {type(model).__name__}{hint_for(k)}")
    layers = top["layers"]
    if layers is not None:
        if not isinstance(layers, nn.ModuleList) or len(layers) != arch.layers:
            n = len(layers) if isinstance(layers, nn.ModuleList) else type(layers).__name__
            errors.append(f"modules.layers: '{modules['layers']}' is not a ModuleList of {arch.layers} layers ({n}){hint_for('layers')}")
            layers = None
        elif modules["layers"].rpartition(".")[0] != modules["decoder"]:
            errors.append(f"modules.layers: must be an attribute of modules.decoder ('{modules['decoder']}.<name>')")
    if layers is not None:
        for k in ("attention", "o_proj", "mlp"):
            if resolve(layers[0], modules[k]) is None:
                errors.append(f"modules.{k}: '{modules[k]}' does not resolve on a decoder layer "
                              f"({type(layers[0]).__name__}){hint_for(k)}")
        o = resolve(layers[0], modules["o_proj"])
        if o is not None and not (isinstance(o, nn.Linear) and _is_out_proj(o, arch)):
            got = f"{o.in_features} → {o.out_features}" if isinstance(o, nn.Linear) else type(o).__name__
            errors.append(f"modules.o_proj: '{modules['o_proj']}' must be a Linear from heads × head_dim "
                          f"({arch.heads} × {arch.head_dim}) to hidden {arch.hidden}, got {got}{hint_for('o_proj')}")
    return errors


# ---- prompts ---------------------------------------------------------------------------------

_SENTINEL = "QUESTIONSENTINEL7781"


def _template_prompt(processor, bos: str | None) -> str | None:
    """What the processor's chat template produces for one image and a question, as a vseam
    prompt template (`{question}` placeholder, other braces escaped, tokenizer-added BOS removed)."""
    if not getattr(processor, "chat_template", None):
        return None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _SENTINEL}]}]
    try:
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that fails is only a missed hint; the table is used
        return None
    if not isinstance(text, str) or _SENTINEL not in text:
        return None
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return text.replace("{", "{{").replace("}", "}}").replace(_SENTINEL, "{question}")


def local_processor(source: str):
    """The checkpoint's processor from local files (tokenizer and processor configs, no weights), or None."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, local_files_only=not _allow_download(), trust_remote_code=False)
    except Exception:  # noqa: BLE001 - the processor only refines the prompt; its absence is reported
        return None


def _adds_bos(tok) -> bool:
    """Whether the tokenizer puts BOS in front by itself (then a template's own BOS would double it)."""
    try:
        ids = tok("a").input_ids
    except Exception:  # noqa: BLE001 - no usable tokenizer: keep the template as written
        return False
    return tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id


def choose_prompt(model_type: str, processor) -> tuple[str, str]:
    """(prompt template, where it came from)."""
    if processor is not None:
        tok = getattr(processor, "tokenizer", processor)
        bos = tok.bos_token if _adds_bos(tok) else None
        templ = _template_prompt(processor, bos)
        if templ:
            return templ, "the checkpoint's chat template"
    if model_type in PROMPTS:
        return PROMPTS[model_type], f"vseam's table for model_type '{model_type}', as the checkpoint has no chat template"
    from vseam_run.prompt_check import placeholder_of

    image = placeholder_of(processor) if processor is not None else None
    if image:
        return (f"{image}\n{{question}}\nAnswer:", f"a generic prompt with the processor's image placeholder '{image}', "
                "as there is no chat template and the model_type is not in vseam's table")
    return "<image>\n{question}\nAnswer:", "a generic guess, as there is no chat template, no named image token and the model_type is not in vseam's table"


def local_tokenizer(source: str):
    """The checkpoint's tokenizer alone (when the whole processor cannot be built here, e.g. it
    insists on a video processor), or None. It carries the chat template and named tokens."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=not _allow_download(), trust_remote_code=False)
    except Exception:  # noqa: BLE001 - only refines the prompt
        return None


def answer_case_of(tokenizer, model_type: str) -> tuple[str, str]:
    """(answer_case, why): from the vocabulary when it holds only one of `Yes` / `yes` (in any
    of the word-start forms of SentencePiece and byte-level BPE), else vseam's family default."""
    default = "lower" if model_type in LOWER_CASE_ANSWERS else "capitalize"
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - no vocabulary to read
        return default, f"vseam's default for model_type '{model_type}' (no tokenizer found)"

    def has(word: str) -> bool:
        return any(p + word in vocab for p in ("", "\u2581", "\u0120"))

    up, low = has("Yes"), has("yes")
    if up != low:
        case = "capitalize" if up else "lower"
        return case, f"the vocabulary holds {'Yes' if up else 'yes'} but not {'yes' if up else 'Yes'}"
    both = "both" if up else "neither of"
    return default, f"the vocabulary holds {both} Yes / yes; vseam's default for model_type '{model_type}'"


# ---- inspection and the entry file -----------------------------------------------------------


def _dtype_name(config) -> str:
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(d).replace("torch.", "") if d is not None else ""
    return name if name in ("float32", "bfloat16", "float16") else "bfloat16"


def image_token(config) -> tuple[str | None, int | None]:
    for attr in IMAGE_TOKEN_ATTRS:
        v = getattr(config, attr, None)
        if isinstance(v, int):
            return attr, v
    return None, None


def inspect(source: str, model_class: str | None = None, config=None) -> Inspection:
    """Inspect a checkpoint folder or Hub id (or an in-memory config) without reading weights."""
    if config is None:
        config = load_config(source)
    local = Path(source) if source and Path(source).is_dir() else None  # Path('') is '.'
    cls, origin = model_class_for(config, model_class)
    attr = text_config_attr(config)
    arch = arch_of(config, attr)
    model = meta_model(cls, config)
    modules = find_modules(model, arch)
    processor = local_processor(source) if source else None
    text_side = processor if processor is not None else (local_tokenizer(source) if source else None)
    prompt, prompt_origin = choose_prompt(config.model_type, text_side)
    answer_case, case_origin = answer_case_of(getattr(text_side, "tokenizer", text_side), config.model_type)
    tok_attr, tok_id = image_token(config)
    notes = []
    layer0 = model.get_submodule(modules["layers"])[0]
    if modules["mlp"] not in MLP_NAMES or not list(layer0.get_submodule(modules["mlp"]).children()):
        notes.append(f"modules.mlp '{modules['mlp']}' is a guess (no MLP module by a known name); check it")
    crossed = [i for i, l in enumerate(model.get_submodule(modules["layers"]))
               if any("cross" in n.lower() for n, _ in l.named_children())]
    if crossed:
        notes.append(f"layers {crossed[:8]} have cross-attention: the fast search paths may refuse this model")
    if arch.kv_heads != arch.heads:
        notes.append(f"grouped-query attention: {arch.kv_heads} KV heads shared by {arch.heads} query heads; "
                     "vseam ablates query heads (slices of the o_proj input)")
    if processor is None and source:
        notes.append("the processor could not be built from local files here: the prompt could not be checked against it")
    elif processor is not None:
        from vseam_run.prompt_check import prompt_problems

        probe = ModelEntry.model_validate(dict(name="probe", path=".", model_class=cls.__name__, prompt=prompt, modules=modules))
        notes += [f"CHECK {p}" for p in prompt_problems(probe, processor)]
    return Inspection(
        source=source, local_path=local, model_type=config.model_type, model_class=cls.__name__,
        model_class_origin=origin, processor_class=processor_class_name(config.model_type), text_config_attr=attr,
        image_token_attr=tok_attr, image_token_id=tok_id, arch=arch, modules=modules, prompt=prompt,
        prompt_origin=prompt_origin, answer_case=answer_case, answer_case_origin=case_origin,
        dtype=_dtype_name(config), notes=notes,
    )


def default_name(source: str) -> str:
    base = source.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in base.lower()).strip("-.") or "model"


def _q(s: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(s, ensure_ascii=False)


def entry_yaml(ins: Inspection, name: str, out_file: Path) -> str:
    """The registry entry, with comments that say where each value came from."""
    if ins.local_path is not None:
        target, here = ins.local_path.resolve(), out_file.resolve().parent
        # Relative (to the entry file) when the checkpoint sits beside or below it, so the pair moves together.
        if target.is_relative_to(here):
            location = f"path: {_q(str(target.relative_to(here)))}  # relative to this file"
        else:
            location = f"path: {_q(str(target))}"
    else:
        location = f"hf_id: {_q(ins.source)}"
    m = ins.modules
    tok = (f"image_token_attr: {ins.image_token_attr}  # = {ins.image_token_id}" if ins.image_token_attr
           else "# image_token_attr: none found on the config (image_token_index / image_token_id)")
    lines = [
        f"# Written by `vseam models new {ins.source}` on {datetime.date.today()} from its config and its",
        "# module tree built on the meta device (no weights read).",
        "# CHECK the prompt against the model card: numbers are only as good as the prompt.",
        f"name: {_q(name)}",
        f"description: {_q(f'{ins.model_class} ({ins.arch.layers} layers × {ins.arch.heads} heads), from vseam models new')}",
        location,
        f"model_class: {ins.model_class}  # from {ins.model_class_origin}",
        f"processor_class: AutoProcessor  # resolves to {ins.processor_class} for model_type '{ins.model_type}'",
        f"dtype: {ins.dtype}  # used on CUDA when a spec says dtype: auto",
        f"answer_case: {ins.answer_case}  # {ins.answer_case_origin}",
        f"# CHECK: prompt from {ins.prompt_origin}.",
        f"prompt: {_q(ins.prompt)}",
        f"text_config: {ins.text_config_attr}  # {ins.arch.describe()}",
        tok,
        "modules:",
        f"  decoder: {m['decoder']}",
        f"  layers: {m['layers']}  # {ins.arch.layers} layers",
        f"  attention: {m['attention']}  # {ins.arch.heads} heads, {ins.arch.kv_heads} KV heads",
        f"  o_proj: {m['o_proj']}  # input {ins.arch.heads} × {ins.arch.head_dim}",
        f"  mlp: {m['mlp']}",
        f"  final_norm: {m['final_norm']}",
        f"  lm_head: {m['lm_head']}",
    ]
    lines += [f"# note: {n}" for n in ins.notes]
    return "\n".join(lines) + "\n"


# ---- validate --------------------------------------------------------------------------------


@dataclass
class PathCheck:
    """Outcome of checking an entry's module paths: on what, and what is wrong."""

    checked_on: str | None  # None: schema only
    errors: list[str]


def check_entry(entry: ModelEntry) -> PathCheck:
    """Check an entry's module paths on its config's meta-device tree (local config, else its arch preset)."""
    import transformers
    from transformers import PreTrainedModel

    config = cached_config(entry)
    if config is not None:
        where = "the checkpoint's config"
    elif entry.arch is not None:
        config, where = entry.arch.build(), "the entry's arch preset, as the checkpoint's config is not on this machine"
    else:
        return PathCheck(None, [])
    cls = getattr(transformers, entry.model_class)
    if not issubclass(cls, PreTrainedModel):
        return PathCheck(where, [f"model_class: '{entry.model_class}' is not a model class (PreTrainedModel)"])
    arch = arch_of(config, entry.text_config)
    model = meta_model(cls, config)
    errors = check_modules(model, arch, entry.modules.model_dump())
    if entry.image_token_attr and getattr(config, entry.image_token_attr, None) is None:
        errors.append(f"image_token_attr: '{entry.image_token_attr}' is not set on {type(config).__name__}"
                      + (f" (found: '{image_token(config)[0]}')" if image_token(config)[0] else ""))
    return PathCheck(f"a meta-device {cls.__name__} built from {where}", errors)

