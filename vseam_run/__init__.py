"""vseam: causal interpretability of vision-language models after V-SEAM (EMNLP 2025)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `vseam_run.apply_modulation(model, "mod.safetensors")` without importing torch at `import vseam_run`.
    if name == "apply_modulation":
        from vseam_run.modfile import apply_modulation

        return apply_modulation
    raise AttributeError(f"module 'vseam_run' has no attribute {name!r}")
