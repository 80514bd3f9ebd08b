"""`vseam tag`, `vseam note` and `vseam rm`: label runs and remove them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from vseam_run.cli.common import DEFAULT_DB, DbOption, console
from vseam_run.cli.runs import open_registry
from vseam_run.errors import VseamError
from vseam_run.store import RunRecord
from vseam_run.store.labels import add_label, delete_run, remove_label

RunArg = Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'latest'.")]


def tag(
    run: RunArg,
    tags: Annotated[list[str], typer.Argument(help="Tags to add (or remove with --remove).")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove these tags instead.")] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Tag a run (`vseam runs --tag NAME` lists runs by tag).

    Examples:

      vseam tag latest baseline paper-fig3

      vseam tag 20261126-2115 paper-fig3 --remove
    """
    bad = [t for t in tags if not t.strip() or any(c.isspace() for c in t)]
    if bad:
        raise VseamError(f"tag {bad[0]!r}: tags are single words without spaces")
    with open_registry(db) as store:
        run_id = store.resolve(run)
        for t in tags:
            if remove:
                n = remove_label(store, run_id, "tag", t)
                console().print(f"{run_id}: {'removed' if n else 'had no'} tag {t}", highlight=False, markup=False)
            else:
                added = add_label(store, run_id, "tag", t)
                console().print(f"{run_id}: {'tagged' if added else 'already tagged'} {t}", highlight=False, markup=False)


def note(
    run: RunArg,
    text: Annotated[list[str], typer.Argument(help="The note (several words are joined by spaces).")],
    db: DbOption = DEFAULT_DB,
) -> None:
    """Attach a free-text note to a run (`vseam show` prints it).

    Example:

      vseam note latest "λ grid too coarse; rerun with 0.25 steps"
    """
    body = " ".join(text).strip()
    if not body:
        raise VseamError("vseam note: the note is empty")
    with open_registry(db) as store:
        run_id = store.resolve(run)
        add_label(store, run_id, "note", body)
    console().print(f"{run_id}: note added", highlight=False, markup=False)


def artifact_folders(record: RunRecord) -> list[Path]:
    """Folders holding only this run's files: `<workdir>/runs/<run id>` (named after the run, so
    a shared cache folder is never taken)."""
    folders: set[Path] = set()
    workdir = record.spec().get("workdir")
    if workdir:
        folders.add(Path(workdir) / "runs" / record.id)
    for a in record.artifacts:
        for parent in Path(a.path).parents:
            if parent.name == record.id:
                folders.add(parent)
                break
    return sorted(f for f in folders if f.is_dir())


def rm(
    runs: Annotated[list[str], typer.Argument(help="Runs to remove: ids, unique prefixes or 'latest'.")],
    keep_files: Annotated[bool, typer.Option("--keep-files", help="Remove from the registry only; keep the artifacts folder.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (never asked when stdin is not a terminal).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Remove runs that still look alive (running, fresh heartbeat) too.")] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Remove runs from the registry, with their artifacts folder.

    Prints what was removed. A run that still looks alive (status running, heartbeat fresh,
    process present) is refused unless --force: removing it would make the live run die.

    In a terminal it asks first (unless --yes); in scripts it asks nothing.

    Examples:

      vseam rm 20261126-2115 20261126-2120

      vseam rm latest --yes --keep-files
    """
    out = console()
    with open_registry(db) as store:
        ids = list(dict.fromkeys(store.resolve(r) for r in runs))  # all resolved before anything is removed
        records = [store.get_run(i) for i in ids]
        alive = [r for r in records if r.status == "running" and not r.is_lost()]
        if alive and not force:
            r = alive[0]
            raise VseamError(
                f"run {r.id} is still running (host {r.host}, pid {r.pid}, last heartbeat {r.heartbeat_age_s():.0f}s ago); "
                "removing it would end it" + (f" (and {len(alive) - 1} more live run(s))" if len(alive) > 1 else ""),
                hint="stop it first (Ctrl-C or kill PID), or, if you know it is dead, remove it with --force",
            )
        folders = {r.id: ([] if keep_files else artifact_folders(r)) for r in records}
        if sys.stdin.isatty() and not yes:
            listing = "\n".join(f"  {r.id} ({r.name}, {r.status})" for r in records)
            if not typer.confirm(f"remove {len(records)} run(s)?\n{listing}\n", default=False):
                out.print("nothing removed")
                return
        for r in records:
            delete_run(store, r.id)
            for folder in folders[r.id]:
                shutil.rmtree(folder, ignore_errors=True)
            where = "".join(f"; removed {f}" for f in folders[r.id])
            out.print(f"removed run {r.id} ({r.name}, {r.status}){where}", highlight=False, markup=False)
