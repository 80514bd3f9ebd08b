"""Reading a SQLite registry that lies in a folder this process cannot write (issue 25, item 16).

SQLite keeps its journal beside the file: in WAL mode a reader needs `runs.db-shm` / `-wal` in
the same folder and cannot open the file at all when it may not create them ("unable to open
database file"), even for `vseam runs`. Nobody can write such a registry either — a writer needs
those files too — so reading it as an immutable snapshot is safe, and reading needs no write.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine

from vseam_run.errors import VseamError


def folder_is_read_only(path: Path) -> bool:
    """Whether the folder holding an existing registry file refuses new files."""
    return path.exists() and not os.access(path.resolve().parent, os.W_OK)


def read_only_engine(path: Path) -> Engine:
    """An engine on `path` opened read-only. Without a -wal file nothing is pending, and the file
    is opened immutable (SQLite then needs no -shm); with one, a plain read-only open reads it."""
    uri = path.resolve().as_uri() + "?mode=ro" + ("" if Path(f"{path}-wal").exists() else "&immutable=1")
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False))


def write_refused(where: str) -> VseamError:
    return VseamError(
        f"cannot write run registry {where}: its folder is read-only (SQLite writes a journal file beside the registry)",
        hint="reading commands (runs, show, compare, report, export) work as they are; to write, make the folder "
             "writable or copy the registry to a writable folder and pass --db",
    )


def schema_refused(where: str) -> VseamError:
    return VseamError(
        f"run registry {where} needs its tables updated for this vseam, and its folder is read-only",
        hint="make the folder writable once (any vseam command then updates it), or copy the registry to a "
             "writable folder and pass --db",
    )
