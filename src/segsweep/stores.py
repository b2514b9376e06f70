"""Pre-flight: each store a run or a study writes to is reached once, in seconds, before anything is trained or
launched.

Unchecked, a tracking URI nobody listens on cost 254 s of MLflow's own HTTP retries and a 152-line traceback
before the run died. Here each store gets one short try (``TIMEOUT_S``); a store that does not answer stops the
command with one line naming the config key, the URI (its password hidden) and the cause. SQLite stores are
checked without any network: their file (or the directory it will be created in) must be writable.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

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


def check_writable(key: str, uri: str, path: Path, folder: bool = False) -> None:
    """The SQLite database ``path`` (or, with ``folder``, a file in the folder ``path``) can be written: an
    existing database takes a write lock, the nearest existing folder takes a file. Tried, not ``os.access``: root
    passes every permission check, not a read-only file system."""
    try:
        if not folder and path.is_file():
            with contextlib.closing(sqlite3.connect(path, timeout=TIMEOUT_S)) as db:
                db.execute("BEGIN IMMEDIATE")
                db.rollback()
            return
        nearest = path if folder else path.parent
        while not nearest.exists():  # the nearest folder there is: nothing is created by a check
            nearest = nearest.parent
        with tempfile.NamedTemporaryFile(dir=nearest, prefix=".segsweep-write-test-"):
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
        check_writable(key, uri, Path(urlsplit(uri).path if scheme else uri), folder=True)
    # other schemes (databricks, a plugin's store) are left to their own client


def stored_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where the store keeps the experiment's artifacts (None: no such experiment yet, or not readable here):
    read from a SQLite store's table, or asked of a server's REST API, in one short try."""
    scheme = urlsplit(tracking_uri).scheme
    try:
        if scheme == "sqlite" and (db := sqlite_path(tracking_uri)) is not None and db.is_file():
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=TIMEOUT_S)) as con:
                row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
            return row[0] if row else None
        if scheme in ("http", "https"):
            query = urlencode({"experiment_name": experiment})
            url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:  # noqa: S310
                return json.load(r)["experiment"]["artifact_location"]
    except (OSError, ValueError, KeyError, sqlite3.Error):  # no table yet, no such experiment (404), no access
        return None
    return None


def check_mlflow(enabled: bool, tracking_uri: str, experiment: str) -> None:
    """The MLflow tracking store, and the experiment's artifact destination where this process writes it itself:
    a local folder (a SQLite store's ``mlartifacts`` beside the database, or a server's experiment kept on a
    shared file system). Artifacts a server proxies (``mlflow-artifacts:``) are the server's, reached above."""
    if not enabled:
        return
    check_uri("mlflow.tracking_uri", tracking_uri)
    location = stored_artifact_location(tracking_uri, experiment)
    if location is None and (db := sqlite_path(tracking_uri)) is not None:
        location = str(db.parent / "mlartifacts")  # where segsweep creates a SQLite store's experiments
    scheme = urlsplit(location or "").scheme
    if location and scheme in ("", "file"):
        check_writable(f"mlflow.tracking_uri (artifacts of experiment '{experiment}')", tracking_uri,
                       Path(urlsplit(location).path if scheme else location), folder=True)


def check_optuna(storage: str) -> None:
    check_uri("hydra.sweeper.storage", storage)
