"""`vseam run`: validate a spec, run it, record it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from vseam_run.cli.common import DEFAULT_DB, DbOption, DeviceOption, console
from vseam_run.errors import VseamError


def run(
    spec: Annotated[Optional[Path], typer.Argument(help="Experiment spec (YAML). Omit with --resume.")] = None,
    db: DbOption = DEFAULT_DB,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: --set search.strategy=attribution (repeatable).")] = None,
    device: DeviceOption = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue an interrupted or failed run (id, prefix or 'latest').")] = None,
    force: Annotated[bool, typer.Option("--force", help="With --resume: take over a run that still looks alive.")] = False,
) -> int:
    """Run an experiment spec and record it in the run registry.

    Examples:

      vseam run specs/quickstart.yaml

      vseam run specs/quickstart.yaml --set search.strategy=attribution --set data.toyworld.images=100

      vseam run --resume latest

    A resumed run keeps its spec: --set may not change a field of it (start a new run instead).
    """
    from vseam_run import lifecycle, pipeline
    from vseam_run.spec import load_spec, validate_doc
    from vseam_run.store import RunStore
    from vseam_run.yamlio import parse_yaml

    overrides = list(set_ or [])
    if device:
        overrides.append(f"device={device}")
    store = RunStore(db)
    if resume:
        run_id = store.resolve(resume)
        record = store.get_run(run_id)
        if record.status == "succeeded":
            raise VseamError(f"run {run_id} already succeeded; nothing to resume")
        spec_obj = validate_doc(parse_yaml(record.spec_yaml, f"run {run_id} spec"), f"run {run_id} spec", overrides)
    else:
        if spec is None:
            raise VseamError("vseam run needs a SPEC file (or --resume RUN)", hint="e.g. vseam run specs/quickstart.yaml")
        spec_obj = load_spec(spec, overrides)
        run_id = None
    try:
        out = pipeline.run(spec_obj, store, resume=run_id, force=force, log=lambda s: console().print(s, highlight=False, markup=False),
                           resume_options="" if db == DEFAULT_DB else f" --db {shlex.quote(store.where)}")  # no password
    except KeyboardInterrupt as e:
        # The pipeline recorded it and printed how to resume; exit as the shell would: 130, 143, 129.
        return lifecycle.exit_code(e)
    c = console()
    c.print(f"\n[bold green]run {out.run_id} succeeded[/]")
    keys = [k for k in ("baseline.accuracy", "baseline.gold_prob", "edit.accuracy", "search.seconds", "modulation.lambda",
                        "eval.test.accuracy.baseline", "eval.test.accuracy.modulated", "eval.test.mcnemar_p",
                        "ablation.positive.accuracy_drop", "ablation.random.accuracy_drop") if k in out.metrics]
    for k in keys:
        c.print(f"  {k:34s} {out.metrics[k]:.4g}", highlight=False)
    c.print(f"details: vseam show {out.run_id}" + ("" if db == DEFAULT_DB else f" --db {db}"), highlight=False)
    return 0
