"""The GPU fit table of `vseam bench search --preset` (see vseam_run/gpu_fit.py)."""

from __future__ import annotations

from rich.table import Table

from vseam_run.cli.common import console


def print_fit(r) -> None:
    a = r.fit_assumes
    t = Table(title=f"{r.preset}: GPUs of {a['gpu_memory_gib']:g} GiB needed (accelerate's device_map: auto plan, "
                    f"whole decoder layers per GPU)")
    for col in ("dtype", "weights GiB", "reserve / GPU GiB", "GPUs", "decoder layers per GPU"):
        t.add_column(col, justify="right")
    for f in r.fit:
        t.add_row(f["dtype"], f"{f['weights_gib']:.2f}", f"{f['reserve_gib']:.2f}",
                  str(f["gpus"]) if f["gpus"] else "does not fit", " + ".join(map(str, f["layers_per_gpu"])) or "—")
    c = console()
    c.print(t)
    c.print(f"reserve: one layer's activations for {a['rows']} replayed rows of {a['tokens']} tokens, ×2, + 1 GiB CUDA "
            "context (an estimate; the timed run on a GPU measures the peak). int8 / nf4: bitsandbytes weights "
            "(quantization: {bits: 8} / {bits: 4}), LM head in 16 bits", highlight=False)
