"""Where a model's weights live: one device, a device map over several (accelerate), or
quantized weights (bitsandbytes).

A registry entry or a spec may say `device_map:` (`auto`, `balanced`, `balanced_low_0`,
`sequential`, or an explicit map of module names to devices: `0`, `cuda:1`, `cpu`, `disk`)
and `quantization: {bits: 4|8}`; the spec's value wins over the entry's. transformers hands
both to accelerate / bitsandbytes at `from_pretrained`. accelerate wraps every placed module
in a hook that moves its inputs to the module's device (and, with `disk`, loads its weights
for the call), so the replay, which calls the decoder layers themselves, moves the hidden
state between devices exactly as the model's own forward does. What vseam keeps between
calls (hidden states, logits, index tensors) lives on the *input device*: the device of the
input embeddings, where the processor's tensors go.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import tempfile
from typing import Any, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field

from vseam_run.errors import VseamError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE_RE = re.compile(r"cpu|disk|cuda(:\d+)?|\d+")


class Quantization(BaseModel):
    """Quantized weights through bitsandbytes (LLM.int8 for 8 bits, NF4/FP4 for 4 bits)."""

    model_config = ConfigDict(extra="forbid")

    bits: Literal[4, 8] = Field(description="4 (NF4 / FP4 weights) or 8 (LLM.int8 weights).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit only: the 4-bit data type.")
    double_quant: bool = Field(False, description="4-bit only: quantize the quantization constants too.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="4-bit only: dtype of the matmuls (auto: the run's dtype)."
    )
    int8_threshold: float = Field(
        6.0, ge=0, description="8-bit only: LLM.int8's outlier threshold (bitsandbytes' default 6). Outlier columns are "
        "chosen over the whole batch, so a question's numbers depend on the others in its batch (up to 1.4e-2 in "
        "probability on the test model); 0 turns the decomposition off and makes every row its batch-of-one self.",
    )

    def config(self, dtype: torch.dtype):
        """The transformers BitsAndBytesConfig for a run in `dtype`."""
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.int8_threshold)
        compute = dtype if self.compute_dtype == "auto" else getattr(torch, self.compute_dtype)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant, bnb_4bit_compute_dtype=compute)

    def label(self) -> str:
        return f"int8 (outlier threshold {self.int8_threshold:g})" if self.bits == 8 else f"{self.quant_type}{'+dq' if self.double_quant else ''}"


DeviceMap = Union[Literal["auto", "balanced", "balanced_low_0", "sequential"], dict[str, Union[int, str]]]


def check_device_map(v: Any) -> Any:
    """An explicit map's devices are GPU indices, cuda[:N], cpu or disk (accelerate's forms)."""
    if isinstance(v, dict):
        if not v:
            raise ValueError("an explicit device_map needs at least one module")
        bad = [f"{k}: {d!r}" for k, d in v.items()
               if isinstance(d, bool) or not (isinstance(d, int) and d >= 0 or isinstance(d, str) and _DEVICE_RE.fullmatch(d))]
        if bad:
            raise ValueError(f"devices must be a GPU index (0, 1, ...), cuda:N, cpu or disk; got {', '.join(bad)}")
    return v


def with_spec(entry, spec):
    """The entry with the spec's `device_map` / `quantization` over its own (a copy; the run
    records this entry, so its hash binds results to the quantization that produced them)."""
    update = {k: getattr(spec, k) for k in ("device_map", "quantization") if getattr(spec, k, None) is not None}
    if not update:
        return entry
    merged = entry.model_copy(update=update)
    merged._source = entry._source
    return merged


def is_placed(entry) -> bool:
    return getattr(entry, "device_map", None) is not None or getattr(entry, "quantization", None) is not None


def _gpu_indices(device_map: Any) -> list[int]:
    if not isinstance(device_map, dict):
        return []
    out = []
    for d in device_map.values():
        if isinstance(d, int):
            out.append(d)
        elif isinstance(d, str) and d.startswith("cuda"):
            out.append(int(d.split(":")[1]) if ":" in d else 0)
    return out


def bitsandbytes_problem() -> str | None:
    """Why quantized weights cannot load here, or None."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (`pip install bitsandbytes`)"
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None
    major, minor = (int(x) for x in re.findall(r"\d+", version)[:2])
    if not torch.cuda.is_available() and (major, minor) < (0, 48):
        return f"bitsandbytes {version} has no CPU backend (0.48 or later runs 4- and 8-bit weights on the CPU)"
    return None


