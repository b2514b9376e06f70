"""Files written whole or not at all, and one lock for the files that several jobs share.

Every file segsweep writes (checkpoints, class-weight caches, metrics, figures, reports, run-id files) goes
through ``atomic_path``: a crash mid-write leaves the old file or none, never half of one, and a reader never
sees a partial file. Jobs that share one file (a SQLite store, a study's directory) serialise on ``file_lock``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends, removed
    when it raises. Same directory, so the rename is atomic; same suffix, so writers that read the format from
    the name (matplotlib, Pillow) work; the process's umask applies, so shared caches stay readable."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the block; other processes wait. Released
    by the kernel when the process dies, so a killed job never leaves a stale lock. No-op where there is no
    ``fcntl`` (Windows: single-user machines)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
