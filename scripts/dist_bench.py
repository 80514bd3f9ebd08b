"""Wall time of one spec at 1 rank and at N gloo ranks (torchrun, CPU), printed as JSON with the ratio.

    python scripts/dist_bench.py [--ranks 2] [--cores C] [--only toy|search] [--small]

Two workloads, each run as a user would (`python -m vseam_run run SPEC`, and the same under
`python -m torch.distributed.run --standalone --nproc-per-node N -m vseam_run run SPEC`), into a
fresh registry and workdir each time, so both include process start and model loading:

- toy: the shipped quickstart (specs/quickstart.yaml: the toy LLaVA, edits, exact search, λ
  selection, evaluation, ablation).
- search: work of `vseam bench search` size: a random LLaVA-architecture model of the
  benchmark's shape (vseam_run.bench.BenchModel: 8 layers × 8 heads, hidden 256, 64 image tokens)
  with the toy world's vocabulary, so toy-world questions can be scored; 16 search questions
  (`data.limit` chosen so), exact search, nothing after it.

Fair sharing of the machine: the one-rank run gets `--cores` threads, each of N ranks
cores / N (OMP_NUM_THREADS). The script compares the search's effects and every metric but the
timings (`same_numbers`, and `differing`: the keys that are not). With different thread counts a
few numbers may differ in their last bits (a CPU kernel's summation order can depend on its
threads); `--equal-threads` gives the 1-rank run cores / N threads too, and then they must match.
`--small` shrinks both workloads (checks the script end to end in a minute or two; its times
mean nothing). Timings are for a quiet machine; on a shared one they measure the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's vseam_run, also when another one is installed
TIMING = ("time.",)  # and every metric ending in .seconds


def _build_search_model(folder: Path, small: bool) -> Path:
    """The benchmark's model shape, toy-world vocabulary; returns its registry entry."""
    import yaml

    from vseam_run.bench import BenchModel
    from vseam_run.data import toyworld
    from vseam_run.zoo.build import LLAVA_MODULES, TinyVLMConfig, save, tiny_llava

    cfg = BenchModel() if not small else BenchModel(layers=2, heads=4, hidden=64, image_tokens=16)
    side, patch = int(round(cfg.image_tokens ** 0.5)), 4
    model_cfg = TinyVLMConfig(image_size=side * patch, patch_size=patch, vision_hidden=64, vision_layers=2, vision_heads=4,
                              text_hidden=cfg.hidden, text_layers=cfg.layers, text_heads=cfg.heads,
                              text_intermediate=cfg.hidden * 2, seed=cfg.seed)
    model, processor = tiny_llava(toyworld.vocabulary() + ["answer"], model_cfg)
    save(model, processor, folder / "ckpt")
    entry = dict(name="bench-toy-vocab", path="ckpt", model_class="LlavaForConditionalGeneration", dtype="float32",
                 answer_case="lower", prompt="<image> {question} answer:", modules=LLAVA_MODULES)
    (folder / "bench.yaml").write_text(yaml.safe_dump(entry))
    return folder / "bench.yaml"


def _specs(folder: Path, small: bool) -> dict[str, Path]:
    toy = (ROOT / "specs" / "quickstart.yaml").read_text()
    if small:  # fewer images, questions and ablation trials
        toy = toy.replace("toyworld: {images: 300}", "toyworld: {images: 24}\n  limit: 24").replace("trials: 10", "trials: 2")
    (folder / "toy.yaml").write_text(toy)
    entry = _build_search_model(folder, small)
    # ~0.6 of the questions go to the search split (whole images): 28 questions give about 16.
    (folder / "search.yaml").write_text(
        f"name: dist-bench-search\nmodel: {entry}\ndevice: cpu\nbatch_size: 4\n"
        f"data: {{source: toyworld, level: attribute, toyworld: {{images: 40}}, limit: {12 if small else 28}}}\n"
        "search: {strategy: exact, scoring: subset, batch_rows: 8, top_k: 5}\n"
    )
    return {"toy": folder / "toy.yaml", "search": folder / "search.yaml"}


def _run(spec: Path, folder: Path, ranks: int, threads: int, tag: str) -> tuple[float, Path]:
    db, work = folder / f"{tag}.db", folder / f"work-{tag}"
    target = ["-m", "vseam_run", "run", str(spec), "--db", str(db), "--set", f"workdir={work}"]
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 "--nproc-per-node", str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VSEAM_QUIET": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(launch + target, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tag}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, db


def _numbers(db: Path) -> dict:
    """Every metric but the timings, and the search's per-question effects."""
    from vseam_run.store import RunStore

    with RunStore(db) as store:
        (run,) = store.list_runs()
        rec = store.get_run(run.id)
        metrics = {k: v for k, v in rec.metrics.items() if not k.startswith(TIMING) and not k.endswith(".seconds")}
        return {**metrics, "document search.effects": store.documents(run.id).get("search.effects")}


def _differences(a: dict, b: dict) -> list[str]:
    """The keys whose values differ (a few), for the JSON when the numbers are not the same."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[:10]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="threads of the 1-rank run (each of N ranks: cores/N)")
    ap.add_argument("--only", choices=["toy", "search"], help="one workload only")
    ap.add_argument("--small", action="store_true", help="tiny workloads: checks the script, times mean nothing")
    ap.add_argument("--equal-threads", action="store_true",
                    help="the 1-rank run gets cores/N threads too: bit-identical numbers (a CPU matmul's summation order "
                    "may depend on its thread count), but not a fair use of the machine")
    args = ap.parse_args(argv)
    per_rank = max(1, args.cores // args.ranks)
    one_threads = per_rank if args.equal_threads else args.cores
    out: dict = {"ranks": args.ranks, "threads_one_rank": one_threads, "threads_per_rank": per_rank, "small": args.small,
                 "backend": "gloo (CPU)", "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="vseam-dist-bench-") as tmp:
        folder = Path(tmp)
        for name, spec in _specs(folder, args.small).items():
            if args.only and name != args.only:
                continue
            one_s, one_db = _run(spec, folder, 1, one_threads, f"{name}-1")
            many_s, many_db = _run(spec, folder, args.ranks, per_rank, f"{name}-{args.ranks}")
            differ = _differences(_numbers(one_db), _numbers(many_db))
            out["workloads"][name] = {
                "spec": "specs/quickstart.yaml" if name == "toy" else "bench-size exact search (see --help)",
                "one_rank_s": round(one_s, 2), f"{args.ranks}_ranks_s": round(many_s, 2),
                "ratio": round(many_s / one_s, 3), "same_numbers": not differ, **({"differing": differ} if differ else {}),
            }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
