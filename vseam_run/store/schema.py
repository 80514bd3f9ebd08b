"""SQLAlchemy tables of the run registry.

Only `vseam_run.store` imports this module: the rest of vseam talks to `RunStore`
and gets plain dataclasses back, so the schema can change behind one version number.

Times are stored as naive UTC (SQLite has no time-zone type); `RunStore` turns them
back into aware datetimes on the way out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Bump when a table or column changes; `RunStore` refuses a registry with a newer
# version (an older vseam would misread it) and migrates older ones forward.
SCHEMA_VERSION = 2

RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "interrupted"})


class Base(DeclarativeBase):
    """Declarative base for every registry table."""


class Meta(Base):
    """Key/value facts about the registry itself, e.g. its schema version."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    """One execution of a spec, with everything needed to reproduce and judge it."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    spec_yaml: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str | None] = mapped_column(String(256))
    model_entry_yaml: Mapped[str | None] = mapped_column(Text)
    model_hash: Mapped[str | None] = mapped_column(String(128))
    versions_json: Mapped[str] = mapped_column(Text, default="{}")
    device: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    summary_json: Mapped[str | None] = mapped_column(Text)
    # A resumed run keeps its id (so checkpoints and partial results stay attached);
    # resume_count says how often that happened. resumed_from is for callers that
    # prefer to start a fresh run seeded from an older one.
    resumed_from: Mapped[str | None] = mapped_column(String(64))
    resume_count: Mapped[int] = mapped_column(Integer, default=0)
    # Who is running it and when it last showed signs of life (schema 2): a `running` run
    # whose heartbeat went stale, or whose process is gone from its host, was killed.
    host: Mapped[str | None] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)


class Metric(Base):
    """A named scalar result of a run; one value per (run, name)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_metrics_run_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    # NULL stands for NaN: SQLite cannot store NaN and silently turns it into NULL anyway.
    value: Mapped[float | None] = mapped_column(Float)


class QuestionResult(Base):
    """How the model did on one question at one stage (baseline, eval.test.modulated, ...)."""

    __tablename__ = "question_results"
    __table_args__ = (Index("ix_question_results_run_stage", "run_id", "stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(128))
    qid: Mapped[str] = mapped_column(String(256))
    split: Mapped[str | None] = mapped_column(String(64))
    category: Mapped[str | None] = mapped_column(String(128))
    gold: Mapped[str | None] = mapped_column(Text)
    pred: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    gold_prob: Mapped[float | None] = mapped_column(Float)
    extra_json: Mapped[str | None] = mapped_column(Text)


class Artifact(Base):
    """A file a run produced (heatmap, edited image, CSV), with its content hash."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("run_id", "path", name="uq_artifacts_run_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Checkpoint(Base):
    """A finished unit of a long stage (e.g. one layer of a head search), for --resume."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "stage", "key", name="uq_checkpoints_run_stage_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(256))
    payload_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Document(Base):
    """A structured result of a run (head score matrices, trace grids) stored as JSON."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_documents_run_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(256))
    json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


# Schema changes, oldest first: MIGRATIONS[v] brings a registry from version v - 1 to v.
# Plain DDL every supported backend (SQLite, PostgreSQL) understands; new columns are
# nullable, so rows written by older versions stay valid.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE runs ADD COLUMN host VARCHAR(256)",
        "ALTER TABLE runs ADD COLUMN pid INTEGER",
        "ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMP",
    ),
}


def migrate(conn: Connection, found: int) -> None:
    """Bring a registry at schema version `found` up to SCHEMA_VERSION, inside the caller's transaction."""
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS.get(version, ()):
            conn.exec_driver_sql(statement)
    conn.execute(Meta.__table__.update().where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION)))
