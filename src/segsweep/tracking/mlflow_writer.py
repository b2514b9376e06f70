"""The MLflow run of one training job: params, batched metrics, artifacts, final status.

Every call to the tracking store runs on one background thread, so a slow store (SQLite on a network disk,
a remote server) never stalls a training step. A store that is away (a restart, a full disk, a network hiccup)
costs nothing either: the calls wait in order (``tracking.outbox``) and are sent again with back-off until the
store is back; ``close`` waits for them and marks the run FINISHED, FAILED or KILLED. If the store is still away
then, the run ends all the same: the calls it owes go to the run directory's ``mlflow_unsent.json``, one line
says so, and ``python -m segsweep.sync <run dir>`` sends them later.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from segsweep.io import file_lock
from segsweep.stores import redact, sqlite_path
from segsweep.tracking import outbox

log = logging.getLogger("segsweep")

_MAX_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"loss": {"ce_weight": 0.6}} -> {"loss.ce_weight": "0.6"} (MLflow params are strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:_MAX_PARAM_LENGTH]
    return out


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database, not into the current directory."""
    db = sqlite_path(tracking_uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None


def _store_lock(tracking_uri: str | None) -> contextlib.AbstractContextManager:
    """A lock on ``<db>-lock`` beside a SQLite store (named like SQLite's own ``<db>-journal``); nothing for
    other stores."""
    path = sqlite_path(tracking_uri)
    return file_lock(path.with_name(path.name + "-lock")) if path is not None else contextlib.nullcontext()


def open_client(tracking_uri: str | None):
    """An ``MlflowClient`` whose store exists with MLflow's current schema.

    ``MlflowClient()`` opens its store, and MLflow creates and migrates the tables of a new SQLite store without
    a lock: jobs started together on a file that does not exist yet failed with "table ... already exists",
    "duplicate column name", alembic's "Online migration expected to match one row" (7 or all 8 of 8). So one
    process at a time opens a SQLite store: the first creates it, the others find it complete. Server stores
    (http://, postgresql://) migrate on the server or once, and take no lock.
    """
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    with _store_lock(tracking_uri):
        return retry(lambda: MlflowClient(tracking_uri))


def quiet_mlflow() -> None:
    """MLflow's and Alembic's INFO lines ("Creating initial MLflow database tables...", migrations) are not the
    run's news: only their warnings and errors reach the console. (MLflow sets its logger's level on import.)"""
    import mlflow  # noqa: F401  (configures the "mlflow" logger first)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def retry(fn: Callable[[], Any], attempts: int = 8) -> Any:
    """SQLite stores answer 'database is locked' while another job writes: back off and try again."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # mlflow wraps sqlalchemy errors in MlflowException
            if i == attempts - 1 or "locked" not in str(e).lower():
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


# MLflow 3's UI opens an experiment on its GenAI pages unless it is marked as one of model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """The experiment's id, created (marked as model training, artifacts beside a SQLite store) when missing;
    an existing one without a kind is marked once."""
    exp = retry(lambda: client.get_experiment_by_name(name))
    if exp is None:
        try:
            return retry(lambda: client.create_experiment(name, artifact_location=artifact_location(tracking_uri),
                                                          tags=EXPERIMENT_KIND))
        except Exception:  # another job created it in the meantime
            exp = retry(lambda: client.get_experiment_by_name(name))
            if exp is None:
                raise
    if "mlflow.experimentKind" not in exp.tags:
        retry(lambda: client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items()))))
    return exp.experiment_id


def log_params(client, run_id: str, params: Mapping[str, str]) -> None:
    """Params in batches of MLflow's maximum size, each value cut to MLflow's maximum length."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        retry(lambda chunk=items[i : i + _MAX_PARAMS_PER_BATCH]: client.log_batch(run_id, params=chunk))


def send(client, run: outbox.RunId, op: outbox.Op) -> None:
    """One call to the store; ``create`` sets ``run.run_id``."""
    from mlflow.entities import Metric, RunTag

    kind, data = op
    if kind == "create":
        exp = experiment_id(client, run.experiment_name, run.tracking_uri)
        run.run_id = client.create_run(exp, run_name=run.run_name, tags=run.tags).info.run_id
    elif kind == "resume":
        client.update_run(run.run_id, status="RUNNING")
    elif kind == "params":
        log_params(client, run.run_id, data)
    elif kind == "tags":
        client.log_batch(run.run_id, tags=[RunTag(k, str(v)) for k, v in data.items()])
    elif kind == "metrics":
        client.log_batch(run.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in data])
    elif kind == "artifact":
        client.log_artifact(run.run_id, data[0], data[1])
    elif kind == "end":
        client.set_terminated(run.run_id, status=data)
    else:
        raise ValueError(f"unknown MLflow call {kind!r}")


# A store that is away answers in a second, not after MLflow's own back-off (7 retries, ~4 min per call); the
# writer retries itself, without stalling anything. Set before the first request; the user's values win.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
MAX_PENDING_METRICS = 200_000  # metric values held in memory while the store is away; beyond: metrics.jsonl
BACKOFF_S = (1.0, 30.0)  # first and longest wait between two tries of a call the store did not take
CLOSE_WAIT_S = 10.0  # at the end, how long a store found away is waited for before the run ends without it


