"""Cost before launch: time the head-search strategies on a registry entry's REAL architecture.

`vseam bench search --preset llava-1.5-7b` builds the entry's model from its `arch:` preset
(config kwargs shipped in the entry, so nothing is downloaded) with random weights: parameters
are created on the meta device (no memory, no init), then materialised on the target device with
`to_empty` and a cheap normal(0, 0.02) init; buffers (rotary frequencies, position ids) are the
ones the model's own constructor computed. Each strategy then runs through the public
`search_heads` on a few random images and questions, and the seconds per question, the peak
memory and a projection for N questions are reported.

The random weights make the numbers meaningless but the work identical: the same layers, heads,
image tokens and sequence lengths as the real checkpoint. `--layers N` keeps only N decoder layers
(a CPU cannot run 32); `width` (tests only) shrinks every width so the code path runs in seconds.
"""

from __future__ import annotations

import contextlib
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from vseam_run.errors import VseamError
from vseam_run.registry import ModelEntry, get_entry
from vseam_run.search import STRATEGIES, SearchItem, search_heads
from vseam_run.vlm import VLM

#: model_types whose processor vseam can build offline (a word-level tokenizer + the family's image processor).
SUPPORTED = ("llava", "llava_next", "instructblip")
WORDS = [f"w{i}" for i in range(200)]


@dataclass
class PresetBench:
    """What to measure."""

    preset: str
    layers: int | None = None  # keep this many decoder layers (None: all)
    questions: int = 4
    project: int = 1000
    device: str = "cpu"
    dtype: str = "float32"
    strategies: Sequence[str] = STRATEGIES
    batch_size: int = 4
    batch_rows: int = 32
    text_tokens: int = 16
    width: int | None = None  # tests only: every width to this, one vision layer, 4 × 4 patches
    seed: int = 0
    gpu_memory_gib: float = 80.0  # the GPUs the fit (gpu_fit.py) counts for the full model, per dtype
    fit_only: bool = False  # only the fit: nothing is built or timed


@dataclass
class StrategyCost:
    name: str
    seconds: float
    seconds_per_question: float
    peak_memory_gib: float
    projected_hours: float


@dataclass
class PresetReport:
    preset: str
    architecture: dict
    device: str
    dtype: str
    questions: int
    project: int
    memory_kind: str
    strategies: list[StrategyCost] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fit: list[dict] = field(default_factory=list)  # per dtype: GPUs of gpu_memory_gib needed (gpu_fit.GpuFit)
    fit_assumes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


# ---- the config ------------------------------------------------------------------------------


def _shrink_text(tc, layers: int | None, width: int | None) -> None:
    if layers is not None:
        if not 1 <= layers <= tc.num_hidden_layers:
            raise VseamError(f"--layers {layers}: the model has {tc.num_hidden_layers} layers")
        tc.num_hidden_layers = layers
        # Per-layer lists (sliding/full attention types) must match the new depth.
        if isinstance(getattr(tc, "layer_types", None), list):
            tc.layer_types = tc.layer_types[:layers]
    if width is not None:
        heads = tc.num_attention_heads
        if width % heads:
            raise VseamError(f"width {width} is not a multiple of the {heads} heads")
        tc.hidden_size, tc.intermediate_size = width, 2 * width
        if getattr(tc, "head_dim", None):
            tc.head_dim = width // heads


