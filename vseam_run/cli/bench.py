"""`vseam bench search` / `vseam bench trace`: time head search and causal tracing against their references."""

from __future__ import annotations

from typing import Annotated
from pathlib import Path

import typer
from rich.table import Table

from vseam_run.cli.common import JsonOption, console, print_json

app = typer.Typer(help="Benchmarks.", no_args_is_help=True)


@app.command("search")
def search(
    preset: Annotated[str | None, typer.Option(help="Registry entry whose REAL architecture (its arch: preset) to time, random weights.")] = None,
    layers: Annotated[int | None, typer.Option(help="Language-model layers (default 8; with --preset: all of the entry's).")] = None,
    heads: Annotated[int, typer.Option(help="Attention heads per layer.")] = 8,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 256,
    questions: Annotated[int | None, typer.Option(help="Questions searched on (default 16; with --preset 4).")] = None,
    image_tokens: Annotated[int, typer.Option(help="Image tokens (a square number).")] = 64,
    text_tokens: Annotated[int, typer.Option(help="Question tokens.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Questions per batch for exact/attribution.")] = 4,
    batch_rows: Annotated[int | None, typer.Option(help="(question, head) rows per forward pass in exact (default 8, small suits a CPU's cache; with --preset 32).")] = None,
    project: Annotated[int, typer.Option(help="With --preset: project the cost to this many questions.")] = 1000,
    device: Annotated[str, typer.Option(help="With --preset: cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="With --preset: float32, bfloat16 or float16.")] = "float32",
    strategies: Annotated[str, typer.Option(help="With --preset: comma-separated strategies to time.")] = ",".join(("reference", "exact", "attribution", "attribution+verify")),
    width: Annotated[int | None, typer.Option(hidden=True, help="Tests only: shrink every width (and the image grid).")] = None,
    scaling: Annotated[bool, typer.Option("--scaling/--no-scaling", help="Also time 4×4, 8×8 and 16×16 heads.")] = True,
    gpu_memory: Annotated[float, typer.Option(help="With --preset: memory of one GPU (GiB) for the fit: how many GPUs the full model needs per dtype.")] = 80.0,
    fit_only: Annotated[bool, typer.Option(help="With --preset: only the GPU fit (built on the meta device; nothing timed).")] = False,
    json_: JsonOption = False,
) -> None:
    """Time reference, exact, attribution and attribution+verify on one random LLaVA-architecture model,
    or (--preset) on a registry entry's real architecture, to know the cost before launching.

    Examples:

      vseam bench search --preset llava-1.5-7b --device cuda --dtype bfloat16 --questions 2

      vseam bench search --preset llava-1.5-7b --layers 1 --strategies exact,attribution

      vseam bench search --preset llava-1.5-13b --gpu-memory 24 --fit-only

      vseam bench search

      vseam bench search --json --no-scaling

      vseam bench search --layers 16 --heads 16 --questions 8
    """
    import os

    os.environ.setdefault("VSEAM_QUIET", "1")
    if preset:
        _preset(preset, layers, questions or 4, project, device, dtype, strategies, batch_size, batch_rows or 32, width, json_,
                gpu_memory, fit_only)
        return
    layers, questions, batch_rows = layers or 8, questions or 16, batch_rows or 8
    from vseam_run.bench import BenchModel, run_bench

    main = run_bench(BenchModel(layers, heads, hidden, image_tokens, text_tokens, questions), batch_rows=batch_rows, batch_size=batch_size)
    if scaling:
        main["scaling"] = []
        for n in (4, 8, 16):
            r = run_bench(BenchModel(n, n, max(hidden, n * 16), image_tokens, text_tokens, max(4, questions // 2)),
                          batch_rows=batch_rows, batch_size=batch_size)
            main["scaling"].append({"layers": n, "heads": n, **{s["name"]: s["speedup_vs_reference"] for s in r["strategies"]},
                                    "reference_seconds": r["strategies"][0]["seconds"]})
    if json_:
        print_json(main)
        return
    c = console()
    m = main["model"]
    t = Table(title=f"head search, {m['layers']}×{m['heads']} heads, hidden {m['hidden']}, {m['image_tokens']} image + "
                    f"{m['text_tokens']} text tokens, {m['questions']} questions ({m['threads']} threads, "
                    f"batches of {m['batch_size']} questions, {m['batch_rows']} rows)")
    for col in ("strategy", "seconds", "speedup", "max |diff| vs ref", "Spearman vs exact", "recall@10 +", "recall@10 −",
                "score / exact +", "score / exact −"):
        t.add_column(col, justify="right")
    for s in main["strategies"]:
        t.add_row(s["name"], f"{s['seconds']:.2f}", f"{s['speedup_vs_reference']:.1f}×", f"{s['max_abs_diff_vs_reference']:.1e}",
                  f"{s['spearman_vs_exact']:.3f}", f"{s['recall_top10_positive']:.2f}", f"{s['recall_top10_negative']:.2f}",
                  f"{s['ratio_top10_positive']:.2f}", f"{s['ratio_top10_negative']:.2f}")
    c.print(t)
    if "scaling" in main:
        t2 = Table(title="speedup vs reference as heads grow")
        for col in ("layers×heads", "reference s", "exact", "attribution", "attribution+verify"):
            t2.add_column(col, justify="right")
        for r in main["scaling"]:
            t2.add_row(f"{r['layers']}×{r['heads']}", f"{r['reference_seconds']:.2f}", f"{r['exact']:.1f}×",
                       f"{r['attribution']:.1f}×", f"{r['attribution+verify']:.1f}×")
        c.print(t2)


def _preset(name: str, layers: int | None, questions: int, project: int, device: str, dtype: str, strategies: str,
            batch_size: int, batch_rows: int, width: int | None, json_: bool, gpu_memory: float = 80.0,
            fit_only: bool = False) -> None:
    from vseam_run.bench_preset import PresetBench, run_preset_bench
    from vseam_run.errors import VseamError

    if dtype not in ("float32", "bfloat16", "float16"):
        raise VseamError(f"--dtype {dtype}: choose float32, bfloat16 or float16")
    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    r = run_preset_bench(PresetBench(name, layers=layers, questions=questions, project=project, device=device, dtype=dtype,
                                     strategies=chosen, batch_size=min(batch_size, questions), batch_rows=batch_rows, width=width,
                                     gpu_memory_gib=gpu_memory, fit_only=fit_only))
    if json_:
        print_json(r.to_json())
        return
    from vseam_run.cli.bench_fit import print_fit

    print_fit(r)
    if fit_only:
        return
    a = r.architecture
    t = Table(title=f"{r.preset} (random weights): {a['layers']} layers × {a['heads']} heads ({a['kv_heads']} KV), hidden "
                    f"{a['hidden']}, {a['image_tokens']} image tokens of {a['sequence_tokens']}, {a['parameters_billion']}B "
                    f"parameters; {r.device}, {r.dtype}, {r.questions} questions")
    for col in ("strategy", "seconds", "s / question", "peak memory GiB", f"hours for {r.project} questions"):
        t.add_column(col, justify="right")
    for s in r.strategies:
        t.add_row(s.name, f"{s.seconds:.2f}", f"{s.seconds_per_question:.2f}", f"{s.peak_memory_gib:.2f}", f"{s.projected_hours:.2f}")
    c = console()
    c.print(t)
    c.print(f"memory: {r.memory_kind}", highlight=False)
    for n in r.notes:
        c.print(f"note: {n}", highlight=False)


@app.command("trace")
def trace(
    layers: Annotated[int, typer.Option(help="Language-model layers.")] = 8,
    heads: Annotated[int, typer.Option(help="Attention heads per layer.")] = 8,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 256,
    pairs: Annotated[int, typer.Option(help="Clean/edited pairs traced by exact and attribution.")] = 8,
    reference_pairs: Annotated[int, typer.Option(help="Pairs also traced by the batch-1 reference (slow).")] = 2,
    image_tokens: Annotated[int, typer.Option(help="Image tokens (a square number).")] = 64,
    text_tokens: Annotated[int, typer.Option(help="Most question tokens.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch.")] = 4,
    batch_rows: Annotated[int, typer.Option(help="Cell rows per forward pass in exact tracing.")] = 64,
    json_: JsonOption = False,
) -> None:
    """Time exact and attribution causal tracing on one random LLaVA-architecture model; check exact
    against the batch-1 reference and report attribution's rank agreement with exact.

    Examples:

      vseam bench trace

      vseam bench trace --json --pairs 4 --reference-pairs 1
    """
    import os

    os.environ.setdefault("VSEAM_QUIET", "1")
    from vseam_run.bench import BenchModel, run_trace_bench

    out = run_trace_bench(BenchModel(layers, heads, hidden, image_tokens, text_tokens, pairs), pairs=pairs,
                          reference_pairs=reference_pairs, batch_size=batch_size, batch_rows=batch_rows)
    if json_:
        print_json(out)
        return
    m = out["model"]
    t = Table(title=f"causal tracing, {m['layers']} layers, hidden {m['hidden']}, {m['image_tokens']} image tokens, "
                    f"{m['cells_per_pair']} cells per pair ({m['threads']} threads, batches of {m['batch_size']} pairs)")
    for col in ("method", "pairs", "seconds", "exact speedup", "max |diff| ref vs exact", "Spearman cells", "Spearman table",
                "recall@10 cells"):
        t.add_column(col, justify="right")

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in out["methods"]:
        t.add_row(r["name"], str(r["pairs"]), f"{r['seconds']:.2f}", f(r.get("exact_speedup"), ".1f"),
                  f(r.get("max_abs_diff_vs_exact"), ".1e"), f(r.get("spearman_cells_vs_exact"), ".3f"),
                  f(r.get("spearman_table_vs_exact"), ".3f"), f(r.get("recall_top10_cells"), ".2f"))
    console().print(t)


@app.command("recovery")
def recovery(
    model: Annotated[str, typer.Option("--model", help="Source model: any registry name (toy-llava, toy-instructblip, ...) or entry YAML.")] = "toy-llava",
    small: Annotated[bool, typer.Option("--small", help="Quick mode: object level only, 80 scenes, the null and two plants, paper and topk.")] = False,
    levels: Annotated[str | None, typer.Option("--levels", help="Comma-separated levels (default: all three; --small: object).")] = None,
    variants: Annotated[str | None, typer.Option("--variants", help="Comma-separated variants: null, harmful-L0, harmful-later, harmful-two, removed, weakened.")] = None,
    policies: Annotated[str | None, typer.Option("--policies", help="Comma-separated policies (default: paper, linear, topk, learned; also ablate, steer, image_attention).")] = None,
    images: Annotated[int | None, typer.Option("--images", help="Toy-world scenes per level (default 200; --small 80).")] = None,
    use_images: Annotated[int | None, typer.Option("--use-images", help="Toy-world scenes (all levels) for choosing the planted heads by ablation (default 60; --small 40).")] = None,
    control_draws: Annotated[int | None, typer.Option("--control-draws", help="Random-head control draws per evaluated set (default 5; --small 2).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="A head is 'used' (may be planted) when zero-ablating it alone costs at least this accuracy.")] = 0.05,
    out: Annotated[Path, typer.Option("--out", help="Folder for recovery_MODEL.json (written after every level) and recovery_MODEL.png.")] = Path(".vseam/bench"),
    from_json: Annotated[list[Path] | None, typer.Option("--from-json", help="Draw the table and figure from JSON this command wrote, no computing; repeat to merge runs of different --variants of one model.")] = None,
    json_: JsonOption = False,
) -> None:
    """Plant known heads into a toy model and measure whether search and modulation recover them.

    Variants: harmful-L0 (the most-used layer-0 head ×3), harmful-later (the most-used head of
    layers ≥ 1 ×−1), harmful-two (the most-used heads of two layers ≥ 1, ×3 each), removed (×0),
    weakened (×0.5: enhancing it ×2 is the exact repair) and null (nothing planted). Heads are chosen
    by zero-ablation on separate toy-world questions (drop ≥ --threshold). Per variant and level:
    the planted heads' ranks under every search strategy (reference on a small case), recall@k,
    attribution's score over exact's; per policy the held-out gain with its 95% CI, McNemar p and
    the random-head control, in-sample beside it. Writes one JSON and one figure under --out.

    Examples:

      vseam bench recovery --small

      vseam bench recovery --model toy-instructblip --json

      vseam bench recovery --levels object --variants null,harmful-two --policies paper
    """
    import os

    os.environ.setdefault("VSEAM_QUIET", "1")
    from dataclasses import replace

    from vseam_run import bench_recovery as br
    from vseam_run.errors import VseamError

    cfg = br.small_config(model) if small else br.RecoveryConfig(model=model)

    def pick(text: str | None, known: tuple[str, ...], what: str) -> tuple[str, ...] | None:
        if text is None:
            return None
        got = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [g for g in got if g not in known]
        if bad or not got:
            raise VseamError(f"--{what} {text!r}: unknown {', '.join(bad) or '(empty)'}", hint=f"choose from {', '.join(known)}")
        return got

    known_variants = ("null", "harmful-L0", "harmful-later", "harmful-two", "removed", "weakened")
    cfg = replace(cfg, threshold=threshold,
                  levels=pick(levels, br.LEVELS, "levels") or cfg.levels,
                  variants=pick(variants, known_variants, "variants") or cfg.variants,
                  policies=pick(policies, tuple(br.POLICY_SPECS), "policies") or cfg.policies,
                  images=images or cfg.images, use_images=use_images or cfg.use_images,
                  control_draws=cfg.control_draws if control_draws is None else control_draws)
    if cfg.images < 20:
        raise VseamError(f"--images {cfg.images}: too few scenes to split into search / val / test", hint="use 20 or more")
    from vseam_run.registry import get_entry

    import json

    if from_json:
        parts = []
        for f in from_json:
            try:
                parts.append(json.loads(f.read_text()))
                parts[-1]["model"], parts[-1]["variants"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise VseamError(f"--from-json {f}: not a recovery result ({e})", hint="give a JSON `bench recovery` wrote") from None
        res = br.merge(parts)
        stem = res["model"].replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"recovery_{stem}.json"
    else:
        stem = get_entry(model).name.replace("/", "_")  # an unknown model is refused before any work
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"recovery_{stem}.json"
        res = br.clean(br.run_recovery(cfg, on_update=lambda r: path.write_text(json.dumps(br.clean(r), indent=1))))
        path.write_text(json.dumps(res, indent=1))
    fig = br.figure(res, out / f"recovery_{stem}.png")
    if json_:
        print_json({**res, "json": str(path), "figure": str(fig)})
        return
    c = console()
    rows = br.table_rows(res)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    t = Table(title=f"recovery of planted heads — {res['model']} (threshold {res['threshold']:g}; ranks: n = negative list, "
                    f"p = positive list, – = not listed; gains held-out with 95% CI, McNemar p, random-head control)")
    for col in cols:
        t.add_column(col)
    for r in rows:
        t.add_row(*[r.get(col, "") for col in cols])
    c.print(t)
    nf = res["null_false_gains"]
    if nf:
        c.print(f"null model: of {nf['cells']} (policy, level) cells, held-out gain > 0 in {nf['held_out']['gain_gt_0']}, "
                f"significant (p < 0.05) in {nf['held_out']['significant_gain']}; in-sample {nf['in_sample']['gain_gt_0']} "
                f"and {nf['in_sample']['significant_gain']}", highlight=False)
    for n in res["notes"]:
        c.print(f"note: {n}", highlight=False)
    c.print(f"{res['seconds']:.0f}s; JSON {path}; figure {fig}", highlight=False, markup=False)


@app.command("attribution")
def attribution(
    model: Annotated[str, typer.Option(help="Shipped toy model (registry name).")] = "toy-llava",
    level: Annotated[str, typer.Option(help="object, attribute or relation.")] = "relation",
    questions: Annotated[int, typer.Option(help="Toy-world questions of that level searched on.")] = 96,
    reference_questions: Annotated[int, typer.Option(help="Questions the batch-1 reference is timed on (its cost is linear in them).")] = 8,
    harm: Annotated[list[str], typer.Option("--harm", help="L.H=FACTOR: harm a head in memory (its o_proj-input slice × FACTOR); repeatable.")] = [],
    json_: JsonOption = False,
) -> None:
    """Attribution against exact where effects are large: a trained toy model, optionally with
    planted harmful heads; recall@10, score / exact (top 10 and planted heads) and speed vs reference
    for first order on the gold probability and on its log odds, with and without offsets.

    Examples:

      vseam bench attribution

      vseam bench attribution --harm 3.5=-12 --json
    """
    import os

    from vseam_run.bench_attribution import AttributionBench, run_attribution_bench
    from vseam_run.errors import VseamError

    os.environ.setdefault("VSEAM_QUIET", "1")
    planted: dict[tuple[int, int], float] = {}
    for h in harm:
        try:
            where, factor = h.split("=")
            layer, head = (int(v) for v in where.split("."))
            planted[(layer, head)] = float(factor)
        except ValueError:
            raise VseamError(f"--harm {h!r}: expected L.H=FACTOR", hint="e.g. --harm 3.5=-12") from None
    r = run_attribution_bench(AttributionBench(model=model, level=level, questions=questions,
                                               reference_questions=reference_questions, harm=planted))
    if json_:
        print_json(r)
        return
    c = console()
    t = Table(title=f"attribution vs exact, {r['model']} {r['level']} ({r['questions']} questions, {r['correct']} right"
                    + (f"; harmed {r['harm']}" if r["harm"] else "") + f"; {r['threads']} threads)")
    cols = ["variant", "seconds", "speedup vs ref", "Spearman", "recall@10 +", "recall@10 −", "score / exact +", "score / exact −"]
    cols += [f"planted {k} rank (score / exact)" for k in r["harm"]]
    for col in cols:
        t.add_column(col, justify="right")
    for v in r["variants"]:
        cells = [v["name"], f"{v['seconds']:.1f}", f"{v['speedup_vs_reference']:.1f}×", f"{v['spearman_signed_vs_exact']:.3f}",
                 f"{v['recall_top10_positive']:.2f}", f"{v['recall_top10_negative']:.2f}",
                 f"{v['ratio_top10_positive']:.2f}", f"{v['ratio_top10_negative']:.2f}"]
        for k in r["harm"]:
            p = v[f"planted {k}"]
            cells.append(f"{p['negative_rank']} ({p['ratio']})")
        t.add_row(*cells)
    c.print(t)