def placement_problems(spec, entry) -> list[str]:
    """What stops the placement from loading here, found before any weight is read."""
    entry = with_spec(entry, spec)
    problems: list[str] = []
    where = "device_map" if getattr(spec, "device_map", None) is not None else f"model ({entry.name}): device_map"
    dm = entry.device_map
    if isinstance(dm, dict):
        from vseam_run.vlm import weights_source

        try:
            problems += [p if p.startswith("model") else f"{where}: {p.removeprefix('device_map: ')}"
                         for p in explicit_map_problems(entry, weights_source(entry))]
        except VseamError:
            pass  # missing weights are reported by the weights check
    if dm is not None:
        if importlib.util.find_spec("accelerate") is None:
            problems.append(f"{where}: needs accelerate (`pip install accelerate`)")
        gpus = _gpu_indices(dm)
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = sorted({g for g in gpus if g >= have})
        if missing:
            problems.append(f"{where}: the map places modules on GPU {', '.join(map(str, missing))}, but this machine has "
                            f"{have} GPU(s); use indices 0..{have - 1}" if have else
                            f"{where}: the map places modules on GPU {', '.join(map(str, missing))}, but no CUDA GPU is "
                            "available here; map modules to cpu / disk, or run on a machine with GPUs")
        if spec.device == "cpu" and gpus:
            problems.append(f"{where}: device: cpu, but the map places modules on GPUs; drop one of the two")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            problems.append(f"{where}: a model split over devices runs in one process; launch without torchrun "
                            "(or drop device_map and let each rank hold a whole copy)")
    q = entry.quantization
    if q is not None:
        where_q = "quantization" if getattr(spec, "quantization", None) is not None else f"model ({entry.name}): quantization"
        why = bitsandbytes_problem()
        if why:
            problems.append(f"{where_q}: {why}")
    return problems


def explicit_map_problems(entry, source: str) -> list[str]:
    """An explicit map must place every weight and name only modules that exist; checked on the
    model built from its config on the meta device (no weights read). accelerate would otherwise
    leave an unplaced module's weights behind (or fail deep inside the load)."""
    import transformers

    dm = entry.device_map
    if not isinstance(dm, dict):
        return []
    try:
        config = transformers.AutoConfig.from_pretrained(
            source, trust_remote_code=entry.trust_remote_code, revision=entry.revision,
            local_files_only=os.environ.get("VSEAM_ALLOW_DOWNLOAD") != "1")
        with torch.device("meta"):
            model = getattr(transformers, entry.model_class)._from_config(config)
    except Exception as e:  # noqa: BLE001 - the load itself reports a broken checkpoint
        return [f"model ({entry.name}): device_map cannot be checked: {type(e).__name__}: {str(e).splitlines()[0]}"]
    modules = {n for n, _ in model.named_modules()}

    def covered(name: str) -> bool:
        return "" in dm or any(name == k or name.startswith(k + ".") for k in dm)

    problems = []
    unknown = [k for k in dm if k and k not in modules]
    if unknown:
        problems.append(f"device_map: {', '.join(map(repr, unknown[:5]))} {'is not a module' if len(unknown) == 1 else 'are not modules'} "
                        f"of {entry.model_class}")
    missing: list[str] = []
    for name, _ in list(model.named_parameters()) + list(model.named_buffers()):
        if not covered(name):
            owner = name.rpartition(".")[0]
            top = next((m for m in sorted(modules, key=len) if m and (owner == m or owner.startswith(m + "."))
                        and not any(k.startswith(m + ".") or k == m for k in dm)), owner)
            if top not in missing:
                missing.append(top)
    if missing:
        problems.append(f"device_map places no device for {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''} "
                        f"of {entry.model_class}; add them to the map (or use device_map: auto)")
    return problems


def load_kwargs(entry, device: torch.device, dtype: torch.dtype, source: str | None = None) -> dict[str, Any]:
    """Extra from_pretrained arguments for the entry's placement ({} for a plain one-device load)."""
    if not is_placed(entry):
        return {}
    if source is not None:
        problems = explicit_map_problems(entry, source)
        if problems:
            raise VseamError(f"model '{entry.name}': " + "; ".join(problems),
                             hint="print(model) lists the modules; the map's keys are their dotted names")
    kw: dict[str, Any] = {}
    dm = entry.device_map
    if dm is None:  # quantized weights on the one device of the run, loaded straight there
        dm = {"": device.index if device.type == "cuda" and device.index is not None else
              (0 if device.type == "cuda" else str(device))}
    elif isinstance(dm, dict):
        dm = {k: _accelerate_device(v) for k, v in dm.items()}
    elif device.type == "cpu":  # `auto` on a CPU run: CPU memory, then disk
        kw["max_memory"] = {"cpu": _cpu_memory()}
    kw["device_map"] = dm
    if _wants_disk(entry.device_map):
        kw["offload_folder"] = os.environ.get("VSEAM_OFFLOAD_DIR") or tempfile.mkdtemp(prefix="vseam-offload-")
    if entry.quantization is not None:
        kw["quantization_config"] = entry.quantization.config(dtype)
        if entry.quantization.bits == 8 and dtype != torch.float16:
            _quiet_int8_cast()
    return kw


