"""Content stamps of input files, cheap on the second look.

A stage's result is bound to the *content* of the files it read (question files, images), not
to their paths: an image overwritten in place must not match a result computed on the old one.
Hashing every image on every run start would cost seconds to minutes on a real dataset, so a
stamp is cached per file under its (size, mtime): a file whose size and modification time are
those of the cached entry is taken to hold the cached content; any other file is read again.

A file written moments before it was hashed could be written again within the same mtime tick
and keep its size (git calls these "racy" entries); such an entry is not cached, so the next
look reads the file again.

The cache is one JSON file (`<workdir>/cache/file-stamps.json` for runs), written atomically;
two processes writing it at once lose at most the other's new entries, which are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

#: An entry whose file changed less than this many seconds before it was hashed is not cached.
RACY_S = 2.0

CACHE_NAME = "file-stamps.json"


def hash_file(path: Path) -> str:
    """SHA-256 of the file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FileStamps:
    """path → content hash, with a (size, mtime) cache kept in `cache_file` (None: no cache)."""

    def __init__(self, cache_file: Path | None = None) -> None:
        self.cache_file = cache_file
        self._cache: dict[str, list] = {}
        self._dirty = False
        self.hashed = 0  # files read in full by this instance (tests check the cache is used)
        if cache_file is not None and cache_file.is_file():
            try:
                loaded = json.loads(cache_file.read_text())
                self._cache = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):  # a damaged cache is only a slower start
                self._cache = {}

    def stamp(self, path: Path) -> str:
        """The content hash of `path`; "missing" for a file that is not there."""
        key = str(Path(path).absolute())
        try:
            st = os.stat(key)
        except OSError:
            return "missing"
        cached = self._cache.get(key)
        if isinstance(cached, list) and len(cached) == 3 and cached[:2] == [st.st_size, st.st_mtime_ns]:
            return str(cached[2])
        digest = hash_file(Path(key))
        self.hashed += 1
        if time.time() - st.st_mtime > RACY_S:
            self._cache[key] = [st.st_size, st.st_mtime_ns, digest]
            self._dirty = True
        else:
            self._cache.pop(key, None)
        return digest

    def stamps(self, paths: Iterable[Path], label: Path | None = None) -> dict[str, str]:
        """Stamps of distinct files, keyed by their path (relative to `label` when under it)."""
        out: dict[str, str] = {}
        for p in paths:
            name = _label(Path(p), label)
            if name not in out:
                out[name] = self.stamp(Path(p))
        return out

    def save(self) -> None:
        """Write the cache (atomically) if anything new was learned; a failure costs only speed."""
        if self.cache_file is None or not self._dirty:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".file-stamps-", dir=self.cache_file.parent)
            with os.fdopen(fd, "w") as fh:
                json.dump(self._cache, fh)
            os.replace(tmp, self.cache_file)
            self._dirty = False
        except OSError:
            pass


def _label(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.absolute().relative_to(root.absolute()))
        except ValueError:
            pass
    return str(path)


def input_files(source: str, data_path: Path | None, questions: Iterable, toy_root: Path | None = None) -> list[Path]:
    """Every file a data stage reads: the question file(s) the loader reads (a folder: its files
    of the source's type), the toy world's question and scene files, and each question's image."""
    from vseam_run.data import _data_files
    from vseam_run.data.toyworld.export import QUESTIONS_FILE, SCENES_FILE

    files: list[Path] = []
    if toy_root is not None:
        files += [toy_root / QUESTIONS_FILE, toy_root / SCENES_FILE]
    elif data_path is not None:
        files += _data_files(source, Path(data_path))
    files += [Path(q.image_path) for q in questions if getattr(q, "image_path", None)]
    return files
