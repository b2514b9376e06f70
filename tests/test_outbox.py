"""A store that blinks costs nothing, in process and on real SQLite stores (issue 18): the MLflow writer keeps the
calls the store did not take and sends each once, in order; a run that ends with the store away leaves them for
``segsweep.sync``; the Optuna storage waits for a locked database; a state the database took before the
connection was lost is not an error. The same with real servers that are killed: tests/test_store_outage.py."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import optuna
import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from optuna.trial import TrialState

from segsweep.stores import StoreError, check_mlflow, redact
from segsweep.sweep.preflight import commonest_failure
from segsweep.sweep.record import attrs
from segsweep.sweep.storage import PatientStorage, blinked, open_storage, rdb_storage
from segsweep.sync import hint, sync_run
from segsweep.tracking import mlflow_writer, outbox
from segsweep.tracking.mlflow_writer import MlflowWriter, open_client

pytestmark = pytest.mark.unit


def test_redact_hides_the_password_only():
    assert redact("postgresql+psycopg2://alice:s3cret@db.example:5432/studies?sslmode=require") == \
        "postgresql+psycopg2://alice:***@db.example:5432/studies?sslmode=require"
    assert redact("http://mlflow:5000") == "http://mlflow:5000"
    assert redact("postgresql://bob@h/db") == "postgresql://bob@h/db"


def test_the_preflight_checks_where_the_experiment_keeps_its_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = open_client(uri)
    check_mlflow(True, uri, "fine")  # no such experiment yet: the folder beside the database, writable
    client.create_experiment("elsewhere", artifact_location="file:///sys/fs/segsweep-artifacts")  # sysfs: no one
    with pytest.raises(StoreError) as e:  # may write there, root included
        check_mlflow(True, uri, "elsewhere")
    assert str(e.value).startswith("config key 'mlflow.tracking_uri (artifacts of experiment 'elsewhere')': cannot "
                                   "write /sys/fs/segsweep-artifacts (sqlite:///")
    check_mlflow(False, "http://127.0.0.1:9", "x")  # mlflow.enabled=false: nothing is reached


def test_the_commonest_failure_groups_reasons_that_differ_only_in_sampled_values():
    study = optuna.create_study()
    reasons = ["ConfigError: config key 'x': expected >= 0, got -1.25", "ConfigError: config key 'x': expected "
               ">= 0, got -0.5\nsecond line", "RuntimeError: CUDA out of memory", None]
    for r in reasons:
        t = study.ask()
        if r:
            for k, v in attrs(fail_reason=r).items():
                t.set_user_attr(k, v)
        study.tell(t, state=TrialState.FAIL)
    ok = study.ask()
    study.tell(ok, 1.0)
    line = commonest_failure(study.trials)
    assert line == "\"ConfigError: config key 'x': expected >= 0, got <x>\" (2 of 4 failed trials)"
    assert commonest_failure(study.trials, {0, 1}) in ("'RuntimeError: CUDA out of memory' (1 of 2 failed trials)",
                                                       "'no reason recorded' (1 of 2 failed trials)")


def test_transient_errors_are_those_of_a_store_away():
    assert outbox.transient(MlflowException("API request failed: Connection refused"))  # INTERNAL_ERROR
    assert outbox.transient(ConnectionRefusedError(111, "Connection refused"))
    assert not outbox.transient(MlflowException("bad key", error_code=INVALID_PARAMETER_VALUE))
    assert outbox.transient(MlflowException("restarting", error_code=TEMPORARILY_UNAVAILABLE))
    assert not outbox.transient(FileNotFoundError(2, "gone"))
    assert outbox.cause(MlflowException("API request to http://h/api failed with exception HTTPConnectionPool(host="
                                        "'h', port=9): Max retries exceeded (Caused by NewConnectionError(\"x: "
                                        "[Errno 111] Connection refused\"))")) == "Connection refused"


class Blinking:
    """An ``MlflowClient`` whose calls fail as a store that is away does while ``away`` is set (a real client
    underneath: what it takes is in the real SQLite store)."""

    def __init__(self, client, away: bool = False) -> None:
        self.client, self.away, self.refused = client, away, 0

    def __getattr__(self, name):
        fn = getattr(self.client, name)

        def call(*a, **k):
            if self.away:
                self.refused += 1
                raise MlflowException("API request to http://store failed with exception [Errno 111] Connection "
                                      "refused")
            return fn(*a, **k)

        return call


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_the_writer_keeps_what_the_store_did_not_take_and_sends_each_call_once_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_writer, "BACKOFF_S", (0.05, 0.2))
    monkeypatch.setattr(mlflow_writer, "MAX_PENDING_METRICS", 20)  # beyond: metrics.jsonl, caught up at the end
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    w = MlflowWriter(uri, "exp", "r", {"t": "1"}, out_dir=tmp_path, mirror="metrics.jsonl")
    blink = Blinking(w.client)
    w.client = blink
    jsonl = open(tmp_path / "metrics.jsonl", "w")  # noqa: SIM115
    for s in range(1, 41):
        if s == 2:
            time.sleep(0.3)
            blink.away = True  # the store goes away: steps 2..21 wait in memory, 22..40 are in metrics.jsonl only
        jsonl.write(json.dumps({"iteration": s, "loss": 1.0 / s, "nan": None}) + "\n")
        jsonl.flush()
        w.write(s, {"loss": 1.0 / s, "nan": float("nan")})
    w.log_params({"a": "1"})
    time.sleep(0.5)
    assert blink.refused >= 2 and w.down_since is not None  # tried again, with back-off
    blink.away = False  # back: everything catches up
    assert w.close() is True
    client = open_client(uri)
    assert history(client, w.run_id, "loss") == [(s, 1.0 / s) for s in range(1, 41)]  # once each, at its step
    run = client.get_run(w.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"} and "nan" not in run.data.metrics
    assert not (tmp_path / outbox.MARKER).exists()


def test_a_run_ending_with_the_store_away_leaves_its_calls_to_sync(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(mlflow_writer, "BACKOFF_S", (0.05, 0.2))
    monkeypatch.setattr(mlflow_writer, "CLOSE_WAIT_S", 0.3)
    monkeypatch.setattr(mlflow_writer, "MAX_PENDING_METRICS", 10)  # beyond: metrics.jsonl is the record
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    open_client(uri)  # the store exists; the run's creation is what the store will not take
    real = mlflow_writer.open_client
    monkeypatch.setattr(mlflow_writer, "open_client", lambda u: Blinking(real(u), away=True))
    w = MlflowWriter(uri, "exp", "r", {"t": "1"}, out_dir=tmp_path, mirror="metrics.jsonl")
    assert w.run_id is None  # training goes on without it
    jsonl = tmp_path / "metrics.jsonl"
    with open(jsonl, "w") as f:
        for s in range(1, 21):  # 20 steps of one value: 10 in memory, 10 in metrics.jsonl only
            f.write(json.dumps({"iteration": s, "loss": 1.0 / s, "bad": None}) + "\n")
            w.write(s, {"loss": 1.0 / s})
    w.log_params({"a": "1"})
    (tmp_path / "note.txt").write_text("artifact")
    w.log_artifact(tmp_path / "note.txt")
    with caplog.at_level("WARNING", logger="segsweep"):
        assert w.close("FINISHED") is False
    notice = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert len(notice) == 1 and notice[0].endswith(f"python -m segsweep.sync {tmp_path}")
    assert "the run's creation" in notice[0] and "10 metric step(s) kept in metrics.jsonl only" in notice[0]
    assert hint(tmp_path) == f"MLflow lacks what 1 run(s) logged while it was away: python -m segsweep.sync {tmp_path}"

    monkeypatch.setattr(mlflow_writer, "open_client", real)  # the store is back
    marker = tmp_path / outbox.MARKER
    assert "would send the run's creation" in sync_run(marker, dry_run=True) and marker.exists()
    assert "and 10 metric value(s) from metrics.jsonl" in sync_run(marker)
    client = open_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert history(client, run.info.run_id, "loss") == [(s, 1.0 / s) for s in range(1, 21)]
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"} and run.data.tags["t"] == "1"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    assert not marker.exists() and hint(tmp_path) is None


def test_a_sync_cut_short_after_creating_the_run_does_not_create_another(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = outbox.RunId(uri, "exp", "r", {})
    marker = outbox.save(tmp_path, run, [("create", None), ("metrics", [["m", 2.0, 1000, 3]]), ("end", "FINISHED")],
                         None, time.time())
    assert "sent the run's creation" in sync_run(marker)
    client = open_client(uri)
    (first,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    # the same marker again, now naming the run (as a sync cut short after the creation leaves it)
    outbox.save(tmp_path, outbox.RunId(uri, "exp", "r", {}, first.info.run_id),
                [("create", None), ("metrics", [["m", 2.0, 1000, 3]]), ("end", "FINISHED")], None, time.time())
    sync_run(marker)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert [r.info.run_id for r in runs] == [first.info.run_id]
    assert history(client, first.info.run_id, "m") == [(3, 2.0)]  # the same metric twice is stored once


def test_the_study_storage_waits_for_a_locked_database(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, patience_s=60))
    locked = threading.Event()

    def hold(seconds: float) -> None:
        con = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()

    holder = threading.Thread(target=hold, args=(7.0,))  # past SQLite's own 5 s busy wait
    holder.start()
    locked.wait(10)
    trial = study.ask()  # waits for the lock
    study.tell(trial, 0.5)
    holder.join()
    assert [t.state for t in optuna.load_study(study_name="s", storage=url).trials] == [TrialState.COMPLETE]

    impatient = optuna.load_study(study_name="s", storage=open_storage(url, patience_s=0))
    locked.clear()
    holder = threading.Thread(target=hold, args=(7.0,))
    holder.start()
    locked.wait(10)
    with pytest.raises(optuna.exceptions.StorageInternalError) as e:
        impatient.ask()
    assert blinked(e.value)
    holder.join()


def test_a_state_the_database_took_before_the_answer_was_lost_is_not_an_error(tmp_path):
    inner = rdb_storage(f"sqlite:///{tmp_path}/optuna.db", 10)
    study_id = inner.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = inner.create_new_trial(study_id)

    class LosesTheAnswer:
        def __getattr__(self, name):
            return getattr(inner, name)

        def set_trial_state_values(self, *a, **k):
            inner.set_trial_state_values(*a, **k)  # committed ...
            try:
                raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
            except sqlalchemy.exc.OperationalError as e:  # ... but the answer never came
                raise optuna.exceptions.StorageInternalError("lost") from e

    patient = PatientStorage(LosesTheAnswer(), 10)
    assert patient.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0]) is True
    assert inner.get_trial(trial_id).state == TrialState.COMPLETE
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # a second, real attempt is still an error
        PatientStorage(inner, 10).set_trial_state_values(trial_id, TrialState.FAIL)
