"""Where a command writes its output (`vseam report -o`, `vseam export -o`): checked before the
work, and a failed write turned into one message naming the path (no OSError traceback)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from vseam_run.errors import VseamError


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def _writable_folder(folder: Path, option: str, target: Path) -> None:
    probe = _nearest_existing(folder)
    if not probe.is_dir():
        raise VseamError(f"{option} {target}: {probe} is a file, so no folder can be made there",
                         hint=f"give {option} a path in a folder you can write")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VseamError(f"{option} {target}: cannot write in {probe} (permission denied)",
                         hint=f"give {option} a path in a folder you can write")


def check_file(path: Path, option: str = "-o") -> None:
    """`path` can be written as a file: not a folder, and its folder exists or can be made, writable."""
    if path.is_dir():
        raise VseamError(f"{option} {path}: is a folder; give the file to write, e.g. {path / 'report.html'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise VseamError(f"{option} {path}: the file exists and is not writable")
    _writable_folder(path.parent, option, path)


def check_folder(path: Path, option: str = "-o") -> None:
    """`path` is, or can be made, a writable folder (an existing file there is refused)."""
    if path.exists() and not path.is_dir():
        raise VseamError(f"{option} {path}: a file of that name exists; {option} names a folder to write the tables into",
                         hint="give another folder, or remove the file")
    _writable_folder(path, option, path)


@contextlib.contextmanager
def writing(path: Path, option: str = "-o") -> Iterator[None]:
    """Inside: an OSError while writing becomes one message naming `path`."""
    try:
        yield
    except OSError as e:
        raise VseamError(f"{option} {path}: cannot write: {e.strerror or e}") from None
