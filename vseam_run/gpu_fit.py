"""How many GPUs of a given memory a model needs, per dtype, before launch.

The model is built from its config on the meta device (no memory, nothing downloaded) and
accelerate's own planner (`infer_auto_device_map`, what `device_map: auto` runs at load) packs
its modules, whole decoder layers never split, onto n GPUs of `gpu_gib` each, less a reserve per
GPU for the search's activations and the CUDA context; n grows until nothing is left for the CPU
or disk. Quantized weights count their nn.Linear weights at 1 byte (int8) or ½ byte plus one
float32 scale per 64 (nf4); the LM head stays in 16 bits, as transformers keeps it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

#: dtype label → (base dtype for sizes, byte size of quantized Linear weights or None)
DTYPES = {"float32": (torch.float32, None), "bfloat16": (torch.bfloat16, None),
          "int8": (torch.float16, 1.0), "nf4": (torch.float16, 0.5 + 4 / 64)}
MAX_GPUS = 64


@dataclass
class GpuFit:
    dtype: str
    weights_gib: float  # all weights at this dtype
    reserve_gib: float  # kept free on every GPU (activations of the search, CUDA context)
    gpus: int | None  # None: more than MAX_GPUS, or a single module larger than one GPU
    layers_per_gpu: list[int]  # decoder layers on each GPU, in order

    def to_json(self) -> dict:
        return asdict(self)


def meta_model(model_cls: type, config) -> nn.Module:
    with torch.device("meta"):
        return model_cls._from_config(config)


def activation_reserve_gib(config, dtype: torch.dtype, rows: int, tokens: int) -> float:
    """One decoder layer's working set for `rows` replayed rows of `tokens` tokens (hidden states in
    and out, q/k/v/o, the MLP's intermediate pair, one heads × T × T score tensor), twice for the
    autograd-free temporaries, plus 1 GiB of CUDA context and allocator slack. An estimate: the
    bench on a real GPU measures the peak."""
    tc = config.get_text_config()
    h, inter, heads = tc.hidden_size, getattr(tc, "intermediate_size", 4 * tc.hidden_size), tc.num_attention_heads
    bytes_ = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 2
    per_row = tokens * (6 * h + 2 * inter + heads * tokens)
    return 2 * rows * per_row * bytes_ / 2**30 + 1.0


def _special_dtypes(model: nn.Module, quant_bytes: float | None) -> dict:
    if quant_bytes is None:
        return {}
    from accelerate.utils import CustomDtype

    qdtype = torch.int8 if quant_bytes == 1.0 else CustomDtype.INT4
    head = model.get_output_embeddings()
    return {f"{name}.weight": qdtype for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


def fit(model_cls: type, config, layers_path: str, gpu_gib: float, *, rows: int = 32, tokens: int = 640,
        dtypes: tuple[str, ...] = tuple(DTYPES)) -> list[GpuFit]:
    """Per dtype: the fewest GPUs of `gpu_gib` GiB that hold the model (see the module docstring)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    model = meta_model(model_cls, config)
    n_layers = len(model.get_submodule(layers_path))
    out = []
    for label in dtypes:
        base, qbytes = DTYPES[label]
        special = _special_dtypes(model, qbytes)
        sizes = compute_module_sizes(model, dtype=base, special_dtypes=special or None)
        weights = sizes[""]
        if qbytes is not None and qbytes != 1.0:  # the nf4 scales (one float32 per 64 weights)
            weights += sum(model.get_parameter(k).numel() for k in special) * 4 / 64
        reserve = activation_reserve_gib(config, base, rows, tokens)
        cap = int((gpu_gib - reserve) * 2**30)
        gpus, per = None, []
        if cap > 0:
            for n in range(1, MAX_GPUS + 1):
                if n * cap < weights:
                    continue
                dm = infer_auto_device_map(model, max_memory={**{i: cap for i in range(n)}, "cpu": 0}, dtype=base,
                                           special_dtypes=special or None,
                                           no_split_module_classes=getattr(model, "_no_split_modules", None) or [])
                if all(isinstance(d, int) for d in dm.values()):
                    gpus = n
                    per = [_layers_on(dm, layers_path, n_layers, i) for i in range(n)]
                    break
        out.append(GpuFit(label, round(weights / 2**30, 2), round(reserve, 2), gpus, per))
    return out


def _layers_on(dm: dict, layers_path: str, n_layers: int, gpu: int) -> int:
    count = 0
    for i in range(n_layers):
        name = f"{layers_path}.{i}"
        keys = [k for k in dm if k == "" or name == k or name.startswith(k + ".")]
        if keys and dm[max(keys, key=len)] == gpu:
            count += 1
    return count


def image_tokens(config) -> int:
    """Image tokens per image, from the config (LLaVA: the vision grid; InstructBLIP: its queries)."""
    if getattr(config, "num_query_tokens", None):
        return int(config.num_query_tokens)
    if getattr(config, "image_seq_length", None):
        return int(config.image_seq_length)
    vc = getattr(config, "vision_config", None)
    if vc is not None and getattr(vc, "image_size", None) and getattr(vc, "patch_size", None):
        return (vc.image_size // vc.patch_size) ** 2
    return 576


def preset_fits(entry, gpu_gib: float, rows: int, text_tokens: int) -> tuple[list[GpuFit], dict]:
    """The fit of the entry's full architecture (its arch: preset), and the sizes it was made for."""
    import logging

    import transformers

    from vseam_run.bench_preset import preset_config

    config = preset_config(entry)
    tokens = image_tokens(config) + text_tokens + 16  # + the prompt's markup
    log = logging.getLogger("accelerate.utils.modeling")
    level = log.level
    log.setLevel(logging.ERROR)  # "Device 3 is not available": the GPUs are hypothetical here
    try:
        fits = fit(getattr(transformers, entry.model_class), config, entry.modules.layers, gpu_gib, rows=rows, tokens=tokens)
    finally:
        log.setLevel(level)
    return fits, {"gpu_memory_gib": gpu_gib, "rows": rows, "tokens": tokens}
