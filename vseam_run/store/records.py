"""Plain records returned by `RunStore`: no SQLAlchemy objects leak out of `store/`."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import yaml

#: How often a working run refreshes its heartbeat, and how old a heartbeat may get before a
#: `running` run counts as lost. Generous: a beat can wait for a registry locked by a writer.
HEARTBEAT_INTERVAL_S = 5.0
STALE_AFTER_S = 120.0


@dataclass(frozen=True)
class ArtifactRecord:
    """A file a run produced, as registered with `RunStore.add_artifact`."""

    kind: str
    path: str
    sha256: str
    size_bytes: int
    created_at: datetime

    def state(self) -> str:
        """"present", or "missing" (deleted since, e.g. with its workdir) or "changed" (another size
        than when it was registered); a cheap look, the file is not hashed."""
        import os

        try:
            size = os.stat(self.path).st_size
        except OSError:
            return "missing"
        return "present" if size == self.size_bytes else "changed"


@dataclass(frozen=True)
class RunRecord:
    """Everything the registry knows about one run (metrics and artifacts included)."""

    id: str
    name: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    spec_yaml: str
    spec_hash: str
    model_name: str | None
    model_entry_yaml: str | None
    model_hash: str | None
    versions: dict[str, str]
    device: str | None
    seed: int | None
    error_message: str | None
    error_traceback: str | None
    summary: Any | None
    resumed_from: str | None
    resume_count: int
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    host: str | None = None
    pid: int | None = None
    heartbeat_at: datetime | None = None

    def heartbeat_age_s(self, now: datetime | None = None) -> float:
        """Seconds since the last sign of life (creation, for runs from before heartbeats)."""
        last = self.heartbeat_at or self.created_at
        return ((now or datetime.now(timezone.utc)) - last).total_seconds()

    def process_gone(self) -> bool:
        """True when the run's process is known to be dead: same host, and no such pid."""
        if self.pid is None or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OSError):
            return False  # someone else's live process (or no way to tell)
        return False

    def is_lost(self, now: datetime | None = None, stale_after_s: float = STALE_AFTER_S) -> bool:
        """A `running` run that nobody runs any more (killed, machine gone)."""
        return self.status == "running" and (self.process_gone() or self.heartbeat_age_s(now) > stale_after_s)

    def shown_status(self, now: datetime | None = None) -> str:
        """The status to show: the stored one, or `lost` for a running run that is not alive."""
        return "lost" if self.is_lost(now) else self.status

    @property
    def duration_s(self) -> float | None:
        """Wall time from creation to the terminal state; None while still running."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()

    def elapsed_s(self, now: datetime | None = None) -> float:
        """Wall time so far (or in total, once finished)."""
        end = self.finished_at or now or datetime.now(timezone.utc)
        return (end - self.created_at).total_seconds()

    def spec(self) -> dict[str, Any]:
        """The resolved spec parsed back from YAML (an empty dict if none was stored)."""
        loaded = yaml.safe_load(self.spec_yaml) if self.spec_yaml else None
        # A spec is a mapping; anything else (a bare scalar from a broken writer) is
        # wrapped so callers can always treat it as a dict.
        if loaded is None:
            return {}
        return loaded if isinstance(loaded, dict) else {"spec": loaded}

    def metric(self, name: str) -> float | None:
        """One metric, None when absent or NaN (so tables and JSON show a blank)."""
        value = self.metrics.get(name)
        if value is None or math.isnan(value):
            return None
        return value
