"""Files that ship with vseam: the model registry entries and the example specs.

Their source is the repository's top-level `registry/` and `specs/` folders (where the README
points and where they are edited). A wheel copies them into the package as
`vseam_run/_shipped/registry` and `vseam_run/_shipped/specs` (see setup.py), so an installed
vseam finds them without the repository; an editable install reads the top-level folders.
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path
from typing import Literal

from vseam_run.errors import VseamError

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "_shipped"
Kind = Literal["registry", "specs"]


def shipped_dir(kind: Kind) -> Path:
    """The folder of shipped `kind` files: inside the installed package, else the source tree's."""
    inside = SHIPPED_DIR / kind
    return inside if inside.is_dir() else PACKAGE_DIR.parent / kind


def shipped_specs() -> dict[str, Path]:
    """Shipped spec name (file stem) → file, sorted by name."""
    folder = shipped_dir("specs")
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def spec_summary(path: Path) -> str:
    """The spec's first comment line (its one-line description), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def _is_bare_name(text: str) -> bool:
    return os.sep not in text and "/" not in text and (Path(text).suffix in ("", ".yaml", ".yml"))


def get_spec(name: str) -> Path:
    """A shipped spec by name (`quickstart` or `quickstart.yaml`); unknown names get close matches."""
    known = shipped_specs()
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in (".yaml", ".yml") else name
    if stem in known:
        return known[stem]
    close = difflib.get_close_matches(stem, list(known), n=3, cutoff=0.5)
    did_you_mean = f"did you mean {' or '.join(close)}? " if close else ""
    raise VseamError(
        f"no shipped spec named '{name}': {did_you_mean}shipped specs: {', '.join(known) or '(none)'}",
        hint="`vseam specs` lists them; or pass the path of a spec file",
    )


def resolve_spec(arg: Path) -> Path:
    """What `vseam run ARG` reads: an existing file as given; else a bare name that names a
    shipped spec (`vseam run quickstart` from any folder). Anything else is returned unchanged,
    so reading it reports 'file not found' with the path the user typed."""
    if arg.exists() or not _is_bare_name(str(arg)):
        return arg
    if Path(str(arg)).suffix == "":
        return get_spec(str(arg))  # `quickstart`: only a shipped spec can be meant
    return shipped_specs().get(arg.stem, arg)


def copy_spec(name: str, dest: Path | None, *, force: bool = False) -> Path:
    """Copy a shipped spec to `dest` (a file, or a folder to copy into; default ./NAME.yaml)."""
    src = get_spec(name)
    target = Path(dest) if dest is not None else Path(src.name)
    if target.is_dir():
        target = target / src.name
    if target.exists() and not force:
        raise VseamError(f"{target} already exists", hint="pass another destination, or --force to overwrite it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    except OSError as e:
        raise VseamError(f"cannot write {target}: {e.strerror or e}", hint="pass a writable destination") from None
    return target


def user_zoo_dir() -> Path:
    """Where `vseam zoo train` puts checkpoints by default: $VSEAM_ZOO, else ~/.cache/vseam/zoo
    (following XDG_CACHE_HOME). Never the installed package, which may be read-only or shared."""
    if os.environ.get("VSEAM_ZOO"):
        return Path(os.environ["VSEAM_ZOO"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "vseam" / "zoo"
