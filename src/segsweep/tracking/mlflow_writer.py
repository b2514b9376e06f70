"""The MLflow run of one training job: params, batched metrics, artifacts, final status.

Every call to the tracking store runs on one background thread, so a slow store (SQLite on a network disk,
a remote server) never stalls a training step; ``close`` waits for the queue to drain and then marks the run
FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from segsweep.io import file_lock

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


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute); None for other stores and in-memory ones."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


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


class MlflowWriter:
    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None) -> None:
        """A new run, or the existing ``run_id`` continued (a resumed job keeps its run)."""
        self.client = open_client(tracking_uri)
        if run_id is not None:
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            self.run_id, self.artifact_uri = run_id, self.client.get_run(run_id).info.artifact_uri
            self._start_thread()
            return
        exp_id = experiment_id(self.client, experiment_name, tracking_uri)
        run = retry(lambda: self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {})))
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri
        self._start_thread()

    def _start_thread(self) -> None:
        self._queue: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                retry(job)
            except BaseException as e:  # reported by close(); training goes on
                self._errors.append(e)
                log.warning("MLflow logging failed: %s", e)

    def log_params(self, params: Mapping[str, str]) -> None:
        self._queue.put(lambda: log_params(self.client, self.run_id, params))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        chunk = [RunTag(k, str(v)) for k, v in tags.items()]
        self._queue.put(lambda: self.client.log_batch(self.run_id, tags=chunk))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
        self._queue.put(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._queue.put(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def close(self, status: str = "FINISHED") -> None:
        """Drain the queue, then set the run's final status (FINISHED, FAILED or KILLED)."""
        self._queue.put(None)
        self._thread.join()
        if self._errors and status == "FINISHED":
            log.warning("%d MLflow calls failed; the run is marked FAILED", len(self._errors))
            status = "FAILED"
        retry(lambda: self.client.set_terminated(self.run_id, status=status))
