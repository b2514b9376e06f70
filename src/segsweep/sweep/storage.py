"""The study's Optuna storage, patient with a database that blinks.

A SQLite file locked for seconds by another writer, a PostgreSQL server restarted, a dropped connection: Optuna's
RDB storage raises at the first failed call, which stopped the sweeper or failed the trial whose job made it.
``open_storage`` wraps every call (the sweeper's and the jobs') so that a call failing for a reason of that kind
is made again, with back-off, for up to ``study.storage_patience_s``; pooled connections are checked before use,
so that a restarted server's dead ones are replaced rather than used.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage

from segsweep import compat
from segsweep.stores import SQL_SCHEMES

log = logging.getLogger("segsweep")


def blinked(error: BaseException) -> bool:
    """The database was away or busy (its own words: a connection refused or lost, a lock), not a wrong call."""
    import sqlalchemy.exc as sa

    seen: BaseException | None = error
    while seen is not None:  # Optuna wraps SQLAlchemy's error in StorageInternalError
        if isinstance(seen, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)) or \
                (isinstance(seen, sa.DBAPIError) and seen.connection_invalidated):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def patiently(fn: Callable[[], Any], patience_s: float) -> Any:
    """``fn()``, made again with jittered back-off while the database blinks, for up to ``patience_s``."""
    start, delay, attempt = time.monotonic(), 0.5, 0
    while True:
        try:
            return fn()
        except Exception as e:
            if not blinked(e) or time.monotonic() - start + delay > patience_s:
                raise
            if attempt == 0:
                log.warning("Optuna storage busy or away (%s): trying again for up to %.0f s",
                            str(e).splitlines()[0][:200], patience_s)
            attempt += 1
            time.sleep(delay * (0.5 + random.random()))  # jittered: many jobs do not come back at once
            delay = min(2 * delay, 15.0)


class PatientStorage(BaseStorage):
    """Every call of ``inner`` (a storage) made again while the database blinks, for up to ``patience_s``."""

    def __init__(self, inner: BaseStorage, patience_s: float) -> None:
        self.inner, self.patience_s = inner, patience_s

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        tries = 0

        def once() -> Any:
            nonlocal tries
            tries += 1
            try:
                return getattr(self.inner, name)(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # a state the database took before the connection was lost, and an answer that never came
                state = kwargs.get("state", args[1] if len(args) > 1 else None)
                if tries > 1 and name == "set_trial_state_values" and self.inner.get_trial(args[0]).state == state:
                    return True
                raise

        return patiently(once, self.patience_s)

    def __getattr__(self, name: str) -> Any:  # what BaseStorage does not declare (heartbeats, stale trials)
        attr = getattr(self.inner, name)
        return functools.partial(self.call, name) if callable(attr) else attr


def _delegate(name: str):
    def method(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        return self.call(name, *args, **kwargs)

    method.__name__ = name
    return method


# every public method of BaseStorage, its own implementations too (the inner storage may have faster ones)
for _name in [n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n))]:
    setattr(PatientStorage, _name, _delegate(_name))
PatientStorage.__abstractmethods__ = frozenset()


def rdb_storage(url: str, patience_s: float, **kwargs: Any) -> RDBStorage:
    """Optuna's RDB storage on ``url``, opened patiently, its pooled connections checked before each use."""
    return patiently(lambda: RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs), patience_s)


def open_storage(url: str, patience_s: float) -> BaseStorage | str:
    """The study's storage for ``optuna.create_study``/``load_study``: cached as Optuna caches it, and patient.
    A storage that is not an SQL database (a journal file) is left to Optuna."""
    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", *SQL_SCHEMES):
        return url
    return PatientStorage(compat.cached_storage(rdb_storage(url, patience_s)), patience_s)
