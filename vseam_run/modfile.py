"""A run's modulation as a file, and applied to a plain transformers model.

``vseam export RUN --modulation -o mod.safetensors`` writes the run's intervention (the object
the modulation stage chose, ``vseam_run.modulation``: for the scale policies the ``[L, H]``
scales, or ``[L, 2, H]`` per position group for ``learned`` with ``positions: last_vs_rest``) as
safetensors, with in its header:

* ``vseam.intervention`` — the intervention's metadata, ``kind`` included (``scales`` today;
  other kinds — steering vectors, ablations — are files of the same format with another kind);
* ``vseam.model`` — the registry entry's name, id and hash, the module paths the hooks go on
  (decoder layers, ``o_proj`` inside a layer), the language model's shape, the model's
  *fingerprint* and a probe of its weights;
* ``vseam.run`` — the run id, spec name and how the modulation was chosen.

``apply_modulation(model, "mod.safetensors")`` is a context manager for a model the user loaded
with transformers themselves: inside the block the hooks are on (every forward pass, any
``model.generate`` call), outside they are gone. It refuses a file made for another model,
naming both: the fingerprint (class, layers, heads, head width, hidden size, vocabulary) must be
equal and the weight probe (256 evenly spaced weights of the first layer's ``o_proj``) must agree
to half-precision tolerance, so loading the same checkpoint in float16 or bfloat16 passes while a
different checkpoint of the same architecture does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from vseam_run.errors import VseamError
from vseam_run.vlm import get_module

__all__ = ["FORMAT_VERSION", "apply_modulation", "describe_file", "export_modulation", "model_info", "read_modulation"]

FORMAT_VERSION = "1"
PROBE_SIZE = 256
PROBE_RTOL, PROBE_ATOL = 2e-2, 1e-3  # bfloat16 keeps ~3 significant digits


def _text_config(model: nn.Module, attr: str | None):
    return (getattr(model.config, attr, None) if attr else None) or getattr(model.config, "text_config", None) or model.config


def _probe(weight: torch.Tensor) -> list[float]:
    flat = weight.detach().reshape(-1).float().cpu()
    step = max(1, flat.numel() // PROBE_SIZE)
    return flat[::step][:PROBE_SIZE].tolist()


def model_info(model: nn.Module, layers_path: str, o_proj_path: str, text_config_attr: str | None = None,
               name: str | None = None) -> dict[str, Any]:
    """What identifies a loaded model for a modulation file: shape, fingerprint, weight probe, hook sites."""
    cfg = _text_config(model, text_config_attr)
    heads = int(cfg.num_attention_heads)
    shape = {
        "model_class": type(model).__name__,
        "num_layers": int(cfg.num_hidden_layers),
        "num_heads": heads,
        "head_dim": int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
        "hidden_size": int(cfg.hidden_size),
        "vocab_size": int(getattr(cfg, "vocab_size", 0) or 0),
    }
    try:
        layers = get_module(model, layers_path)
        weight = get_module(layers[0], o_proj_path).weight
    except (AttributeError, IndexError, TypeError) as e:
        raise VseamError(f"{type(model).__name__} has no '{layers_path}.0.{o_proj_path}' ({e})",
                         hint="the modulation file's module paths do not resolve on this model") from None
    fingerprint = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    return {"name": name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
            **shape, "fingerprint": fingerprint, "layers": layers_path, "o_proj": o_proj_path,
            "text_config": text_config_attr, "weight_probe": _probe(weight)}


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


def _run_intervention(store, run_id: str):
    from vseam_run.ledger import LEDGER_STAGE
    from vseam_run.modulation import ScaleIntervention, state_from_saved

    done = store.load_checkpoints(run_id, LEDGER_STAGE).get("modulation")
    if done is not None and done.get("outputs") is not None:
        return state_from_saved(done["outputs"])
    doc = store.get_document(run_id, "modulation")
    if doc and doc.get("scales") is not None:  # runs recorded before the ledger kept interventions
        return ScaleIntervention(torch.tensor(doc["scales"], dtype=torch.float32))
    raise VseamError(f"run {run_id} has no modulation to export (its modulation stage did not finish)",
                     hint="export a run whose spec has `modulation:` and that got past the modulation stage")


def _run_entry(record):
    """The run's registry entry, as the run resolved it (its hash must match the recorded one)."""
    from vseam_run import registry
    from vseam_run.pipeline import validate_stored_spec

    spec = validate_stored_spec(record.spec_yaml, record.id)
    try:
        entry = registry.get_entry(spec.model)
    except VseamError as e:
        raise VseamError(f"run {record.id}: its model '{spec.model}' cannot be found from here ({e.message})",
                         hint="run the export from the folder the run was started in") from None
    if record.model_hash and entry.content_hash() != record.model_hash:
        raise VseamError(f"run {record.id}: the registry entry '{spec.model}' changed since the run "
                         f"(hash {entry.content_hash()[:12]} vs recorded {record.model_hash[:12]})",
                         hint="the exported file must describe the model the run measured")
    return entry


