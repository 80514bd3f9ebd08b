"""`vseam zoo train`: (re)train the built-in toy models reproducibly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vseam_run.cli.common import console

app = typer.Typer(help="The built-in toy models.", no_args_is_help=True)


@app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="toy-llava or toy-instructblip")],
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
