"""Fingerprints: what a stored result was computed from.

A stored result (a finished stage, one layer of a head search) is reused only when the
fingerprint of what it would be computed from now equals the one stored with it. A
fingerprint is a set of named *parts* — the model, the questions, the spec section a stage
reads — each reduced to a SHA-256 of its canonical JSON; the whole is the hash of the parts.
Keeping the parts (not only the whole) lets a refusal say *what* changed ("model weights",
"questions"), not just that something did.

What goes into a part is conservative: everything that can change a number. That includes
the batch size (padding and the order of float reductions change the last bits, and a
resumed search must not mix layers computed both ways), the resolved device type and dtype,
and the torch / transformers versions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

# Weight files above this size are fingerprinted by their size and their first and last
# bytes rather than read whole: a retrained model changes every tensor, and reading 14 GB
# on every run start would cost more than the check is worth.
_FULL_HASH_LIMIT = 16 << 20
_SAMPLE_BYTES = 4 << 20

#: Spec fields a `vseam run --resume RUN --set ...` may change. Empty on purpose: every field
#: of the spec can change a stored number or file (batch sizes: padding and float reduction
#: order; device / dtype: numerics; workdir: where earlier artifacts and caches are; name:
#: the titles of the figures already written). A different setting is a new run.
RESUME_SETTABLE_FIELDS: frozenset[str] = frozenset()


def _canonical(obj: Any) -> Any:
    """JSON-able form with a stable layout: pydantic models dumped, paths as strings."""
    if hasattr(obj, "model_dump"):
        return _canonical(obj.model_dump(mode="json"))
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    return obj


def digest(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of `obj` (sorted keys, no whitespace)."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """Named part digests; `value` is the digest of them all."""

    parts: dict[str, str] = field(default_factory=dict)
    #: File → content hash of the input files behind the part "files" (see `with_files`), kept
    #: whole so a refusal can name the file that changed.
    files: dict[str, str] = field(default_factory=dict)

    @property
    def value(self) -> str:
        return digest(self.parts)

    def changed(self, stored_parts: Mapping[str, str]) -> list[str]:
        """Names of the parts that differ from `stored_parts` (including ones added or dropped)."""
        return sorted(k for k in set(self.parts) | set(stored_parts) if self.parts.get(k) != stored_parts.get(k))

    def with_files(self, files: Mapping[str, str]) -> "Fingerprint":
        """This fingerprint plus the content of the input files read (`vseam_run.filestamps`)."""
        return Fingerprint({**self.parts, "files": digest(dict(files))}, dict(files))

    def changed_files(self, stored_files: Mapping[str, str]) -> list[str]:
        """Files whose content differs from `stored_files` (added, removed or changed), in order."""
        return sorted(k for k in set(self.files) | set(stored_files) if self.files.get(k) != stored_files.get(k))


def fingerprint(**parts: Any) -> Fingerprint:
    """A fingerprint of named inputs; a part that is itself a Fingerprint contributes its value,
    so a stage can name the upstream stage it builds on (``fingerprint(search=search_fp, ...)``)."""
    return Fingerprint({k: v.value if isinstance(v, Fingerprint) else digest(v) for k, v in parts.items()})


def questions_part(questions: Iterable[Any], split_of: Mapping[str, str] | None = None) -> list[list[str]]:
    """The questions in order: id, text, answer, image file and split — what a stage reads of them."""
    split_of = split_of or {}
    return [
        [str(q.qid), str(q.question), str(q.answer), str(getattr(q, "image_path", "")), split_of.get(q.qid, "")]
        for q in questions
    ]


def items_part(items: Iterable[Any]) -> list[list[Any]]:
    """Scored items in order: id, question, gold token id and split."""
    return [[it.qid, it.question, int(it.gold_id), getattr(it, "split", "")] for it in items]


def _file_stamp(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(_SAMPLE_BYTES))
            fh.seek(size - _SAMPLE_BYTES)
            h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


def weights_stamp(folder: Path | None) -> dict[str, str]:
    """File name → content stamp of a checkpoint folder (config, processor, weights), so a
    model retrained in place (`vseam zoo train`) no longer matches results of the old one."""
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: _file_stamp(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _checkpoint_folder(entry: Any) -> Path | None:
    path = entry.resolved_path()
    if path is not None:
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(entry.hf_id, "config.json", revision=entry.revision)
    except Exception:  # no cache, offline quirks: the entry's id and revision still count
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def model_part(entry: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """Everything about the model that changes its numbers: the registry entry, the weights,
    the device type, the dtype and the library versions that run it."""
    versions = {}
    for pkg in ("torch", "transformers"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "entry": entry.content_hash(),
        "weights": weights_stamp(_checkpoint_folder(entry)),
        "device": getattr(device, "type", str(device)),
        "dtype": str(dtype),
        **versions,
    }


def spec_changes(stored: Any, new: Any, allowed: frozenset[str] = RESUME_SETTABLE_FIELDS) -> list[str]:
    """Dotted spec fields whose value differs between two specs, minus the `allowed` ones."""
    from vseam_run.store.views import flatten

    a, b = flatten(_canonical(stored)), flatten(_canonical(new))
    missing = object()
    return sorted(k for k in set(a) | set(b) if a.get(k, missing) != b.get(k, missing) and k not in allowed)
