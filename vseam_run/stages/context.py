"""What the pipeline gives a stage (pipeline._Stages has it): the model, the registry, where
artifacts go, and ways to log and record."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from vseam_run.store import RunStore
from vseam_run.vlm import VLM


class StageContext(Protocol):
    """What the pipeline gives a stage (pipeline._Stages has it)."""

    vlm: VLM
    store: RunStore
    run_id: str
    art_dir: Path
    log: Callable[[Any], None]

    def record(self, metrics: dict[str, float]) -> None: ...

    def artifact(self, kind: str, path: Path) -> None: ...
