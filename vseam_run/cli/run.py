"""`vseam run`: validate a spec, run it, record it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from vseam_run.cli.common import DEFAULT_DB, DbOption, DeviceOption, console
from vseam_run.errors import VseamError


def run(
    spec: Annotated[Optional[Path], typer.Argument(help="Experiment spec: a YAML file, or the name of a shipped spec (`vseam specs`). Omit with --resume.")] = None,
    db: DbOption = DEFAULT_DB,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: --set search.strategy=attribution (repeatable).")] = None,
    device: DeviceOption = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue an interrupted or failed run (id, prefix or 'latest').")] = None,
    force: Annotated[bool, typer.Option("--force", help="With --resume: take over a run that still looks alive.")] = False,
    run_id_file: Annotated[Optional[Path], typer.Option("--run-id-file", help="Write the run's id to this file once it is recorded (for a job script that resumes it after a requeue).")] = None,
) -> int:
    """Run an experiment spec and record it in the run registry.

    Examples:

      vseam run quickstart

      vseam run specs/quickstart.yaml --set search.strategy=attribution --set data.toyworld.images=100

      vseam run --resume latest

    A resumed run keeps its spec: --set may not change a field of it (start a new run instead).
    """
    from vseam_run import dist, fmt, lifecycle, pipeline
    from vseam_run.shipped import resolve_spec
    from vseam_run.spec import load_spec, validate_doc
    from vseam_run.store import RunStore
    from vseam_run.yamlio import parse_yaml

    overrides = list(set_ or [])
    if device:
        overrides.append(f"device={device}")
    if resume:
        # The registry must already hold the run: never create one to look a run up in it.
        store = RunStore(db, must_exist=True)
        run_id = store.resolve(resume)
        record = store.get_run(run_id)
        if record.status == "succeeded":
            raise VseamError(f"run {run_id} already succeeded; nothing to resume")
        spec_obj = validate_doc(parse_yaml(record.spec_yaml, f"run {run_id} spec"), f"run {run_id} spec", overrides)
    else:
        if spec is None:
            raise VseamError("vseam run needs a SPEC file (or --resume RUN)", hint="e.g. vseam run quickstart (`vseam specs` lists the shipped specs)")
        # The spec is read and checked (everything short of loading the model) before the
        # registry is opened, so a rejected spec leaves no registry file behind.
        spec_obj = load_spec(resolve_spec(spec), overrides)
        from vseam_run.cli.validate import warn_ignored

        warn_ignored(spec_obj)
        pipeline.preflight(spec_obj)
        store = RunStore(db)
        run_id = None
    started = False

    def log(s: object) -> None:
        nonlocal started
        started = True
        console().print(s, highlight=False, markup=False)

    try:
        out = pipeline.run(spec_obj, store, resume=run_id, force=force, log=log,
                           resume_options="" if db == DEFAULT_DB else f" --db {shlex.quote(store.where)}",  # no password
                           on_created=None if run_id_file is None else lambda rid: _write_id(run_id_file, rid))
    except KeyboardInterrupt as e:
        if started or not dist.env_world().main:
            # The pipeline recorded it and printed how to resume; exit as the shell would: 130, 143, 129.
            return lifecycle.exit_code(e)
        raise
    if not dist.env_world().main:  # under torchrun, rank 0 prints the summary
        return 0
    c = console()
    c.print(f"\n[bold green]run {out.run_id} succeeded[/]")
    keys = [k for k in ("baseline.accuracy", "baseline.gold_prob", "edit.accuracy", "search.seconds", "modulation.lambda",
                        "eval.test.accuracy.baseline", "eval.test.accuracy.modulated", "eval.test.mcnemar_p",
                        "ablation.positive.accuracy_drop", "ablation.random.accuracy_drop") if k in out.metrics]
    for k in keys:
        c.print(f"  {k:34s} {fmt.num(out.metrics[k])}", highlight=False)
    heads = store.get_document(out.run_id, "heads")
    if heads and heads.get("top"):
        c.print(f"  {'top positive heads':34s} {fmt.heads(heads['top']['positive'], 5)}", highlight=False)
        c.print(f"  {'top negative heads':34s} {fmt.heads(heads['top']['negative'], 5)}", highlight=False)
    # store.where, not db: a database URL's password must not be printed.
    c.print(f"details: vseam show {out.run_id}" + ("" if db == DEFAULT_DB else f" --db {store.where}"), highlight=False, markup=False)
    return 0


def _write_id(path: Path, run_id: str) -> None:
    """The run id, written whole (a temporary file renamed) so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    tmp.replace(path)
