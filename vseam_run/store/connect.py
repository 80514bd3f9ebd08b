"""Opening a run registry's database: the timeout, the driver, and messages that say what went wrong.

Kept apart from `runstore.py` (which knows the tables) because everything here is about the
moment of connecting: a server that accepts and never answers must not hang `vseam run`, a
password in a URL must never reach a message, and each way of failing gets the hint that
fixes it (permission, not a registry, cannot connect, driver missing).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from vseam_run.errors import VseamError

#: Seconds to wait for a database server before giving up; env VSEAM_DB_TIMEOUT overrides.
DEFAULT_TIMEOUT_S = 10.0
POSTGRES_EXTRA = 'pip install "vseam[postgres]"'

# user:password@ in anything that looks like a URL, for text we could not parse as one.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def connect_timeout() -> float:
    """VSEAM_DB_TIMEOUT in seconds (default 10); a value that is not a positive number is an error."""
    raw = os.environ.get("VSEAM_DB_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise VseamError(f"VSEAM_DB_TIMEOUT={raw!r} is not a positive number of seconds", hint="e.g. VSEAM_DB_TIMEOUT=30")
    return value


# Query parameters of a database URL that carry a credential (libpq's password, sslpassword,
# sslkey passphrases; cloud drivers' tokens and secrets), masked wherever a URL is printed.
_SECRET_PARAM = re.compile(r"(?i)(pass|pwd|secret|token|key|auth|credential)")
_QUERY_SECRET = re.compile(r"(?i)([?&;][^=&\s]*(?:pass|pwd|secret|token|key|auth|credential)[^=&\s]*=)[^&\s'\"]*")


def mask(text: str, password: str | None = None) -> str:
    """`text` with the URL password, any user:password@ and any credential query parameter
    (`?password=...`, `sslpassword`, `token`, ...) replaced by ***."""
    if password:
        text = text.replace(password, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _QUERY_SECRET.sub(r"\1***", text)


def display(url: URL) -> str:
    """The URL as it may be printed: no password, and credential query parameters masked."""
    return mask(url.render_as_string(hide_password=True))


def with_default_driver(url: URL) -> URL:
    """A bare postgresql:// URL means psycopg2 to SQLAlchemy 2.0 but psycopg 3 to 2.1; use the
    one the `postgres` extra installs (psycopg 3) when psycopg2 is absent."""
    if url.drivername == "postgresql" and not _importable("psycopg2") and _importable("psycopg"):
        return url.set(drivername="postgresql+psycopg")
    return url


def connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """Driver options bounding the connection attempt, for the drivers that take one."""
    backend = url.get_backend_name()
    if backend == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
        return {"connect_timeout": max(1, math.ceil(timeout))}  # libpq takes whole seconds
    if backend in ("mysql", "mariadb") and url.get_driver_name() in ("pymysql", "mysqldb"):
        return {"connect_timeout": max(1, math.ceil(timeout))}
    return {}


def missing_driver(where: str, url: URL, error: BaseException) -> VseamError:
    """The error for `create_engine` failing on an uninstalled DBAPI module."""
    if url.get_backend_name() == "postgresql":
        hint = f"{POSTGRES_EXTRA} installs psycopg; then use a postgresql+psycopg:// URL"
    else:
        hint = f"install the Python driver for {url.get_backend_name()} ({url.drivername}) in this environment"
    return VseamError(f"cannot open run registry {where}: its database driver is not installed ({error})", hint=hint)


def first_connect(engine: Engine, where: str, timeout: float) -> None:
    """Open one connection, giving up after `timeout` (+2 s grace for the driver's own timeout).

    Drivers' own timeouts do not cover everything (a server that accepts the TCP connection
    and then says nothing, a driver without the option), so the attempt runs in a daemon
    thread we stop waiting for. On success the connection goes back to the pool for the
    schema check; on failure its error is re-raised here.
    """
    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            with engine.connect():
                pass
            outcome["error"] = None
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=attempt, name="vseam-db-connect", daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    if "error" not in outcome:
        raise unreachable(where, f"no answer within {timeout:g} s", timeout)
    if outcome["error"] is not None:
        raise outcome["error"]


def unreachable(where: str, detail: str, timeout: float) -> VseamError:
    return VseamError(
        f"cannot connect to run registry {where}: {detail}",
        hint=f"check that the database server is running and that host, port and database name in --db are right "
        f"(waited {timeout:g} s; VSEAM_DB_TIMEOUT sets how long)",
    )


_PERMISSION = ("permission denied", "password authentication failed", "access denied", "readonly database",
               "read-only", "authentication failed", "not authorized", "no password supplied")
_UNREACHABLE = ("could not connect", "connection refused", "connection failed", "timeout", "timed out",
                "could not translate host name", "name or service not known", "no route to host",
                "server closed the connection", "unable to open database file", "does not exist")
_NOT_A_REGISTRY = ("file is not a database", "not a database", "malformed", "encrypted")


def classify(where: str, error: BaseException, *, is_sqlite: bool, password: str | None, timeout: float) -> VseamError:
    """One clear VseamError for a failure to open or prepare a registry, hinted by its cause."""
    orig = getattr(error, "orig", None) or error
    detail = mask(str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__, password)
    text = str(orig).lower()
    if any(s in text for s in _NOT_A_REGISTRY):
        return VseamError(
            f"{where} is not a usable run registry: {detail}",
            hint="pass --db with a vseam registry file, or a new path to start one",
        )
    if any(s in text for s in _PERMISSION):
        hint = ("make the file and its folder writable, or pass --db with a writable path" if is_sqlite
                else "check the user name and password in --db, and that this user may create tables in the database")
        return VseamError(f"permission denied for run registry {where}: {detail}", hint=hint)
    if not is_sqlite and any(s in text for s in _UNREACHABLE):
        return unreachable(where, detail, timeout)
    if is_sqlite:
        return VseamError(
            f"cannot use run registry {where}: {detail}",
            hint="check that the file is writable and not locked by another program, or pass --db with another path",
        )
    return VseamError(f"cannot open run registry {where}: {detail}", hint="check the URL given with --db")


_DAMAGED = ("malformed", "not a database", "could not decode", "disk i/o error", "corrupt")


def query_error(where: str, error: BaseException) -> VseamError:
    """One clear VseamError for a query of an open registry that failed (DatabaseError)."""
    orig = getattr(error, "orig", None) or error
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    detail = mask(first[:200] + ("…" if len(first) > 200 else ""))
    if any(s in str(orig).lower() for s in _DAMAGED):
        return VseamError(
            f"run registry {where} is damaged: {detail}",
            hint="restore it from a backup (`sqlite3 FILE .recover` may save what is left), or pass --db with another path",
        )
    return VseamError(
        f"run registry {where}: {detail}",
        hint="check that the file is writable and not locked, or pass --db with another path",
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
