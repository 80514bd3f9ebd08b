"""`vseam ask`: one question to the base and the modulated model, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vseam_run.cli.common import DEFAULT_DB, DbOption, DeviceOption, JsonOption, console, print_json
from vseam_run.errors import VseamError


def ask(
    run: Annotated[Optional[str], typer.Argument(help="Run whose model and modulation to use (id, prefix, 'latest').")] = None,
    image: Annotated[Path, typer.Option("--image", help="Image file.")] = ...,
    question: Annotated[str, typer.Option("--question", help="The question.")] = ...,
    model: Annotated[Optional[str], typer.Option("--model", help="A registry model instead of a run (no modulation "
                                                 "unless --modulation).")] = None,
    modulation: Annotated[Optional[Path], typer.Option("--modulation", help="A file from `vseam export RUN --modulation`.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens generated at most.")] = 16,
    top: Annotated[int, typer.Option("--heads", help="Changed heads shown (largest change first).")] = 10,
    device: DeviceOption = None,
    json_: JsonOption = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Ask one question: the base and the modulated model's generated answers, the first token's
    top-5 probabilities for each, and which heads the modulation changes and by how much.

    Examples:

      vseam ask latest --image cat.png --question "What color is the cat?"

      vseam ask --model toy-llava --image scene.png --question "Is there a ring?"
    """
    import torch
    from PIL import Image, UnidentifiedImageError

    from vseam_run import registry
    from vseam_run.ask import ask as ask_one
    from vseam_run.device import resolve_device, resolve_dtype
    from vseam_run.vlm import VLM

    if (run is None) == (model is None):
        raise VseamError("vseam ask: name a run or give --model (one of them)",
                         hint='vseam ask RUN --image PATH --question "…"  or  vseam ask --model NAME --image PATH --question "…"')
    try:
        img = Image.open(image).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise VseamError(f"--image {image}: cannot read it as an image ({e})") from None
    intervention, source = None, ""
    if run is not None:
        from vseam_run.cli.runs import open_registry
        from vseam_run.modfile import _run_entry, _run_intervention

        with open_registry(db) as store:
            run_id = store.resolve(run)
            entry = _run_entry(store.get_run(run_id))
            intervention = _run_intervention(store, run_id)
        source = f"run {run_id}"
    else:
        entry = registry.get_entry(model)
    if modulation is not None:
        from vseam_run.modfile import read_modulation

        intervention, info, _ = read_modulation(modulation)
        if info.get("entry_hash") and info["entry_hash"] != entry.content_hash():
            raise VseamError(f"{modulation} was made for model '{info.get('entry')}'; this model is '{entry.name}'",
                             hint="use the model the modulation's run measured")
        source = str(modulation)
    dev = resolve_device(device or "auto")
    vlm = VLM.load(entry, dev, resolve_dtype("auto", entry.dtype, dev))
    with torch.no_grad():
        res = ask_one(vlm, img, question, intervention, max_new_tokens=max_new_tokens)
    if json_:
        print_json({"model": entry.name, "modulation": source or None, "question": question,
                    "base": vars(res.base), "modulated": vars(res.modulated) if res.modulated else None, "heads": res.heads})
        return
    _print(entry.name, source, question, res, top)


def _print(model: str, source: str, question: str, res, top: int) -> None:
    from rich.table import Table

    c = console()
    arms = [("base", res.base)] + ([("modulated", res.modulated)] if res.modulated else [])
    t = Table(title=f"{model}: {question}" + (f"  (modulation: {source})" if source else ""))
    t.add_column("")
    for name, _ in arms:
        t.add_column(name)
    t.add_row("answer", *[a.text or "(nothing)" for _, a in arms])
    for i in range(5):
        t.add_row(f"top {i + 1}" if i else "first token top 1", *[f"{a.top5[i][0]!r} {a.top5[i][1]:.3f}" for _, a in arms])
    c.print(t)
    if res.modulated is None:
        c.print("no modulation: give a run, or --modulation FILE", highlight=False, markup=False)
        return
    if not res.heads:
        c.print("the modulation changes no head (it is the identity)", highlight=False, markup=False)
        return
    h = Table(title=f"heads changed: {len(res.heads)} (largest change first, {min(top, len(res.heads))} shown)")
    keys = [k for k in res.heads[0] if k != "change"]
    for k in keys:
        h.add_column(k)
    for row in res.heads[:top]:
        h.add_row(*[f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys])
    c.print(h)