def _shrink_vision(config, width: int) -> None:
    """One thin vision layer over a 4 × 4 patch grid (tests only: this changes the image tokens too)."""
    vc = config.vision_config
    old = vc.image_size
    vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers = width, 2 * width, 1
    vc.num_attention_heads = 2
    vc.image_size = 4 * vc.patch_size
    if hasattr(vc, "projection_dim"):
        vc.projection_dim = width
    if getattr(config, "image_seq_length", None):
        config.image_seq_length = 16
    if getattr(config, "image_grid_pinpoints", None):
        config.image_grid_pinpoints = [[h // old * vc.image_size, w // old * vc.image_size] for h, w in config.image_grid_pinpoints]


def preset_config(entry: ModelEntry, layers: int | None = None, width: int | None = None):
    """The entry's real config from its arch preset, optionally shallower (layers) or thinner (width)."""
    if entry.arch is None:
        raise VseamError(
            f"model '{entry.name}' has no arch: preset, so its architecture cannot be built without the checkpoint",
            hint="add an `arch:` block (model_type + config kwargs) to the entry; see registry/llava-1.5-7b.yaml",
        )
    config = entry.arch.build()
    if config.model_type not in SUPPORTED:
        raise VseamError(
            f"bench --preset builds inputs for model_type {', '.join(SUPPORTED)}; '{entry.name}' is "
            f"'{config.model_type}', whose processor needs tokenizer files vseam cannot make offline yet",
            hint="time it on the real checkpoint instead: a spec with data.limit small and search.strategy set",
        )
    _shrink_text(config.get_text_config(), layers, width)
    if width is not None:
        _shrink_vision(config, width)
        if config.model_type == "instructblip":
            q = config.qformer_config
            q.encoder_hidden_size, q.num_hidden_layers = width, 1
    return config


# ---- the model -------------------------------------------------------------------------------


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device while buffers are computed for real.

    A plain `with torch.device("meta")` would also leave the rotary frequencies and position-id
    buffers as meta tensors, and `to_empty` would then fill them with garbage.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


@torch.no_grad()
def materialize(model_cls: type, config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A random-weight model on `device`: built with meta parameters, then `to_empty` + a cheap init."""
    with _parameters_on_meta():
        model = model_cls._from_config(config, dtype=dtype)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    for name, b in buffers.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = b.to(device)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 0.02)
        elif name.endswith("weight"):
            p.fill_(1.0)  # norm scales
        else:
            p.normal_(0.0, 0.02)  # biases and 1-D embeddings (CLIP's class embedding)
    return model.eval().requires_grad_(False)


# ---- the processor ---------------------------------------------------------------------------


def bench_processor(config):
    """The family's processor with an offline word-level tokenizer; sets the config's token ids to it."""
    import transformers

    from vseam_run.zoo.build import build_tokenizer

    tok = build_tokenizer(WORDS)
    image_id = tok.convert_tokens_to_ids("<image>")
    config.get_text_config().pad_token_id = tok.pad_token_id
    t = config.model_type
    if t in ("llava", "llava_next"):
        v = config.vision_config
        config.image_token_index = image_id
        kw = dict(size={"shortest_edge": v.image_size}, crop_size={"height": v.image_size, "width": v.image_size})
        if t == "llava":
            ip = transformers.CLIPImageProcessor(**kw)
            proc_cls = transformers.LlavaProcessor
        else:
            ip = transformers.LlavaNextImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints, **kw)
            proc_cls = transformers.LlavaNextProcessor
        return proc_cls(image_processor=ip, tokenizer=tok, patch_size=v.patch_size, image_token="<image>",
                        vision_feature_select_strategy=config.vision_feature_select_strategy,
                        num_additional_image_tokens=1)
    # instructblip
    config.image_token_index = image_id
    size = config.vision_config.image_size
    return transformers.InstructBlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": size, "width": size}),
        tokenizer=tok, qformer_tokenizer=build_tokenizer(WORDS), num_query_tokens=config.num_query_tokens,
    )


def bench_entry(entry: ModelEntry) -> ModelEntry:
    """The entry with a prompt the word-level tokenizer reads (the real chat markup would be <unk>s)."""
    image = "" if entry.arch and entry.arch.model_type == "instructblip" else "<image> "
    return entry.model_copy(update={"prompt": image + "{question} answer:", "path": None, "hf_id": entry.hf_id or "bench"})


# ---- the run ---------------------------------------------------------------------------------


def _items(vlm: VLM, cfg: PresetBench, image_size: int) -> list[SearchItem]:
    """Random images and questions; gold = the model's own top token for even questions (answered
    right), a random token for odd ones (answered wrong), so both kinds of head are searched."""
    rng = random.Random(cfg.seed)
    nprng = np.random.default_rng(cfg.seed)
    items = []
    for i in range(cfg.questions):
        img = Image.fromarray(nprng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
        q = " ".join(rng.choice(WORDS) for _ in range(cfg.text_tokens))
        items.append(SearchItem(str(i), img, q, 0))
    vocab = len(vlm.tokenizer)
    for it in items:
        inputs = _inputs(vlm, [it])
        with torch.no_grad():
            top = int(vlm.model(**inputs).logits[0, -1].argmax())
        it.gold_id = top if int(it.qid) % 2 == 0 else (top + 1 + rng.randrange(vocab - 1)) % vocab
    return items


def _inputs(vlm: VLM, items: Sequence[SearchItem]) -> dict:
    batch = vlm.processor(images=[it.image for it in items], text=[vlm.entry.prompt.format(question=it.question) for it in items],
                          return_tensors="pt", padding=True)
    return {k: (v.to(vlm.device, vlm.dtype) if v.is_floating_point() else v.to(vlm.device)) for k, v in batch.items()}


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**30 if sys.platform == "darwin" else 2**20)


def run_preset_bench(cfg: PresetBench) -> PresetReport:
    """Build the preset's model on cfg.device and time each strategy on cfg.questions questions."""
    import transformers

    entry = get_entry(cfg.preset)
    for s in cfg.strategies:
        if s not in STRATEGIES:
            raise VseamError(f"unknown strategy '{s}'; choose from {', '.join(STRATEGIES)}")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VseamError("--device cuda: no CUDA GPU is available on this machine", hint="use --device cpu with --layers 1")
    dtype = getattr(torch, cfg.dtype)
    from vseam_run.gpu_fit import preset_fits

    fits, assumes = preset_fits(entry, cfg.gpu_memory_gib, cfg.batch_rows, cfg.text_tokens)
    if cfg.fit_only:
        tc = preset_config(entry).get_text_config()
        arch = dict(layers=tc.num_hidden_layers, heads=tc.num_attention_heads, hidden=tc.hidden_size)
        return PresetReport(cfg.preset, arch, str(device), cfg.dtype, 0, cfg.project, "not measured (--fit-only)",
                            fit=[f.to_json() for f in fits], fit_assumes=assumes)
    config = preset_config(entry, cfg.layers, cfg.width)
    processor = bench_processor(config)
    model = materialize(getattr(transformers, entry.model_class), config, device, dtype, cfg.seed)
    vlm = VLM(bench_entry(entry), model, processor, device, dtype)
    size = config.vision_config.image_size
    items = _items(vlm, cfg, size)
    ids = _inputs(vlm, items[:1])["input_ids"][0]
    tc = config.get_text_config()
    arch = dict(
        layers=tc.num_hidden_layers, heads=vlm.num_heads, kv_heads=getattr(tc, "num_key_value_heads", None) or vlm.num_heads,
        head_dim=vlm.head_dim, hidden=tc.hidden_size, vocab=tc.vocab_size, image_size=size,
        image_tokens=int((ids == config.image_token_index).sum()), sequence_tokens=int(ids.numel()),
        parameters_billion=round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
    )
    report = PresetReport(cfg.preset, arch, str(device), cfg.dtype, cfg.questions, cfg.project,
                          "torch.cuda.max_memory_allocated per strategy" if device.type == "cuda"
                          else "peak RSS of the whole process so far (cannot be reset per strategy)",
                          fit=[f.to_json() for f in fits], fit_assumes=assumes)
    if cfg.layers is not None or cfg.width is not None:
        report.notes.append(f"shrunk: layers={cfg.layers}, width={cfg.width}; not the full model's cost")
    report.notes.append("projection = seconds per question × N; attribution's per-layer offsets cost a fixed "
                        "8 exact rows per layer, so its projection from few questions is an upper bound")
    for s in cfg.strategies:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        search_heads(vlm, items, strategy=s, scoring="subset", ablation="mean", top_k=10,
                     batch_size=cfg.batch_size, batch_rows=cfg.batch_rows)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sec = time.perf_counter() - t0
        per_q = sec / cfg.questions
        report.strategies.append(StrategyCost(s, round(sec, 3), round(per_q, 4), round(_peak_gib(device), 3),
                                              round(per_q * cfg.project / 3600, 3)))
    return report
