"""The calls an MLflow run still owes its store: in memory while the run lives (``MlflowWriter``), in the run
directory's ``mlflow_unsent.json`` when the run ended with the store away (``python -m segsweep.sync`` sends them).

Each call is a plain ``(kind, data)`` pair that JSON keeps as it is, and sending one twice changes nothing:
metrics keep the timestamp they were logged with (MLflow stores a (key, timestamp, step, value) once), params are
sent with the same values, tags and artifacts are overwritten with themselves. So a call whose answer was lost
can be sent again, and a sync that was cut short can be run again.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segsweep.io import atomic_write

MARKER = "mlflow_unsent.json"
BATCH = 1000  # MLflow's limit of metrics per log_batch call
# MLflow's error codes for a store that is away or overloaded (a refused connection arrives as INTERNAL_ERROR);
# any other code (a bad request) would fail again, and is not retried.
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}

Op = tuple[str, Any]  # ("create", None) | ("resume", None) | ("params", {k: v}) | ("tags", {k: v})
# | ("metrics", [[key, value, timestamp_ms, step], ...]) | ("artifact", [path, artifact_path]) | ("end", status)


@dataclass
class RunId:
    """Which MLflow run the calls go to; ``run_id`` is None until the run is created."""

    tracking_uri: str
    experiment_name: str
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None


def transient(error: BaseException) -> bool:
    """The store is away (refused, timed out, locked, restarting): worth sending again later."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_CODES
    if isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return False  # a file that is gone or not ours stays so
    return isinstance(error, OSError) or type(error).__module__.startswith(("sqlalchemy", "requests", "urllib3"))


def cause(error: BaseException) -> str:
    """The words that say why, out of MLflow's wrapping ("API request to ... failed with exception
    HTTPConnectionPool(...): Max retries exceeded ... [Errno 111] Connection refused")."""
    text = str(error)
    if m := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
        return m.group(1).strip()
    if "timed out" in text.lower():
        return "timed out"
    return text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__


def metric_op(step: int, metrics: dict[str, float]) -> Op:
    now = int(time.time() * 1000)
    return "metrics", [[k, float(v), now, int(step)] for k, v in metrics.items() if math.isfinite(v)]


def missing_metrics(client, run_id: str | None, jsonl: Path, timestamp_ms: int) -> list[list]:
    """``[key, value, timestamp, step]`` of every finite value in ``jsonl`` that the run lacks at its step."""
    if not jsonl.is_file():
        return []
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    keys = sorted({k for r in records for k in r if k != "iteration"})
    have = {k: ({m.step for m in client.get_metric_history(run_id, k)} if run_id else set()) for k in keys}
    return [[k, float(v), timestamp_ms, int(r["iteration"])] for r in records for k, v in r.items()
            if k != "iteration" and v is not None and int(r["iteration"]) not in have[k]]


def describe(ops: Iterable[Op], skipped: int = 0) -> str:
    """``the run's creation, 2 param batches, 40 metric steps, 3 artifacts, its final status``."""
    ops = list(ops)
    n = {k: sum(1 for kind, _ in ops if kind == k) for k in ("params", "tags", "metrics", "artifact")}
    parts = ["the run's creation"] if any(k == "create" for k, _ in ops) else []
    parts += [f"{n[k]} {name}" for k, name in (("params", "param batch(es)"), ("tags", "tag batch(es)"),
                                               ("metrics", "metric step(s)"), ("artifact", "artifact(s)")) if n[k]]
    if skipped:
        parts.append(f"{skipped} metric step(s) kept in metrics.jsonl only")
    if any(k == "end" for k, _ in ops):
        parts.append("its final status")
    return ", ".join(parts) or "nothing"


def save(directory: Path, run: RunId, ops: list[Op], mirror: str | None, since: float) -> Path:
    """Write (whole) the marker ``directory/mlflow_unsent.json``: the run, the calls it still owes, and the file
    that holds every metric the run logged (``metrics.jsonl``; None for a run whose metrics are all in the calls),
    which sync compares with MLflow after sending the calls."""
    path = Path(directory) / MARKER
    atomic_write(path, json.dumps({"run": asdict(run), "ops": [list(op) for op in ops], "mirror": mirror,
                                   "since": dt.datetime.fromtimestamp(since).isoformat(timespec="seconds"),
                                   "since_ms": int(since * 1000)}, indent=1))
    return path


def load(path: Path) -> tuple[RunId, list[Op], str | None, int]:
    d = json.loads(Path(path).read_text())
    return RunId(**d["run"]), [tuple(op) for op in d["ops"]], d.get("mirror"), int(d["since_ms"])
