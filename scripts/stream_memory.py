"""Peak memory of the evaluation and learned-scales stages, held vs streamed (spec `stream`), at
1× and 4× the questions: does it grow with the number of questions or only with the batch?

    python scripts/stream_memory.py [--questions 32] [--batch-size 8] [--threads 2]

Each measurement runs in a fresh process on the head-search benchmark's random LLaVA-architecture
model (vseam_run.bench, built once into a temporary folder): load the model and the questions,
reset the process's peak resident set (Linux: /proc/self/clear_refs), run the stage, and report
how far the peak rose above the resident set before the stage (MiB). Prints JSON.

- evaluation: a question set scored unmodulated, modulated, and under 2 random-head controls
  (what eval.test does).
- learned: 2 epochs of learned scales on a search split, early-stopped on a val split of a
  quarter of its size (both sets held or streamed).

Children run with glibc's MALLOC_MMAP_THRESHOLD_=65536 (see MALLOC). A correctness instrument, not a benchmark: other processes do not change a process's own RSS, so
the figures hold on a loaded machine; they do depend on the allocator (freed memory is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Large blocks straight from the kernel and back (glibc malloc): the resident set then follows
# the live tensors instead of what the allocator keeps cached after a free.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
sys.path.insert(0, str(ROOT))  # this checkout's vseam_run, also when another one is installed


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _items(vlm, n: int, seed: int):
    from vseam_run.bench import BenchModel, bench_items
    from vseam_run.scoring import Item

    return [Item(f"{seed}.{s.qid}", s.image, s.question, "", s.gold_id, "c")
            for s in bench_items(vlm, BenchModel(questions=n, seed=seed))]


def measure(folder: Path, stage: str, n: int, batch_size: int, stream: bool) -> dict:
    """One measurement in this process (the child side)."""
    from vseam_run.bench import BenchModel, build_bench_vlm
    from vseam_run.heads import HeadEdit
    from vseam_run.learned import fit_scales
    from vseam_run.scoring import ScoredSet

    vlm = build_bench_vlm(BenchModel(), folder)  # the same random weights each time (seed 0)
    items = _items(vlm, n, 1)
    val = _items(vlm, max(n // 4, batch_size), 2) if stage == "learned" else []
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    if stage == "evaluation":
        scored = ScoredSet(vlm, items, batch_size, stream=stream)
        H = vlm.num_heads
        for edits in ({}, {1: HeadEdit(factors=torch.linspace(0, 2, H))}, {2: HeadEdit(factors=torch.full((H,), 1.5))},
                      {3: HeadEdit(factors=torch.linspace(2, 0, H))}):
            scored.run(edits)
    else:
        fit_scales(vlm, ScoredSet(vlm, items, batch_size, stream=stream), ScoredSet(vlm, val, batch_size, stream=stream),
                   epochs=2, patience=5, accuracy_fn=lambda rows: sum(r["correct"] for r in rows) / len(rows))
    peak = _status_kib("VmHWM")
    return {"stage": stage, "questions": n, "mode": "streamed" if stream else "held",
            "peak_growth_mib": round((peak - before) / 1024, 1), "rss_before_mib": round(before / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=32, help="questions at 1× (4× is measured too)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores slows torch badly)")
    ap.add_argument("--child", nargs=4, metavar=("FOLDER", "STAGE", "N", "STREAM"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        folder, stage, n, stream = args.child
        print(json.dumps(measure(Path(folder), stage, int(n), args.batch_size, stream == "1")))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("evaluation", "learned"):
            for n in (args.questions, 4 * args.questions):
                for stream in ("0", "1"):
                    cmd = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                           "--child", tmp, stage, str(n), stream]
                    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "VSEAM_QUIET": "1", **MALLOC})
                    if out.returncode != 0:
                        raise SystemExit(f"{stage} {n} stream={stream}: exit {out.returncode}\n{out.stderr[-3000:]}")
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"batch_size": args.batch_size, "threads": args.threads, "model": "vseam_run.bench.BenchModel()",
                      "measurements": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
