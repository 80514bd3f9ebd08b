"""vseam: causal interpretability of vision-language models after V-SEAM (EMNLP 2025)."""

__version__ = "0.1.0"
