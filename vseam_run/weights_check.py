"""Missing or unexpected weights: a checkpoint that does not fill the model is refused.

transformers loads a checkpoint that lacks a tensor (say one layer's `o_proj.weight`) with
that tensor randomly initialised, and only its load report says so: the run then gives
numbers that differ from run to run. Two checks, both naming the tensors:

* at load (`refusal`), exactly, from transformers' own loading info: missing, unexpected and
  shape-mismatched tensors, less those the registry entry allows by name
  (`allow_missing_weights` / `allow_unexpected_weights`, fnmatch patterns);
* before anything loads (`checkpoint_problems`, for `vseam validate` and the run's preflight),
  from the tensor names the checkpoint lists — its `model.safetensors.index.json`, or the
  headers of its `*.safetensors` files (a few KB each, no tensor is read). Without the model
  the expected names are not known, so this check compares the layers of each stack with each
  other: a tensor that most layers of a stack have and some lack is missing there.
"""

from __future__ import annotations

import fnmatch
import json
import re
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

from vseam_run.errors import VseamError

_LAYER = re.compile(r"\.(\d+)\.")


def _allowed(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _listing(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def refusal(entry: Any, source: str, info: Mapping[str, Any]) -> VseamError | None:
    """The error for a load whose loading info reports tensors the entry does not allow, else None."""
    missing = sorted(k for k in info.get("missing_keys", ()) if not _allowed(k, entry.allow_missing_weights))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not _allowed(k, entry.allow_unexpected_weights))
    mismatched = sorted(str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys", ()))
    if not (missing or unexpected or mismatched):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing from the checkpoint (they would be random): {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the checkpoint that the model has no place for: {_listing(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} tensor(s) of the wrong shape: {_listing(mismatched)}")
    return VseamError(
        f"model '{entry.name}': the weights in {source} do not fit {entry.model_class}: " + "; ".join(parts),
        hint="use a complete checkpoint; if these tensors are meant to be absent or extra, list them in the "
        "registry entry's allow_missing_weights / allow_unexpected_weights",
    )


def checkpoint_tensor_names(folder: Path) -> list[str] | None:
    """Tensor names a safetensors checkpoint folder lists (index, else file headers); None when
    the folder has no safetensors file to read names from."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            return None
        return sorted(weight_map)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    names: list[str] = []
    for f in files:
        header = _safetensors_header(f)
        if header is None:
            return None
        names += [k for k in header if k != "__metadata__"]
    return sorted(names)


def _safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file: 8 bytes of length, then the header; no tensor read."""
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 << 20:
                return None
            return json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return None


def layer_gaps(names: Iterable[str]) -> list[str]:
    """Tensors that most layers of a stack have and some layers lack, as full names.

    `a.layers.3.self_attn.o_proj.weight` is tensor `self_attn.o_proj.weight` of layer 3 of stack
    `a.layers`. A tensor that more than half the stack's layers have is expected in all of
    them (Q-Former's cross-attention every other layer is in exactly half: not flagged).
    """
    stacks: dict[str, dict[str, set[int]]] = {}
    for name in names:
        m = _LAYER.search(name)
        if m is None:
            continue
        stack, rest = name[: m.start()], name[m.end():]
        stacks.setdefault(stack, {}).setdefault(rest, set()).add(int(m.group(1)))
    gaps: list[str] = []
    for stack, tensors in stacks.items():
        seen = set().union(*tensors.values())
        layers = set(range(min(seen), max(seen) + 1))  # a stack's layers are numbered without gaps
        for rest, have in tensors.items():
            if len(have) * 2 > len(layers) and have != layers:
                gaps += [f"{stack}.{i}.{rest}" for i in sorted(layers - have)]
    return sorted(gaps)


def checkpoint_problems(entry: Any, source: str) -> list[str]:
    """`model: ...` lines for tensors missing from some layers of a local checkpoint (see module doc)."""
    folder = Path(source)
    if not folder.is_dir():
        folder = _cached_folder(entry)
        if folder is None:
            return []
    names = checkpoint_tensor_names(folder)
    if not names:
        return []
    gaps = [g for g in layer_gaps(names) if not _allowed(g, entry.allow_missing_weights)]
    if not gaps:
        return []
    return [
        f"model: the checkpoint in {folder} lacks {len(gaps)} tensor(s) that the other layers of its stack have "
        f"(they would load as random weights): {_listing(gaps)}; use a complete checkpoint, or list them in the "
        "entry's allow_missing_weights"
    ]


def _cached_folder(entry: Any) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors.index.json", "model.safetensors"):
            cached = try_to_load_from_cache(entry.hf_id, name, revision=entry.revision)
            if isinstance(cached, str):
                return Path(cached).parent
    except Exception:  # no cache: nothing to check before the load, which checks exactly
        return None
    return None
