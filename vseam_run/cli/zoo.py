"""`vseam zoo train`: (re)train the built-in toy models reproducibly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vseam_run.cli.common import console

app = typer.Typer(help="The built-in toy models.", no_args_is_help=True)


@app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="toy-llava, toy-instructblip or toy-llava-spread")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Checkpoint folder (default: ~/.cache/vseam/zoo/NAME; env VSEAM_ZOO sets the parent).")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Overwrite the checkpoint shipped inside the package (what `model: toy-llava` loads).")] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Override the recipe's maximum number of steps (training also stops early once held-out accuracy reaches the recipe's floors).")] = None,
) -> None:
    """Train a toy model on the toy world (seeded; ≈4–6 min on 2 CPU cores) and report held-out accuracy.

    The checkpoint goes to a user folder, with a registry entry next to it that a spec can
    name (`model: PATH/entry.yaml`); --in-place replaces the shipped one instead.

    Examples:

      vseam zoo train toy-llava

      vseam zoo train toy-instructblip --out /tmp/toy-ib
    """
    from vseam_run.errors import VseamError
    from vseam_run.shipped import user_zoo_dir
    from vseam_run.zoo.train import RECIPES, ZOO_DIR
    from vseam_run.zoo.train import train as run_train

    if name not in RECIPES:
        raise VseamError(f"unknown toy model '{name}'", hint=f"choose from {', '.join(RECIPES)}")
    if in_place and out is not None:
        raise VseamError("--in-place and --out exclude each other", hint="give one of them")
    target = ZOO_DIR / name if in_place else (out or user_zoo_dir() / name).expanduser().resolve()
    c = console()
    c.print(f"training {name} into {target}", highlight=False, markup=False)
    rep = run_train(name, target, steps=steps, log=lambda s: c.print(s, highlight=False))
    c.print(f"[bold]{name}[/] trained for {rep['steps_run']} steps in {rep['train_seconds']:.0f}s; held-out accuracy:")
    for k, v in rep["held_out_accuracy"].items():
        c.print(f"  {k:24s} {v:.3f}", highlight=False)
    if not in_place:
        entry = write_entry(name, target)
        c.print(f"use it with: vseam run SPEC --set model={entry}", highlight=False, markup=False)


def write_entry(name: str, checkpoint: Path) -> Path:
    """A registry entry for a retrained toy model: the shipped entry, pointing at `checkpoint`."""
    import yaml

    from vseam_run.registry import get_entry

    data = get_entry(name).model_dump()
    data.update(name=f"{name}-retrained", path=".", description=f"{data['description']} (retrained into {checkpoint})")
    entry = checkpoint / "entry.yaml"
    entry.write_text(yaml.safe_dump(data, sort_keys=False))
    return entry


@app.command("plant")
def plant(
    src: Annotated[str, typer.Argument(help="Source model: a registry name (toy-llava) or a registry entry YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the planted checkpoint (never the source's).")],
    head: Annotated[list[str], typer.Option("--head", help="LAYER.HEAD=FACTOR, repeatable: negative or > 1 harmful, 0 removed, (0, 1) weakened.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Name of the new registry entry (default SRC-planted).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="A head is 'used' when zero-ablating it alone costs at least this much toy-world accuracy.")] = 0.05,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Measure each planted head's ablation drop on toy-world questions (all levels) and record it.")] = True,
    allow_unused: Annotated[bool, typer.Option("--allow-unused", help="Plant heads whose ablation drop is below --threshold (by default refused).")] = False,
    images: Annotated[int, typer.Option("--images", help="Toy-world scenes for the ablation check (about 2.5 questions each).")] = 100,
) -> None:
    """Write a copy of a checkpoint with known heads changed, and a registry entry beside it.

    Each head's slice of the attention output projection's input is multiplied by FACTOR in the
    weights (the o_proj columns of that head). Harmful and removed heads must be heads the model
    uses: zero-ablating the head alone must cost at least --threshold accuracy on toy-world
    questions (`vseam zoo heads SRC` lists them), unless --allow-unused.

    Examples:

      vseam zoo heads toy-llava

      vseam zoo plant toy-llava --out /tmp/planted --head 0.0=3

      vseam zoo plant toy-llava --out /tmp/two --head 1.2=-1 --head 3.4=3

      vseam zoo plant toy-instructblip --out /tmp/weak --head 2.1=0.5
    """
    import torch

    from vseam_run.errors import VseamError
    from vseam_run.registry import get_entry
    from vseam_run.vlm import VLM
    from vseam_run.zoo import plant as pl

    heads = [pl.parse_head(h) for h in head]  # bad factors are refused before anything is loaded
    entry = get_entry(src)
    pl.check_out(out.expanduser(), entry.resolved_path())
    c = console()
    vlm = VLM.load(entry, torch.device("cpu"), torch.float32)
    pl.check_heads(heads, vlm.num_layers, vlm.num_heads, entry.name)
    use = None
    if check:
        c.print(f"measuring the ablation drop of {len(heads)} head(s) on toy-world questions ({images} scenes)", highlight=False)
        use = pl.measure_use(vlm, pl.use_questions(vlm, images), [(h.layer, h.head) for h in heads])
        unused = [h for h in heads if h.kind != "weakened" and use.drops[h.layer, h.head] < threshold]
        for h in heads:
            c.print(f"  L{h.layer}.H{h.head}: accuracy drop when ablated {use.drops[h.layer, h.head]:+.3f} "
                    f"(base {use.base_accuracy:.3f}, n = {use.n}); planted {h.kind} ×{h.factor:g}", highlight=False)
        if unused and not allow_unused:
            raise VseamError(f"--head {', '.join(f'{h.layer}.{h.head}' for h in unused)}: not a head the model uses "
                             f"(ablation drop below --threshold {threshold:g})",
                             hint="`vseam zoo heads SRC` lists the used heads; or pass --allow-unused")
    done = pl.plant(entry, vlm, heads, out, use=use, threshold=threshold, name=name)
    c.print(f"planted {', '.join(h.label for h in heads)} into {done.folder}", highlight=False, markup=False)
    c.print(f"use it with: vseam run SPEC --set model={done.entry}", highlight=False, markup=False)


@app.command("heads")
def heads(
    src: Annotated[str, typer.Argument(help="A registry name (toy-llava) or a registry entry YAML file.")],
    threshold: Annotated[float, typer.Option("--threshold", help="Accuracy drop at which a head counts as used.")] = 0.05,
    images: Annotated[int, typer.Option("--images", help="Toy-world scenes (about 2.5 questions each, all levels).")] = 100,
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    """Which heads the model uses: the toy-world accuracy lost when each head alone is zero-ablated.

    Examples:

      vseam zoo heads toy-llava

      vseam zoo heads toy-instructblip --threshold 0.1 --json
    """
    import torch
    from rich.table import Table

    from vseam_run.cli.common import print_json
    from vseam_run.registry import get_entry
    from vseam_run.vlm import VLM
    from vseam_run.zoo import plant as pl

    entry = get_entry(src)
    vlm = VLM.load(entry, torch.device("cpu"), torch.float32)
    use = pl.measure_use(vlm, pl.use_questions(vlm, images))
    used = use.used(threshold)
    if json_:
        print_json({"model": entry.name, "threshold": threshold, **use.to_json(), "used": [[l, h, d] for l, h, d in used]})
        return
    t = Table(title=f"{entry.name}: accuracy drop when one head is zero-ablated (base {use.base_accuracy:.3f}, n = {use.n}); "
                    f"≥ {threshold:g} = used")
    t.add_column("layer")
    for h in range(vlm.num_heads):
        t.add_column(f"H{h}", justify="right")
    for l in range(vlm.num_layers):
        t.add_row(f"L{l}", *[(f"[bold]{d:+.3f}[/]" if d >= threshold else f"{d:+.3f}") for d in use.drops[l]])
    c = console()
    c.print(t)
    c.print(f"used heads ({len(used)}): " + (", ".join(f"L{l}.H{h} ({d:.3f})" for l, h, d in used) or "none"), highlight=False)


@app.command("spread")
def spread(
    src: Annotated[str, typer.Argument(help="A registry name (toy-llava-spread) or a registry entry YAML file.")],
    images: Annotated[int, typer.Option("--images", min=4, help="Toy-world scenes (about 2.5 questions each, all levels).")] = 240,
    search: Annotated[int, typer.Option("--search", min=1, help="Questions per level for the exact search of the top positive head.")] = 64,
    mode: Annotated[str, typer.Option("--ablation", help="mean (the head search's rule) or zero (`vseam zoo heads`).")] = "mean",
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a summary.")] = False,
) -> None:
    """Do the model's answers run through one head? The heads that each cost ≥ 0.05 accuracy when
    ablated alone, and the top positive head of an exact search at each level (issue 20 item 4).

    Examples:

      vseam zoo spread toy-llava-spread

      vseam zoo spread toy-llava --images 100 --json
    """
    import torch

    from vseam_run.cli.common import print_json
    from vseam_run.errors import VseamError
    from vseam_run.registry import get_entry
    from vseam_run.vlm import VLM
    from vseam_run.zoo import spread as sp

    if mode not in ("mean", "zero"):
        raise VseamError(f"--ablation must be mean or zero, not {mode!r}", hint="give --ablation mean or --ablation zero")
    entry = get_entry(src)
    vlm = VLM.load(entry, torch.device("cpu"), torch.float32)
    c = console()
    found = sp.measure(vlm, images, search, mode=mode, log=None if json_ else (lambda s: c.print(s, highlight=False)))
    if json_:
        print_json({"model": entry.name, **found.to_json()})
        return
    used = found.used()
    c.print(f"{entry.name}: base accuracy {found.use.base_accuracy:.3f} on {found.use.n} questions ({mode}-ablation)", highlight=False)
    c.print(f"heads costing ≥ {sp.MATTERS:g} ({len(used)}, layers {sorted({l for l, _, _ in used})}): "
            + (", ".join(f"L{l}.H{h} ({d:.3f})" for l, h, d in used) or "none"), highlight=False)
    for level, (l, h, s) in found.top_positive.items():
        c.print(f"top positive head, {level}: L{l}.H{h} ({s:.3f})", highlight=False)
    one = found.one_head_everywhere()
    c.print(f"one head top at every level: {'L%d.H%d' % one if one else 'none'}; "
            f"≥ {sp.MIN_HEADS} such heads in ≥ {sp.MIN_LAYERS} layers: {'yes' if found.spread_enough() else 'no'}", highlight=False)