class _Int8CastFilter:
    """bitsandbytes logs 'MatMul8bitLt: inputs will be cast ... to float16' on every 8-bit matmul of a
    non-float16 run (thousands of lines in a search); the run log says it once (placement_report)."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast() -> None:
    import logging

    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Int8CastFilter) for f in log.filters):
        log.addFilter(_Int8CastFilter())


def _accelerate_device(v: int | str) -> int | str:
    if isinstance(v, str) and v.isdigit():
        return int(v)
    if isinstance(v, str) and v.startswith("cuda"):
        return int(v.split(":")[1]) if ":" in v else 0
    return v


def _wants_disk(dm: Any) -> bool:
    return dm is not None and (not isinstance(dm, dict) or "disk" in dm.values())


def _cpu_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.9)
    except ImportError:
        return 8 << 30


def input_device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where the processor's tensors go and vseam keeps its own: the input embeddings' device
    (accelerate's execution device for that module; `disk` and `cpu` run on the CPU)."""
    dm = getattr(model, "hf_device_map", None)
    if not dm:
        return fallback
    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is None:
        names = {m: n for n, m in model.named_modules()}
        name = names.get(emb, "")
        keys = [k for k in dm if k == "" or name == k or name.startswith(k + ".")]
        dev = dm[max(keys, key=len)] if keys else next(iter(dm.values()))
    if isinstance(dev, int):
        return torch.device("cuda", dev)
    if dev in ("disk", "meta"):
        return torch.device("cpu")
    return torch.device(dev)


def describe(model: torch.nn.Module, layers_path: str) -> str | None:
    """One line: which decoder layers run where (None for a model on one device)."""
    dm = getattr(model, "hf_device_map", None)
    if not dm or len(set(map(str, dm.values()))) < 2:
        return None
    layers = model.get_submodule(layers_path)
    runs: list[tuple[str, int, int]] = []
    for i in range(len(layers)):
        name = f"{layers_path}.{i}"
        keys = [k for k in dm if k == "" or name == k or name.startswith(k + ".") or k.startswith(name + ".")]
        dev = str(dm[max(keys, key=len)]) if keys else "?"
        dev = f"cuda:{dev}" if dev.isdigit() else dev
        if runs and runs[-1][0] == dev:
            runs[-1] = (dev, runs[-1][1], i)
        else:
            runs.append((dev, i, i))
    return ", ".join(f"layers {a}-{b} → {d}" if a != b else f"layer {a} → {d}" for d, a, b in runs)


def check_tolerance(entry, dtype: torch.dtype) -> float:
    """The self-check's tolerance for this placement. A device map moves tensors, it changes no
    number, so the dtype's tolerance holds. Quantized weights compute the same way in the replay
    and in the model's own forward, so the dtype's tolerance holds too (4-bit: the compute
    dtype's), except for 8-bit weights with outlier decomposition: their outlier columns are
    chosen over the whole batch, so the model's own numbers for a question move with the rest
    of its batch (1.4e-2 measured on the test model, and recorded per run as
    check.model_batch_diff); the check then allows 5e-2."""
    base = 1e-4 if dtype == torch.float32 else 2e-2
    q = getattr(entry, "quantization", None)
    if q is None:
        return base
    if q.bits == 8:
        return 5e-2 if q.int8_threshold > 0 else base
    compute = dtype if q.compute_dtype == "auto" else getattr(torch, q.compute_dtype)
    return 1e-4 if compute == torch.float32 else 2e-2


def load_error(entry, e: Exception) -> VseamError:
    """A failed placed load, as one message naming the entry's placement keys."""
    what = []
    if entry.device_map is not None:
        what.append(f"device_map {entry.device_map!r}")
    if entry.quantization is not None:
        what.append(f"quantization {entry.quantization.model_dump()}")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return VseamError(
        f"model '{entry.name}': loading with {' and '.join(what)} failed: {type(e).__name__}: {first}",
        hint="an explicit device_map must name every top-level module of the model (print(model) lists them; "
        "`auto` places them for you); quantization needs bitsandbytes",
    )


def placement_report(vlm, log) -> dict[str, float]:
    """Log where the weights went and return the run's metrics about it ({} for a plain load):
    `model.devices` (distinct devices holding decoder layers, disk counted) and `model.quant_bits`."""
    entry, out = vlm.entry, {}
    if entry.device_map is not None:
        where = describe(vlm.model, entry.modules.layers) or f"one device ({vlm.device})"
        log(f"  device_map {entry.device_map if isinstance(entry.device_map, str) else 'explicit'}: {where}; inputs on {vlm.device}")
        dm = getattr(vlm.model, "hf_device_map", {}) or {}
        out["model.devices"] = float(len({str(d) for d in dm.values()}) or 1)
    if entry.quantization is not None:
        cast = ("; its matmuls cast the run's inputs to float16 (LLM.int8)"
                if entry.quantization.bits == 8 and vlm.dtype != torch.float16 else "")
        log(f"  quantized weights: {entry.quantization.label()} (bitsandbytes); self-check tolerance {vlm.check_tolerance():g}{cast}")
        out["model.quant_bits"] = float(entry.quantization.bits)
    return out
