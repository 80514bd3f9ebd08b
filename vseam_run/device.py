"""Device and dtype resolution, done before anything is loaded."""

from __future__ import annotations

import torch

from vseam_run.errors import VseamError


def resolve_device(requested: str) -> torch.device:
    """auto → CUDA when present, else CPU. Asking for CUDA without it is an error, raised early."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VseamError(
                f"device: '{requested}' was asked for, but no CUDA GPU is available on this machine",
                hint="use device: cpu (or auto), e.g. `--set device=cpu`, or run on a machine with a GPU",
            )
        idx = int(requested.split(":")[1]) if ":" in requested else 0
        if idx >= torch.cuda.device_count():
            raise VseamError(
                f"device: '{requested}' does not exist; this machine has {torch.cuda.device_count()} GPU(s)",
                hint="use cuda:0 .. cuda:N-1",
            )
        return torch.device(requested)
    return torch.device("cpu")


def resolve_dtype(requested: str, entry_default: str, device: torch.device) -> torch.dtype:
    """auto → the entry's dtype on CUDA, float32 on CPU (half precision on CPU is slow and lossy)."""
    name = requested
    if requested == "auto":
        name = entry_default if device.type == "cuda" else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