class MlflowWriter:
    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None, out_dir: Path | None = None,
                 mirror: str | None = None) -> None:
        """A new run, or the existing ``run_id`` continued (a resumed job keeps its run). ``out_dir``: where the
        calls go that the store never took; ``mirror``: the file there that holds every ``write()`` too
        (``metrics.jsonl``), so that a long outage keeps only so many metrics in memory."""
        for k, v in HTTP_ENV.items():
            os.environ.setdefault(k, v)
        self.run = outbox.RunId(tracking_uri, experiment_name, run_name, dict(tags or {}), run_id)
        self.out_dir, self.mirror = out_dir, mirror
        self._pending: deque[outbox.Op] = deque()
        self._n_metrics = self._skipped = 0
        self._errors: list[BaseException] = []
        self._cv = threading.Condition()
        self._closing: float | None = None  # when close() was called
        self.down_since: float | None = None
        self.client = open_client(tracking_uri)
        try:  # at once, so that the run id is known to the checkpoint and the trial
            send(self.client, self.run, ("resume", None) if run_id else ("create", None))
        except Exception as e:
            if not outbox.transient(e):
                raise
            self._away(e)
            self._pending.append(("resume", None) if run_id else ("create", None))
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str | None:
        """None while the store has been away since the run started."""
        return self.run.run_id

    def _put(self, op: outbox.Op) -> None:
        with self._cv:
            self._pending.append(op)
            self._cv.notify()

    def _away(self, error: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            log.warning("MLflow store %s away (%s): training goes on, its calls wait and are sent again",
                        redact(self.run.tracking_uri), outbox.cause(error))

    def _work(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            with self._cv:
                while not self._pending and self._closing is None:
                    self._cv.wait()
                if not self._pending:
                    return
                op = self._pending[0]
            if op == ("end", "FINISHED") and self._errors:  # the calls refused on the way count too
                log.warning("%d MLflow calls were refused; the run is marked FAILED", len(self._errors))
                op = ("end", "FAILED")
            try:
                retry(lambda op=op: send(self.client, self.run, op))
            except Exception as e:
                if outbox.transient(e):
                    self._away(e)
                    with self._cv:  # wait, unless the run has ended and the store stayed away too long
                        left = None if self._closing is None else self._closing + CLOSE_WAIT_S - time.time()
                        if left is not None and left <= 0:
                            return
                        self._cv.wait(timeout=delay if left is None else min(delay, left))
                    delay = min(2 * delay, BACKOFF_S[1])
                    continue
                self._errors.append(e)  # a call the store refuses would be refused again: reported by close()
                log.warning("MLflow logging failed: %s", e)
            with self._cv:
                self._pending.popleft()
                if op[0] == "metrics":
                    self._n_metrics -= len(op[1])
            if self.down_since is not None:
                log.info("MLflow store back after %.0f s; the calls that waited are being sent",
                         time.time() - self.down_since)
                self.down_since, delay = None, BACKOFF_S[0]

    def log_params(self, params: Mapping[str, str]) -> None:
        self._put(("params", {k: str(v) for k, v in params.items()}))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._put(("tags", {k: str(v) for k, v in tags.items()}))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        op = outbox.metric_op(step, metrics)
        with self._cv:
            if self.mirror and self._n_metrics + len(op[1]) > MAX_PENDING_METRICS:
                self._skipped += 1  # kept in the mirror file, sent by segsweep.sync
                return
            self._n_metrics += len(op[1])
        self._put(op)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put(("artifact", [str(Path(path).resolve()), artifact_path]))

    def _catch_up(self) -> None:
        """The store is back: send what only the mirror file (metrics.jsonl) has."""
        try:
            extra = retry(lambda: outbox.missing_metrics(self.client, self.run_id, self.out_dir / self.mirror,
                                                         int(time.time() * 1000)))
            for i in range(0, len(extra), outbox.BATCH):
                retry(lambda chunk=extra[i : i + outbox.BATCH]: send(self.client, self.run, ("metrics", chunk)))
            self._skipped = 0
        except Exception as e:
            if not outbox.transient(e):
                raise
            self._away(e)  # left to segsweep.sync, with the rest

    def close(self, status: str = "FINISHED") -> bool:
        """Send what waits, then the run's final status (FINISHED, FAILED or KILLED); with the store away for
        ``CLOSE_WAIT_S`` more, leave it all to ``segsweep.sync`` (one line says so). Whether MLflow has it all."""
        self._put(("end", status))
        with self._cv:
            self._closing = time.time()
            self._cv.notify()
        self._thread.join()
        if not self._pending and self._skipped:
            self._catch_up()
        if not self._pending and not self._skipped:
            return True
        since = self.down_since or time.time()
        what = outbox.describe(self._pending, self._skipped)
        if self.out_dir is None:
            log.warning("MLflow store %s away: %s not sent", redact(self.run.tracking_uri), what)
            return False
        outbox.save(self.out_dir, self.run, list(self._pending), self.mirror, since)
        log.warning("MLflow store %s away since %s: %s not sent; when it is back: python -m segsweep.sync %s",
                    redact(self.run.tracking_uri), dt.datetime.fromtimestamp(since).strftime("%H:%M:%S"), what,
                    self.out_dir)
        return False