def export_modulation(store, run_ref: str, out: Path) -> Path:
    """Write run `run_ref`'s modulation to `out` (see the module docstring)."""
    from vseam_run.modulation import save_file
    from vseam_run.vlm import VLM

    run_id = store.resolve(run_ref)
    record = store.get_run(run_id)
    iv = _run_intervention(store, run_id)
    entry = _run_entry(record)
    # The weight probe is read from the checkpoint itself, so the file is bound to those weights.
    vlm = VLM.load(entry, torch.device("cpu"), _load_dtype(entry))
    info = model_info(vlm.model, entry.modules.layers, entry.modules.o_proj, entry.text_config, name=entry.name)
    info.update({"entry": entry.name, "hf_id": entry.hf_id, "entry_hash": entry.content_hash()})
    doc = store.get_document(run_id, "modulation") or {}
    run_meta = {"run_id": run_id, "spec_name": record.name, "format": FORMAT_VERSION,
                **{k: v for k, v in doc.items() if k != "scales"}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_file(iv, out, {"vseam.model": info, "vseam.run": run_meta, "vseam.format": FORMAT_VERSION})


def _load_dtype(entry) -> torch.dtype:
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(str(entry.dtype), torch.float32)


# ---------------------------------------------------------------------------
# Reading and applying
# ---------------------------------------------------------------------------


def read_modulation(path: str | Path):
    """(intervention, model info, run info) of a modulation file; a clear error for anything else."""
    from vseam_run.modulation import load_file

    path = Path(path)
    if not path.is_file():
        raise VseamError(f"{path}: no such modulation file", hint="write one with `vseam export RUN --modulation -o FILE`")
    try:
        iv, header = load_file(path)
        info = json.loads(header["vseam.model"])
        run = json.loads(header.get("vseam.run", "{}"))
    except Exception as e:  # safetensors raises its own error type for a damaged header
        raise VseamError(f"{path}: not a vseam modulation file ({e})",
                         hint="write one with `vseam export RUN --modulation -o FILE`") from None
    return iv, info, run


def describe_file(info: dict[str, Any]) -> str:
    return (f"'{info.get('name')}' ({info.get('model_class')}, {info.get('num_layers')} layers × {info.get('num_heads')} heads, "
            f"fingerprint {info.get('fingerprint')})")


def _check_model(path: Path, info: dict[str, Any], mine: dict[str, Any]) -> None:
    made_for, this = describe_file(info), describe_file(mine)
    if mine["fingerprint"] != info.get("fingerprint"):
        raise VseamError(f"{path} was made for model {made_for}; this model is {this}",
                         hint="apply a modulation to the model its run measured")
    a, b = torch.tensor(info.get("weight_probe", [])), torch.tensor(mine["weight_probe"])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=PROBE_RTOL, atol=PROBE_ATOL):
        diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
        raise VseamError(f"{path} was made for model {made_for}; this model {this} has the same shape but other "
                         f"weights (first o_proj differs by up to {diff:.3g})",
                         hint="apply a modulation to the checkpoint its run measured")


class _Sites:
    """What an intervention's hooks need of a model: the layers' o_proj modules and the head count."""

    def __init__(self, model: nn.Module, info: dict[str, Any]) -> None:
        self.model = model
        self.num_heads = int(info["num_heads"])
        self.num_layers = int(info["num_layers"])
        self._layers = get_module(model, info["layers"])
        self._o_proj = info["o_proj"]

    def o_proj(self, layer: int) -> nn.Module:
        return get_module(self._layers[layer], self._o_proj)


@contextlib.contextmanager
def apply_modulation(model: nn.Module, path: str | Path) -> Iterator[nn.Module]:
    """Apply the modulation in `path` to `model` (a plain transformers model) while the block runs.

    Example::

        from transformers import LlavaForConditionalGeneration
        import vseam_run
        model = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")
        with vseam_run.apply_modulation(model, "mod.safetensors"):
            out = model.generate(**inputs, max_new_tokens=16)
    """
    iv, info, _ = read_modulation(path)
    try:
        mine = model_info(model, info["layers"], info["o_proj"], info.get("text_config"))
    except (VseamError, AttributeError) as e:
        raise VseamError(f"{path} was made for model {describe_file(info)}; this model is "
                         f"'{getattr(getattr(model, 'config', None), '_name_or_path', '') or type(model).__name__}' "
                         f"({type(model).__name__}), which has no {info['layers']}.N.{info['o_proj']} for its hooks",
                         hint="apply a modulation to the model its run measured") from None
    _check_model(Path(path), info, mine)
    with iv.installed(_Sites(model, info)):
        yield model
