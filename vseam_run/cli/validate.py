"""`vseam validate`: check specs and registry entries without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vseam_run.cli.common import console, err_console
from vseam_run.errors import SpecError, VseamError


def validate(
    files: Annotated[list[Path], typer.Argument(help="Spec or registry YAML files (or names of shipped specs).")],
    spec_only: Annotated[bool, typer.Option("--spec-only", help="Check only the files themselves, not whether they can run on this machine (device, weights, data files, workdir, head counts).")] = False,
) -> int:
    """Validate spec files and registry entries; report every problem of each file at once.

    A spec is also checked against this machine, as `vseam run` does before loading the model:
    the device, the model's weights and head counts (from its config), a writable workdir and
    every question file. --spec-only skips those (for a spec meant for another machine).

    A registry entry's module paths are checked on the model's module tree built on the meta
    device (no weights read) from the checkpoint's config when it is on this machine, else from
    the entry's `arch:` preset; without either only the schema is checked, and the output says so.

    Examples:

      vseam validate specs/*.yaml --spec-only

      vseam validate quickstart

      vseam validate registry/llava-1.5-7b.yaml
    """
    from vseam_run.registry import load_entry_file
    from vseam_run.shipped import resolve_spec
    from vseam_run.yamlio import load_yaml

    bad = 0
    for given in files:
        f = given
        try:
            f = resolve_spec(given)
            doc = load_yaml(f)
            is_entry = isinstance(doc.data, dict) and "model_class" in doc.data
            if is_entry:
                _validate_entry(f, load_entry_file(f))
            else:
                _check_spec(f, spec_only)
                console().print(f"[green]ok[/]  {escape(str(f))}", highlight=False)
        except SpecError as e:
            bad += 1
            err_console().print(f"[red]invalid[/] {escape(e.source)}", highlight=False)
            for line in e.errors:
                err_console().print(f"  {line}", highlight=False, markup=False)
        except VseamError as e:
            bad += 1
            err_console().print(f"[red]invalid[/] {escape(str(f))}: ", highlight=False, end="")
            err_console().print(str(e), highlight=False, markup=False)
    if bad:
        raise typer.Exit(2)
    return 0


def _validate_entry(f: Path, entry) -> None:
    """Check an entry's module paths on its meta-device module tree; say what was checked."""
    from vseam_run.inspect_model import check_entry

    from vseam_run.prompt_check import load_processor, prompt_problems

    if entry.remote_code_notice():
        console().print(entry.remote_code_notice(), highlight=False, markup=False)
    check = check_entry(entry)
    processor = load_processor(entry)
    errors = check.errors + (prompt_problems(entry, processor) if processor is not None else [])
    if errors:
        raise SpecError(str(f), errors)
    if check.checked_on is None:
        what = entry.hf_id or str(entry.resolved_path())
        console().print(
            f"[green]ok[/]  {escape(str(f))} [yellow](schema only: the config of {escape(what)} is not on this machine "
            "and the entry has no arch: preset, so module paths were NOT checked)[/]",
            highlight=False,
        )
    else:
        console().print(f"[green]ok[/]  {escape(str(f))} (module paths checked on {escape(check.checked_on)})", highlight=False)


def warn_ignored(spec) -> None:
    """Settings the spec gives that the run will not use, one warning line each."""
    from vseam_run.spec_notes import ignored_settings

    for line in ignored_settings(spec):
        err_console().print(f"[yellow]warning:[/] {escape(line)}", highlight=False)


def _check_spec(path: Path, spec_only: bool) -> None:
    from vseam_run.checks import machine_problems
    from vseam_run.registry import get_entry
    from vseam_run.spec import load_spec

    spec = load_spec(path)
    warn_ignored(spec)
    if spec_only:
        return
    entry = get_entry(spec.model)
    if entry.remote_code_notice():
        console().print(entry.remote_code_notice(), highlight=False, markup=False)
    problems = machine_problems(spec, entry)
    if problems:
        raise SpecError(f"{path} (cannot run on this machine)", problems)
