"""Files of finished stages rebuilt from the registry on resume (issue 25, item 5).

A resumed run does not rerun its finished stages, so a file they wrote into a workdir that has
since been deleted stays gone. Where the registry holds the file's whole content (the edit
manifest `edits.json` is the `edits` document, written with the same formatting), the file is
written back — and only if its SHA-256 equals the one registered, so what comes back is exactly
what the stage wrote. Other files (the contact sheet `edits.png` needs the edited images, which
lived in the deleted cache) stay missing and `vseam show` marks them so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from vseam_run.store import RunStore


def _edit_manifest(store: RunStore, run_id: str) -> bytes | None:
    manifest: Any = store.get_document(run_id, "edits")
    return None if manifest is None else json.dumps(manifest, indent=1).encode()  # as stages/edit.py writes it


#: artifact kind → the file's bytes, rebuilt from the run's documents (None: nothing stored).
REBUILDERS: dict[str, Callable[[RunStore, str], bytes | None]] = {"edits.manifest": _edit_manifest}


def rebuild_missing(store: RunStore, run_id: str) -> list[str]:
    """Write back every missing artifact of `run_id` that the registry can rebuild byte for byte;
    returns their paths. A rebuilt file whose hash differs from the registered one is not written."""
    restored = []
    for a in store.get_run(run_id).artifacts:
        build = REBUILDERS.get(a.kind)
        if build is None or a.state() != "missing":
            continue
        data = build(store, run_id)
        if data is None or hashlib.sha256(data).hexdigest() != a.sha256:
            continue
        try:
            Path(a.path).parent.mkdir(parents=True, exist_ok=True)
            Path(a.path).write_bytes(data)
        except OSError:
            continue  # left missing; the resume says so
        restored.append(a.path)
    return restored
