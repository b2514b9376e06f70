"""Pre-flight: each store a run or a study writes to is reached once, in seconds, before anything is trained or
launched.

Unchecked, a tracking URI nobody listens on cost 254 s of MLflow's own HTTP retries and a 152-line traceback
before the run died. Here each store gets one short try (``TIMEOUT_S``); a store that does not answer stops the
command with one line naming the config key, the URI (its password hidden) and the cause. SQLite stores are
checked without any network: their file (or the directory it will be created in) must be writable.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from segsweep.checks import ConfigError

TIMEOUT_S = 4  # one try per store; the three stores of a study stay under 10 s together
SQL_SCHEMES = ("postgresql", "mysql", "mssql", "oracle")  # with or without a +driver


class StoreError(ConfigError):
    """A store named by the config cannot be reached or written."""


def redact(uri: str) -> str:
    """``uri`` without its password: ``postgresql://user:***@host/db``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, parts.query, parts.fragment))


def _fail(key: str, uri: str, cause: object) -> StoreError:
    return StoreError(f"config key '{key}': cannot reach {redact(uri)}: {cause}")


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute); None for other stores and in-memory ones."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_writable(key: str, uri: str, path: Path) -> None:
    """The SQLite database (or any file) ``path`` can be written: an existing database takes a write lock, the
    nearest existing folder of a new one takes a file. Tried, not ``os.access``: root passes every permission
    check, not a read-only file system."""
    try:
        if path.is_file():
            with contextlib.closing(sqlite3.connect(path, timeout=TIMEOUT_S)) as db:
                db.execute("BEGIN IMMEDIATE")
                db.rollback()
            return
        folder = path.parent
        while not folder.exists():  # the nearest folder there is: nothing is created by a check
            folder = folder.parent
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".segsweep-write-test-"):
            pass
    except (OSError, sqlite3.Error) as e:
        raise StoreError(f"config key '{key}': cannot write {path} ({redact(uri)}): "
                         f"{getattr(e, 'strerror', None) or e}") from None


def check_http(key: str, uri: str) -> None:
    """An MLflow server answers its ``/health`` endpoint."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:  # noqa: S310 (the user's own tracking server)
            if r.status == 200:
                return
            cause = f"HTTP {r.status} from {url}"
    except urllib.error.HTTPError as e:
        cause = f"HTTP {e.code} from {url}: is it an MLflow server?"
    except urllib.error.URLError as e:
        cause = getattr(e.reason, "strerror", None) or e.reason
    except (OSError, ValueError) as e:  # a time-out, a malformed URL
        cause = e
    raise _fail(key, uri, cause)


def check_sql(key: str, uri: str) -> None:
    """A database server (PostgreSQL, MySQL, ...) accepts a connection within ``TIMEOUT_S``."""
    import sqlalchemy

    args = {"connect_timeout": TIMEOUT_S} if uri.split("+", 1)[0].split(":", 1)[0] in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as e:  # the driver's own error: refused, time-out, authentication, unknown database
        cause = getattr(e, "orig", None) or e
        raise _fail(key, uri, str(cause).strip().splitlines()[0]) from None


def check_uri(key: str, uri: str) -> None:
    """One store: SQLite (a writable file), an MLflow server (http[s]), or a database server."""
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme == "sqlite":
        if (path := sqlite_path(uri)) is not None:
            check_writable(key, uri, path)
    elif scheme in ("http", "https"):
        check_http(key, uri)
    elif scheme in SQL_SCHEMES:
        check_sql(key, uri)
    elif scheme in ("", "file"):
        check_writable(key, uri, Path(urlsplit(uri).path if scheme else uri) / "probe")
    # other schemes (databricks, a plugin's store) are left to their own client


def check_mlflow(enabled: bool, tracking_uri: str) -> None:
    """The MLflow tracking store and, for a SQLite store, its artifact folder (``mlartifacts`` beside the
    database; a server stores artifacts itself)."""
    if not enabled:
        return
    check_uri("mlflow.tracking_uri", tracking_uri)
    if urlsplit(tracking_uri).scheme == "sqlite" and (db := sqlite_path(tracking_uri)) is not None:
        check_writable("mlflow.tracking_uri (its artifacts)", tracking_uri, db.parent / "mlartifacts" / "probe")


def check_optuna(storage: str) -> None:
    check_uri("hydra.sweeper.storage", storage)
