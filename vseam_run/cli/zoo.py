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
    out: Annotated[Optional[Path], typer.Option("--out", help="Checkpoint folder (default: the shipped one inside the package).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Override the recipe's maximum number of steps (training also stops early once held-out accuracy reaches the recipe's floors).")] = None,
) -> None:
    """Train a toy model on the toy world (seeded; ≈6–8 min on 2 CPU cores) and report held-out accuracy.

    Examples:

      vseam zoo train toy-llava

      vseam zoo train toy-instructblip --out /tmp/toy-ib
    """
    from vseam_run.errors import VseamError
    from vseam_run.zoo.train import RECIPES
    from vseam_run.zoo.train import train as run_train

    if name not in RECIPES:
        raise VseamError(f"unknown toy model '{name}'", hint=f"choose from {', '.join(RECIPES)}")
    c = console()
    rep = run_train(name, out, steps=steps, log=lambda s: c.print(s, highlight=False))
    c.print(f"[bold]{name}[/] trained for {rep['steps_run']} steps in {rep['train_seconds']:.0f}s; held-out accuracy:")
    for k, v in rep["held_out_accuracy"].items():
        c.print(f"  {k:24s} {v:.3f}", highlight=False)
