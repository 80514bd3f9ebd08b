"""`RunStore`: the run registry behind `vseam run`, `runs`, `show` and `compare`.

Every write is its own short transaction that commits before the method returns, so a
crash or Ctrl-C in the middle of a long run loses nothing already recorded, and a
reader (`vseam runs` in another terminal) sees progress as it happens. SQLite files are
opened in WAL mode for the same reason: readers never block the writer.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Engine, case, create_engine, delete, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from vseam_run.errors import VseamError
from vseam_run.store import connect, readonly
from vseam_run.store.records import ArtifactRecord, RunRecord
from vseam_run.store.schema import (
    RUN_STATUSES,
    SCHEMA_VERSION,
    TERMINAL_STATUSES,
    Artifact,
    Base,
    Checkpoint,
    Document,
    Meta,
    Metric,
    QuestionResult,
    Run,
    migrate,
)

# Keys accepted by `log_question_results`; anything else is a caller's typo.
_QUESTION_KEYS = frozenset({"qid", "split", "category", "gold", "pred", "correct", "gold_prob", "extra"})
_HASH_CHUNK = 1 << 20
# One transaction at a time per process: a run's heartbeat thread writes beside the main
# thread, and an in-memory registry shares one connection between them.
_TX_LOCK = threading.RLock()


class StageCount(NamedTuple):
    """How many questions a stage recorded, and how many of them were answered correctly."""

    questions: int
    correct: int


def _utcnow() -> datetime:
    # Stored naive: SQLite's DateTime drops the zone, so every stored time is UTC by rule.
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _json_default(obj: Any) -> Any:
    """Make the objects experiments actually produce (numpy, tensors, paths) JSON-able."""
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot store {type(obj).__name__} as JSON")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=False)


def _text_or_none(value: Any) -> str | None:
    # Answers are usually strings, but some sources give numbers or a list of accepted
    # answers; keep them readable rather than reject them.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return _dumps(value)


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


def new_run_id(now: datetime | None = None) -> str:
    """A readable id that sorts by creation time: UTC ``YYYYMMDD-HHMMSS-`` plus 6 hex digits."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large artifacts don't fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class RunStore:
    """The run registry: runs, their metrics, per-question results, artifacts, checkpoints.

    ``url_or_path`` is a file path (an SQLite file, created with its parent folders when
    absent) or, when it contains ``://``, an SQLAlchemy URL such as
    ``postgresql+psycopg://user@host/vseam``. ``":memory:"`` gives a throwaway registry.

    With ``must_exist=True`` (the query commands) an absent SQLite file is an error
    instead of being created, so a mistyped ``--db`` doesn't silently show nothing.

    Example::

        store = RunStore("runs.db")
        run_id = store.create_run(name="quickstart", spec_yaml=..., spec_hash=...)
        store.log_metrics(run_id, {"baseline.accuracy": 0.9})
        store.set_status(run_id, "succeeded")
    """

    def __init__(self, url_or_path: str | os.PathLike[str], *, must_exist: bool = False) -> None:
        target = str(url_or_path)
        self._timeout = connect.connect_timeout()
        # A reading command on a file in a read-only folder opens it read-only (store/readonly.py).
        local_file = "://" not in target and target.strip() not in ("", ":memory:")
        self.read_only = must_exist and local_file and readonly.folder_is_read_only(Path(target).expanduser())
        self._engine, self.where, password = self._connect(target, must_exist=must_exist, timeout=self._timeout,
                                                           read_only=self.read_only)
        is_sqlite = self._engine.url.get_backend_name() == "sqlite"
        try:
            if not is_sqlite:
                connect.first_connect(self._engine, self.where, self._timeout)
            self._prepare_schema()
        except VseamError:
            self._engine.dispose()
            raise
        except (DatabaseError, OperationalError) as e:
            self._engine.dispose()
            raise connect.classify(self.where, e, is_sqlite=is_sqlite, password=password, timeout=self._timeout) from None
        except BaseException:
            self._engine.dispose()
            raise
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    # ------------------------------------------------------------------ opening

    @staticmethod
    def _connect(target: str, *, must_exist: bool, timeout: float, read_only: bool = False) -> tuple[Engine, str, str | None]:
        """Build the engine; returns it with a printable name for messages (no password) and the
        password (so messages from the driver can be scrubbed of it)."""
        if target.strip() == "":
            # An empty --db / VSEAM_DB is a mistake (an unset variable), not a wish for a
            # throwaway registry whose runs vanish at exit.
            raise VseamError(
                "--db is empty",
                hint="pass --db with a file path (e.g. runs.db) or a database URL; ':memory:' gives a throwaway registry",
            )
        if target == ":memory:":
            # One shared connection, else every pooled connection would see its own empty db.
            engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
            _install_sqlite_pragmas(engine, wal=False)
            return engine, ":memory:", None
        if "://" in target:
            try:
                url = connect.with_default_driver(make_url(target))
                url.port  # a port that is not a number, an unclosed [IPv6 bracket: ValueError here, not later
            except (ArgumentError, ValueError) as e:
                why = connect.mask(str(e)) if isinstance(e, ArgumentError) else (
                    "its port is not a number (an IPv6 host goes in brackets: postgresql://[::1]:5432/db)")
                raise VseamError(
                    f"--db {connect.mask(target)!r} is not a valid SQLAlchemy URL: {why}",
                    hint="e.g. postgresql+psycopg://user@host/vseam or sqlite:///runs.db",
                ) from None
            where = connect.display(url)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                _check_sqlite_path(Path(url.database), where=where, must_exist=must_exist)
            try:
                engine = create_engine(url, connect_args=connect.connect_args(url, timeout))
            except ImportError as e:  # the DBAPI module, e.g. psycopg, is not installed
                raise connect.missing_driver(where, url, e) from None
            except Exception as e:
                raise VseamError(f"cannot open run registry {where}: {connect.mask(str(e), url.password)}") from None
            if url.get_backend_name() == "sqlite":
                _install_sqlite_pragmas(engine, wal=url.database not in (None, "", ":memory:"))
            secrets = [str(v) for k, v in url.query.items() if connect._SECRET_PARAM.search(k) and isinstance(v, str)]
            return engine, where, url.password or (secrets[0] if secrets else None)
        path = Path(target).expanduser()
        _check_sqlite_path(path, where=str(path), must_exist=must_exist)
        if read_only:
            engine = readonly.read_only_engine(path)
            _install_sqlite_pragmas(engine, wal=False)
            return engine, str(path), None
        # A generous lock timeout: a query from another terminal may briefly hold the file.
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
        _install_sqlite_pragmas(engine, wal=True)
        return engine, str(path), None

    def _prepare_schema(self) -> None:
        """Create missing tables and record/verify the schema version, in one transaction."""
        with self._engine.begin() as conn:
            if conn.dialect.name == "sqlite" and not self.read_only:
                # Take the write lock before looking: processes opening a new file at once must
                # not both find it empty and both create it (the others wait, then see it made).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                # The same for a server: one transaction-scoped lock (any fixed key) serializes
                # processes creating the tables of an empty database at once.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7537656)")
            tables = set(inspect(conn).get_table_names())
            found: int | None = None
            if "meta" in tables and not {"key", "value"} <= {c["name"] for c in inspect(conn).get_columns("meta")}:
                # Someone else's table of that common name: not ours, whatever else is there.
                raise VseamError(
                    f"{self.where} is a database but not a vseam run registry (its 'meta' table has no key/value "
                    f"columns; tables: {', '.join(sorted(tables))})",
                    hint="pass --db with a vseam registry file, or a new path to start one",
                )
            if "meta" in tables:
                raw = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar_one_or_none()
                found = int(raw) if raw is not None else None
            elif tables:
                # Someone else's database: adding our tables to it would be rude and confusing.
                raise VseamError(
                    f"{self.where} is a database but not a vseam run registry (tables: {', '.join(sorted(tables))})",
                    hint="pass --db with a vseam registry file, or a new path to start one",
                )
            if found is not None and found > SCHEMA_VERSION:
                raise VseamError(
                    f"run registry {self.where} has schema version {found}, newer than this vseam "
                    f"understands ({SCHEMA_VERSION})",
                    hint="upgrade vseam, or pass --db with another registry",
                )
            if self.read_only:
                if found != SCHEMA_VERSION or not set(Base.metadata.tables) <= tables:
                    raise readonly.schema_refused(self.where)
                return
            Base.metadata.create_all(conn)
            if found is None:
                conn.execute(Meta.__table__.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif found < SCHEMA_VERSION:
                migrate(conn, found)

    def close(self) -> None:
        """Release the database connections (the file stays consistent either way)."""
        self._engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({self.where!r})"

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """One short transaction that commits on exit, so each write is durable at once."""
        try:
            with _TX_LOCK, self._sessions.begin() as session:
                yield session
        except DatabaseError as e:
            if self.read_only and "readonly" in str(e).replace(" ", "").lower():
                raise readonly.write_refused(self.where) from e
            # Disk full, read-only file, a lock held too long, a damaged file: the user can act on these.
            raise connect.query_error(self.where, e) from e

    def _run(self, session: Session, run_id: str) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise VseamError(f"no run '{run_id}' in {self.where}", hint="vseam runs lists them")
        return run

    # ------------------------------------------------------------------ runs

    def create_run(
        self,
        *,
        name: str,
        spec_yaml: str,
        spec_hash: str,
        model_name: str | None = None,
        model_entry_yaml: str | None = None,
        model_hash: str | None = None,
        versions: Mapping[str, str] | None = None,
        device: str | None = None,
        seed: int | None = None,
        resumed_from: str | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> str:
        """Record a new run in state ``running`` and return its id (e.g. ``20261126-211530-3fa2c1``).

        ``host`` and ``pid`` (default: this process) say who runs it; its heartbeat starts now.
        """
        for _ in range(5):
            now = datetime.now(timezone.utc)
            run = Run(
                id=new_run_id(now),
                name=name,
                status="running",
                created_at=now.replace(tzinfo=None),
                finished_at=None,
                spec_yaml=spec_yaml,
                spec_hash=spec_hash,
                model_name=model_name,
                model_entry_yaml=model_entry_yaml,
                model_hash=model_hash,
                versions_json=_dumps(dict(versions or {})),
                device=device,
                seed=seed,
                resumed_from=resumed_from,
                resume_count=0,
                host=host or socket.gethostname(),
                pid=os.getpid() if pid is None else pid,
                heartbeat_at=now.replace(tzinfo=None),
            )
            try:
                with self._tx() as session:
                    session.add(run)
                return run.id
            except IntegrityError:
                continue  # same second and same 24 random bits: draw again
        raise RuntimeError("could not allocate a unique run id")

    def set_status(
        self,
        run_id: str,
        status: str,
        error_message: str | None = None,
        error_traceback: str | None = None,
    ) -> None:
        """Move a run to ``status``; terminal states stamp ``finished_at``, ``running`` clears it.

        The error fields are overwritten (None clears them), so a resumed run that then
        succeeds no longer carries its earlier failure.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
        with self._tx() as session:
            run = self._run(session, run_id)
            run.status = status
            run.finished_at = _utcnow() if status in TERMINAL_STATUSES else None
            run.error_message = error_message
            run.error_traceback = error_traceback

    def mark_resumed(self, run_id: str) -> None:
        """Put a failed or interrupted run back to ``running`` for ``vseam run --resume``.

        Its checkpoints, metrics and results stay; ``resume_count`` goes up by one; this
        process becomes its owner (host, pid) and its heartbeat starts again.
        """
        with self._tx() as session:
            run = self._run(session, run_id)
            run.host, run.pid, run.heartbeat_at = socket.gethostname(), os.getpid(), _utcnow()
            run.status = "running"
            run.finished_at = None
            run.error_message = None
            run.error_traceback = None
            run.resume_count = (run.resume_count or 0) + 1

    def heartbeat(self, run_id: str, at: datetime | None = None) -> None:
        """Note that the run is alive (now, or at ``at``, an aware time: tests age a run with it)."""
        stamp = _utcnow() if at is None else at.astimezone(timezone.utc).replace(tzinfo=None)
        with self._tx() as session:
            self._run(session, run_id).heartbeat_at = stamp

    def update_spec(self, run_id: str, spec_yaml: str, spec_hash: str) -> None:
        """Replace the stored resolved spec (e.g. once defaults resolved at run time are known)."""
        with self._tx() as session:
            run = self._run(session, run_id)
            run.spec_yaml = spec_yaml
            run.spec_hash = spec_hash

    def set_summary(self, run_id: str, summary: Any) -> None:
        """Store a JSON-able overview of the run (what `vseam show` prints at the top)."""
        with self._tx() as session:
            self._run(session, run_id).summary_json = _dumps(summary)

    def delete_run(self, run_id: str) -> None:
        """Remove a run and everything recorded under it (files on disk are left alone)."""
        with self._tx() as session:
            run = self._run(session, run_id)
            # Explicit deletes rather than relying on ON DELETE CASCADE, which SQLite
            # only honours with a pragma some other tools don't set.
            for table in (Metric, QuestionResult, Artifact, Checkpoint, Document):
                session.execute(delete(table).where(table.run_id == run_id))
            session.delete(run)

    # ------------------------------------------------------------------ results

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | int | bool]) -> None:
        """Insert or overwrite named scalar metrics of a run (NaN is kept as "no value")."""
        values: dict[str, float | None] = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"metric names must be non-empty strings, got {name!r}")
            values[name] = _float_or_none(value)
        if not values:
            return
        with self._tx() as session:
            self._run(session, run_id)
            existing = {
                m.name: m
                for m in session.scalars(
                    select(Metric).where(Metric.run_id == run_id, Metric.name.in_(list(values)))
                )
            }
            for name, value in values.items():
                if name in existing:
                    existing[name].value = value
                else:
                    session.add(Metric(run_id=run_id, name=name, value=value))

    def log_question_results(self, run_id: str, stage: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the per-question results of one stage of a run.

        Each row has ``qid`` and optionally ``split``, ``category``, ``gold``, ``pred``,
        ``correct``, ``gold_prob`` and ``extra`` (a JSON-able dict). Replacing, not
        appending, keeps a re-run stage from counting its questions twice.
        """
        records: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            unknown = set(row) - _QUESTION_KEYS
            if unknown:
                raise ValueError(
                    f"question result {i} of stage {stage!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                    f"expected {', '.join(sorted(_QUESTION_KEYS))}"
                )
            if row.get("qid") is None:
                raise ValueError(f"question result {i} of stage {stage!r} has no qid")
            correct = row.get("correct")
            extra = row.get("extra")
            records.append(
                {
                    "run_id": run_id,
                    "stage": stage,
                    "qid": str(row["qid"]),
                    "split": row.get("split"),
                    "category": row.get("category"),
                    "gold": _text_or_none(row.get("gold")),
                    "pred": _text_or_none(row.get("pred")),
                    "correct": None if correct is None else bool(correct),
                    "gold_prob": _float_or_none(row.get("gold_prob")),
                    "extra_json": None if extra is None else _dumps(extra),
                }
            )
        with self._tx() as session:
            self._run(session, run_id)
            session.execute(
                delete(QuestionResult).where(QuestionResult.run_id == run_id, QuestionResult.stage == stage)
            )
            if records:
                session.execute(QuestionResult.__table__.insert(), records)

    def add_artifact(self, run_id: str, kind: str, path: str | os.PathLike[str]) -> str:
        """Register a file the run wrote and return its SHA-256; registering a path again updates it."""
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise VseamError(f"artifact {file} does not exist or is not a file (kind {kind!r}, run {run_id})")
        digest = sha256_file(file)
        size = file.stat().st_size
        with self._tx() as session:
            self._run(session, run_id)
            artifact = session.scalars(
                select(Artifact).where(Artifact.run_id == run_id, Artifact.path == str(file))
            ).one_or_none()
            if artifact is None:
                session.add(
                    Artifact(
                        run_id=run_id, kind=kind, path=str(file), sha256=digest, size_bytes=size, created_at=_utcnow()
                    )
                )
            else:
                artifact.kind, artifact.sha256, artifact.size_bytes = kind, digest, size
                artifact.created_at = _utcnow()
        return digest

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, run_id: str, stage: str, key: str, payload: dict[str, Any] | list[Any]) -> None:
        """Save (or overwrite) one finished unit of a stage, e.g. ``("heads", "layer.12", {...})``."""
        text = _dumps(payload)
        with self._tx() as session:
            self._run(session, run_id)
            ckpt = session.scalars(
                select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.stage == stage, Checkpoint.key == key)
            ).one_or_none()
            if ckpt is None:
                session.add(Checkpoint(run_id=run_id, stage=stage, key=key, payload_json=text, created_at=_utcnow()))
            else:
                ckpt.payload_json, ckpt.created_at = text, _utcnow()

    def load_checkpoints(self, run_id: str, stage: str) -> dict[str, Any]:
        """All checkpoints of a stage, key → payload, in the order they were first saved."""
        with self._tx() as session:
            rows = session.execute(
                select(Checkpoint.key, Checkpoint.payload_json)
                .where(Checkpoint.run_id == run_id, Checkpoint.stage == stage)
                .order_by(Checkpoint.id)
            )
            return {key: json.loads(text) for key, text in rows}

    def checkpoint_keys(self, run_id: str) -> dict[str, list[str]]:
        """Every stage's checkpoint keys (no payloads), stage → keys in the order first saved:
        what an interrupted run has stored (`vseam show`)."""
        with self._tx() as session:
            rows = session.execute(
                select(Checkpoint.stage, Checkpoint.key).where(Checkpoint.run_id == run_id).order_by(Checkpoint.id)
            )
            out: dict[str, list[str]] = {}
            for stage, key in rows:
                out.setdefault(stage, []).append(key)
            return out

    def delete_checkpoints(self, run_id: str, stage: str) -> int:
        """Drop a stage's checkpoints (once its final result is stored); returns how many."""
        with self._tx() as session:
            result = session.execute(
                delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.stage == stage)
            )
            return int(result.rowcount or 0)

    # ------------------------------------------------------------------ documents

    def put_document(self, run_id: str, key: str, obj: Any) -> None:
        """Store a JSON-able structured result under ``key`` (overwrites). numpy arrays are fine."""
        text = _dumps(obj)
        with self._tx() as session:
            self._run(session, run_id)
            doc = session.scalars(select(Document).where(Document.run_id == run_id, Document.key == key)).one_or_none()
            if doc is None:
                session.add(Document(run_id=run_id, key=key, json=text, updated_at=_utcnow()))
            else:
                doc.json, doc.updated_at = text, _utcnow()

    def get_document(self, run_id: str, key: str) -> Any | None:
        """The document stored under ``key``, or None."""
        with self._tx() as session:
            text = session.scalars(
                select(Document.json).where(Document.run_id == run_id, Document.key == key)
            ).one_or_none()
        return None if text is None else json.loads(text)

    def documents(self, run_id: str) -> dict[str, Any]:
        """Every document of a run, key → object, sorted by key."""
        with self._tx() as session:
            rows = session.execute(
                select(Document.key, Document.json).where(Document.run_id == run_id).order_by(Document.key)
            )
            return {key: json.loads(text) for key, text in rows}

    # ------------------------------------------------------------------ queries

    def resolve(self, ref: str) -> str:
        """Turn ``latest``, a full id or a unique id prefix into a run id.

        Anything else raises `VseamError` naming the registry and close matches.
        """
        ref = ref.strip()
        with self._tx() as session:
            if ref == "latest":
                newest = session.scalars(select(Run.id).order_by(Run.created_at.desc(), Run.id.desc()).limit(1)).first()
                if newest is None:
                    raise VseamError(f"no runs in {self.where} yet", hint="vseam run SPEC creates one")
                return newest
            if ref and session.get(Run, ref) is not None:
                return ref
            matches: list[str] = []
            if ref:
                escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                matches = list(
                    session.scalars(select(Run.id).where(Run.id.like(f"{escaped}%", escape="\\")).order_by(Run.id))
                )
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
                raise VseamError(
                    f"run '{ref}' is ambiguous in {self.where}: {len(matches)} runs start with it ({shown})",
                    hint="give more characters of the id",
                )
            rows = session.execute(select(Run.id, Run.name).order_by(Run.created_at.desc())).all()
        suggestions = [run_id for run_id, name in rows if name == ref][:3]
        suggestions += [s for s in difflib.get_close_matches(ref, [r for r, _ in rows], n=3) if s not in suggestions]
        message = f"no run '{ref}' in {self.where}"
        if suggestions:
            message += f"; did you mean {', '.join(suggestions)}?"
        raise VseamError(message + " (vseam runs lists them)")

    def get_run(self, run_id: str) -> RunRecord:
        """The full record of one run (an exact id; use `resolve` for user input)."""
        with self._tx() as session:
            return self._records(session, [self._run(session, run_id)])[0]

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        """Runs newest first, each with its metrics and artifacts."""
        with self._tx() as session:
            query = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
            if limit is not None:
                query = query.limit(limit)
            return self._records(session, list(session.scalars(query)))

    def count_runs(self) -> int:
        """How many runs the registry holds (to say "showing 50 of 312")."""
        with self._tx() as session:
            return int(session.scalar(select(func.count()).select_from(Run)) or 0)

    def question_results(self, run_id: str, stage: str | None = None) -> list[dict[str, Any]]:
        """Per-question rows of a run (one stage, or all), in the order they were logged."""
        with self._tx() as session:
            query = select(QuestionResult).where(QuestionResult.run_id == run_id)
            if stage is not None:
                query = query.where(QuestionResult.stage == stage)
            return [
                {
                    "stage": q.stage,
                    "qid": q.qid,
                    "split": q.split,
                    "category": q.category,
                    "gold": q.gold,
                    "pred": q.pred,
                    "correct": q.correct,
                    "gold_prob": q.gold_prob,
                    "extra": None if q.extra_json is None else json.loads(q.extra_json),
                }
                for q in session.scalars(query.order_by(QuestionResult.id))
            ]

    def question_stages(self, run_id: str) -> dict[str, StageCount]:
        """Stages with per-question results, each with its question and correct counts."""
        with self._tx() as session:
            rows = session.execute(
                select(
                    QuestionResult.stage,
                    func.count(),
                    func.coalesce(func.sum(case((QuestionResult.correct.is_(True), 1), else_=0)), 0),
                )
                .where(QuestionResult.run_id == run_id)
                .group_by(QuestionResult.stage)
                .order_by(func.min(QuestionResult.id))
            )
            return {stage: StageCount(int(n), int(ok)) for stage, n, ok in rows}

    @staticmethod
    def _records(session: Session, runs: list[Run]) -> list[RunRecord]:
        """Attach metrics and artifacts to runs with one query each, not one per run."""
        ids = [r.id for r in runs]
        metrics: dict[str, dict[str, float]] = {i: {} for i in ids}
        artifacts: dict[str, list[ArtifactRecord]] = {i: [] for i in ids}
        if ids:
            for m in session.scalars(select(Metric).where(Metric.run_id.in_(ids)).order_by(Metric.name)):
                metrics[m.run_id][m.name] = math.nan if m.value is None else m.value
            for a in session.scalars(select(Artifact).where(Artifact.run_id.in_(ids)).order_by(Artifact.id)):
                created = _aware(a.created_at)
                assert created is not None
                artifacts[a.run_id].append(ArtifactRecord(a.kind, a.path, a.sha256, a.size_bytes, created))
        records: list[RunRecord] = []
        for r in runs:
            created_at = _aware(r.created_at)
            assert created_at is not None
            records.append(
                RunRecord(
                    id=r.id,
                    name=r.name,
                    status=r.status,
                    created_at=created_at,
                    finished_at=_aware(r.finished_at),
                    spec_yaml=r.spec_yaml,
                    spec_hash=r.spec_hash,
                    model_name=r.model_name,
                    model_entry_yaml=r.model_entry_yaml,
                    model_hash=r.model_hash,
                    versions=json.loads(r.versions_json or "{}"),
                    device=r.device,
                    seed=r.seed,
                    error_message=r.error_message,
                    error_traceback=r.error_traceback,
                    summary=None if r.summary_json is None else json.loads(r.summary_json),
                    resumed_from=r.resumed_from,
                    resume_count=r.resume_count or 0,
                    metrics=metrics[r.id],
                    artifacts=artifacts[r.id],
                    host=r.host,
                    pid=r.pid,
                    heartbeat_at=_aware(r.heartbeat_at),
                )
            )
        return records


