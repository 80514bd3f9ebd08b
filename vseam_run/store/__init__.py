"""The run registry: SQLAlchemy tables and queries. The only place in vseam that knows SQL.

Use `RunStore`; it hands back plain `RunRecord` / `ArtifactRecord` dataclasses.
"""

from vseam_run.store.records import ArtifactRecord, RunRecord
from vseam_run.store.runstore import RunStore, StageCount, new_run_id, sha256_file
from vseam_run.store.schema import RUN_STATUSES, SCHEMA_VERSION, TERMINAL_STATUSES

__all__ = [
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "TERMINAL_STATUSES",
    "ArtifactRecord",
    "RunRecord",
    "RunStore",
    "StageCount",
    "new_run_id",
    "sha256_file",
]
