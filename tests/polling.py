"""One poll loop for the tests that watch a process: ``wait_for(predicate, proc, what)``.

It calls ``predicate()`` until that returns something truthy, and returns it. It never waits out its time-out
for a reason it can see sooner:

- the process ended first: it fails at once with the exit code and the tail of ``log`` (the file its output goes
  to) or of its stdout/stderr pipes;
- the predicate raised an error that is not "not there yet" (``not_yet``): that error propagates at once, as it
  is, so a bug in the predicate or a real failure shows as itself, not as a time-out;
- the time ran out: it says what it waited for and the last "not there yet" error it saw.

"Not there yet": a file not written yet (FileNotFoundError), a JSON line read while half written
(json.JSONDecodeError), an Optuna study not created yet (optuna's KeyError 'Record does not exist.'), a SQLite
store busy or without its tables yet (sqlalchemy's OperationalError 'database is locked' / 'no such table', also
wrapped in an MlflowException), and ``NotYet``, which a predicate raises to say why it is not there yet.

Never open a SQLite store before the process under test has created it: ``optuna.load_study`` or an MLflow client
on a fresh ``sqlite:///`` file creates its tables there and then, racing the process doing the same (alembic:
"Online migration expected to match one row"). Poll first for a file the process writes only once it opened the
store: a trial's ``metrics.jsonl``, or the sweeper's "study storage:" log line (``logged(log, STUDY_OPENED)``:
the sweeper writes it once it has created the study and its MLflow parent run). MLflow clients come from
``segsweep.tracking.mlflow_writer.open_client`` (it takes the store's lock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# The sweeper's log line written once the study's storage and MLflow parent run exist (segsweep.sweep.sweeper).
STUDY_OPENED = "study storage: "


class NotYet(Exception):
    """Raised by a predicate: the awaited state is not there yet, for the reason given (shown on a time-out)."""


def not_yet(error: BaseException) -> bool:
    """Whether ``error`` only says "not there yet" (worth polling again), not that something is wrong."""
    if isinstance(error, (NotYet, FileNotFoundError, json.JSONDecodeError)):
        return True
    if isinstance(error, KeyError):  # optuna.load_study of a study that is not created yet
        return error.args == ("Record does not exist.",) and _raised_in(error, "optuna")
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    mlflow_exc = sys.modules.get("mlflow.exceptions")
    if (sqlalchemy_exc and isinstance(error, sqlalchemy_exc.OperationalError)) or (
            mlflow_exc and isinstance(error, mlflow_exc.MlflowException)):
        text = str(error)
        return "database is locked" in text or "no such table" in text
    return False


def _raised_in(error: BaseException, package: str) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


def tail(path: Path | str, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<no log: {e}>"


def logged(path: Path | str, text: str) -> bool:
    """Whether the file at ``path`` holds ``text`` yet (a file not written yet: not yet)."""
    return text in Path(path).read_text(errors="replace")


def _ended(proc: subprocess.Popen, log: Path | str | None, n: int = 40) -> str:
    """The output of a process that has ended: the tail of ``log``, else what is left in its pipes."""
    if log is not None:
        return f"log {log}, last lines:\n{tail(log, n)}"
    try:
        out, err = proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError, OSError) as e:  # pipes already read or closed
        return f"<its output could not be read: {e!r}>"
    text = "".join(s if isinstance(s, str) else s.decode(errors="replace") for s in (out, err) if s)
    if not text:
        return "<its output went neither to a pipe nor to a log given here>"
    return "last lines of its output:\n" + "\n".join(text.splitlines()[-n:])


def wait_for(predicate: Callable[[], T], proc: subprocess.Popen | None = None, what: str = "the condition",
             timeout: float = 120.0, log: Path | str | None = None, interval: float = 0.2) -> T:
    """``predicate()``'s first truthy value, polled every ``interval`` s while ``proc`` (if given) still runs.

    Fails at once when ``proc`` has ended (exit code, tail of ``log`` or of its pipes) and re-raises at once any
    error of ``predicate`` that is not "not there yet" (``not_yet``); after ``timeout`` s, fails naming ``what``
    and the last "not there yet" error. The process must still run when the condition holds: callers act on it.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit code {proc.returncode}) before {what}; "
                                 f"{_ended(proc, log)}")
        try:
            value = predicate()
        except Exception as e:
            if not not_yet(e):
                raise
            last = e
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            seen = f"the last 'not yet' error: {type(last).__name__}: {last}" if last is not None else \
                "the condition was false at every poll, without an error"
            where = f"; log {log}, last lines:\n{tail(log, 20)}" if log is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({seen}){where}")
        time.sleep(interval)