def _check_sqlite_path(path: Path, *, where: str, must_exist: bool) -> None:
    """Fail early, naming the path, rather than with SQLite's "unable to open database file"."""
    if path.is_dir():
        raise VseamError(f"run registry {where} is a directory", hint="pass --db with a file path, e.g. runs.db")
    if path.exists():
        if not must_exist and not os.access(path, os.W_OK):
            raise VseamError(
                f"cannot write run registry {where}: the file is read-only",
                hint="pass --db with a writable path",
            )
        if not must_exist and readonly.folder_is_read_only(path):
            raise readonly.write_refused(where)
        return
    if must_exist:
        raise VseamError(f"no run registry at {where} (vseam run creates it; pass --db)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Probe by creating the file now: otherwise SQLite would only fail at the first
        # write, with a message that names neither the file nor the fix.
        path.touch(exist_ok=True)
    except OSError as e:
        raise VseamError(
            f"cannot write run registry {where}: {e.strerror or e}",
            hint="pass --db with a writable path",
        ) from e


def _install_sqlite_pragmas(engine: Engine, *, wal: bool) -> None:
    """Per-connection SQLite settings: enforce foreign keys; WAL so readers don't block the run."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            if wal:
                _enable_wal(cursor)
        finally:
            cursor.close()


def _enable_wal(cursor: Any, wait_s: float = 30.0) -> None:
    """Switch the file to WAL (readers then never block the run). The switch needs a moment of
    exclusive access that SQLite does not wait for, so a process opening a registry that another
    one is creating retries for a while; once the file is in WAL mode this is a cheap read."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
