"""Stores that are wrong or away never cost a run (issue 18), on real stores started here on 127.0.0.1.

- A store that does not answer stops a run or a study in seconds with one line (the key, the URI without its
  password, the cause): an MLflow URI nobody listens on, a PostgreSQL URL nobody listens on, a SQLite path that
  cannot be written.
- A study whose every trial has the same config error stops before its first launch.
- A real ``mlflow server`` killed while a run logs and restarted ~12 s later: every value of the run's
  ``metrics.jsonl`` ends up in MLflow once, at its step; the run is FINISHED; training did not wait for it.
- The server away from the start and never back: the run trains and exits 0 with one line; ``segsweep.sync``
  afterwards makes MLflow equal to ``metrics.jsonl``; a second sync sends nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from pg_server import postgres_server
from polling import NotYet, wait_for
from ui_helpers import QUIET_ENV, free_port, tail

from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "model.base_channels=4", "model.depth=2", "trainer.progress_bar=off", "mlflow.plots=false"]
SECONDS = 60  # generous for a loaded 2-core CI machine; bench/bench_preflight.py measures the real figure


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, **QUIET_ENV, "SEGSWEEP_CACHE": str(tmp / "cache")}


def train(tmp: Path, *overrides: str, multirun: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), *(["-m", "sweeps=smoke", f"hydra.sweep.dir={tmp}/multirun"]
                                                     if multirun else [f"hydra.run.dir={tmp}/run"]), *overrides]
    return subprocess.run(cmd, cwd=tmp, env=env(tmp), capture_output=True, text=True, timeout=timeout)


def lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


# --- pre-flight ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["mlflow_http", "optuna_postgresql", "mlflow_readonly_sqlite"])
def test_a_store_that_does_not_answer_stops_in_seconds_with_one_line(tmp_path, case):
    port = free_port()  # nobody listens on it
    if case == "mlflow_http":
        args, multirun = [f"mlflow.tracking_uri=http://127.0.0.1:{port}"], False
        expected = ["config key 'mlflow.tracking_uri'", f"http://127.0.0.1:{port}", "Connection refused"]
    elif case == "optuna_postgresql":
        args = [f"hydra.sweeper.storage=postgresql+psycopg2://alice:s3cret@127.0.0.1:{port}/studies",
                f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
        multirun = True
        expected = ["study not started", "config key 'hydra.sweeper.storage'",
                    f"postgresql+psycopg2://alice:***@127.0.0.1:{port}/studies", "Connection refused"]
    else:  # sysfs refuses new files to every user, root included (a chmod would not stop root)
        args, multirun = ["mlflow.tracking_uri=sqlite:////sys/fs/segsweep-test/mlflow.db"], False
        expected = ["config key 'mlflow.tracking_uri'", "cannot write /sys/fs/segsweep-test/mlflow.db"]
    start = time.monotonic()
    proc = train(tmp_path, *TINY, *args, multirun=multirun, timeout=120)
    took = time.monotonic() - start
    out = lines(proc)
    assert proc.returncode == 1, out
    assert len(out) == 1, f"expected one line, got {len(out)}:\n" + "\n".join(out[-20:])
    for part in expected:
        assert part in out[0], (part, out[0])
    assert "s3cret" not in proc.stdout + proc.stderr
    assert took < SECONDS, f"took {took:.1f} s"
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "multirun").exists()


def test_a_study_whose_trials_all_share_a_config_error_stops_before_its_first_launch(tmp_path):
    proc = train(tmp_path, "trainer.checkpoint_every=2", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                 multirun=True)  # the smoke study logs every 3 iterations
    out = lines(proc)
    assert proc.returncode == 1, out
    message = "config key 'trainer.checkpoint_every': expected 0 or a multiple of trainer.log_every (3), got 2"
    assert len(out) == 1 and out[0].endswith(f"[ERROR] study not started: {message}"), out
    assert not (tmp_path / "multirun").exists()  # no storage, no job directory: nothing was launched
    # the same error from a single run: the same words
    single = lines(train(tmp_path, *TINY, "trainer.log_every=3", "trainer.checkpoint_every=2"))
    assert len(single) == 1 and single[0].endswith(f"[ERROR] {message}"), single


def test_a_study_stopped_by_its_failure_rate_says_so_in_one_line_with_the_commonest_reason(tmp_path):
    # a searched key's every sampled value is invalid: the pre-flight cannot know, the trials fail
    proc = train(tmp_path, "dataset_mix.synthetic_loss_weight=interval(-2,-1)",
                 f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", multirun=True)
    out = lines(proc)
    assert proc.returncode == 1, out[-10:]
    assert "Traceback" not in proc.stdout + proc.stderr
    (last,) = [line for line in out if "study stopped" in line]
    assert "study stopped: max_failure_rate exceeded: 2 of the stage's 2 trials failed" in last, last
    assert ("commonest fail reason: \"the job ended without a result: ConfigError: config key "
            "'dataset_mix.synthetic_loss_weight': expected a finite number >= 0, got <x>\" (2 of 2 failed "
            "trials)") in last, last


# --- a real mlflow server that goes away -----------------------------------------------------------------------

class Server:
    """``mlflow server`` on a fixed port over a SQLite file; ``kill()`` is a crash (SIGKILL to its group)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port, self.proc, self.starts = tmp, free_port(), None, 0
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = self.tmp / f"server{self.starts}.log"
        exe = Path(sys.executable).with_name("mlflow")
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [str(exe), "server", "--backend-store-uri", f"sqlite:///{self.tmp}/server.db", "--host",
                 "127.0.0.1", "--port", str(self.port), "--workers", "1"], cwd=self.tmp, stdout=f,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **QUIET_ENV},
                start_new_session=True)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    return r.status == 200
            except OSError as e:
                raise NotYet(str(e)) from e

        wait_for(healthy, self.proc, f"mlflow server on {self.url}", 90, log=log, interval=0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.kill()


def jsonl_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of every finite value the run recorded."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k != "iteration" and v is not None:
                out.setdefault(k, []).append((r["iteration"], v))
    return out


def assert_mlflow_equals_jsonl(client, run_id: str, run_dir: Path) -> None:
    want = jsonl_metrics(run_dir)
    assert set(client.get_run(run_id).data.metrics) == set(want)
    for key, values in want.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [s for s, _ in got] == [s for s, _ in sorted(values)], f"{key}: steps differ (or are repeated)"
        assert [v for _, v in got] == pytest.approx([v for _, v in sorted(values)], rel=1e-12), key


def the_run(client, experiment: str = "segsweep"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


LONG = [*TINY, "trainer.max_iters=900", "trainer.log_every=2", "trainer.eval_every=300"]


@pytest.mark.slow
def test_a_server_killed_while_a_run_logs_and_restarted_loses_no_metric(tmp_path, server):
    server.start()
    base_dir, run_dir = tmp_path / "base", tmp_path / "run"
    # the same training without an outage first: what the outage may add to the wall time
    t0 = time.monotonic()
    base = train(tmp_path, *LONG, f"mlflow.tracking_uri={server.url}", "mlflow.experiment_name=baseline",
                 f"hydra.run.dir={base_dir}")
    base_s = time.monotonic() - t0
    assert base.returncode == 0, base.stderr[-3000:]

    cmd = [sys.executable, str(ROOT / "train.py"), *LONG, f"mlflow.tracking_uri={server.url}",
           f"hydra.run.dir={run_dir}"]
    t0 = time.monotonic()
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        def logging_to_mlflow() -> bool:  # the run exists and has logged some steps
            n = len((run_dir / "metrics.jsonl").read_text().splitlines()) if (run_dir / "metrics.jsonl").exists() \
                else 0
            if n < 20:
                raise NotYet(f"{n} lines in metrics.jsonl")
            return True

        wait_for(logging_to_mlflow, proc, "the run to log 20 steps", 120, log=tmp_path / "train.log")
        server.kill()
        down = time.monotonic()
        time.sleep(12)
        server.start()
        outage = time.monotonic() - down  # from the kill until the restarted server answers
        assert proc.wait(300) == 0, tail(tmp_path / "train.log", 40)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_s = time.monotonic() - t0
    text = (tmp_path / "train.log").read_text()
    assert "MLflow store" in text and "away" in text and "back after" in text, text[-3000:]
    assert not (run_dir / "mlflow_unsent.json").exists()
    client = open_client(server.url)
    run = the_run(client)
    assert run.info.status == "FINISHED"
    assert_mlflow_equals_jsonl(client, run.info.run_id, run_dir)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= \
        {"config_resolved.yaml", "class_weights.txt", "metrics.jsonl"}
    # training never waited for the store: the outage costs less than itself (the restart's CPU included)
    assert run_s - base_s < outage, f"run {run_s:.1f} s, baseline {base_s:.1f} s, outage {outage:.1f} s"


@pytest.mark.slow
def test_a_server_away_from_the_start_the_run_ends_normally_and_sync_sends_it_all(tmp_path, server):
    proc = train(tmp_path, *TINY, "trainer.max_iters=12", "trainer.log_every=2", "trainer.eval_every=6",
                 f"mlflow.tracking_uri={server.url}", "mlflow.preflight=false", "mlflow.plots=true")
    run_dir = tmp_path / "run"
    assert proc.returncode == 0, proc.stderr[-3000:]
    notice = [line for line in lines(proc) if "not sent" in line]
    assert len(notice) == 1 and notice[0].endswith(f"python -m segsweep.sync {run_dir}"), notice
    assert "the run's creation" in notice[0] and "its final status" in notice[0]
    assert (run_dir / "mlflow_unsent.json").is_file() and (run_dir / "model_final.pt").is_file()

    server.start()
    sync = [sys.executable, "-m", "segsweep.sync", str(tmp_path)]
    dry = subprocess.run([*sync, "--dry-run"], capture_output=True, text=True, env=env(tmp_path), timeout=120)
    assert dry.returncode == 0 and f"{run_dir}: would send the run's creation" in dry.stdout, dry.stdout + dry.stderr
    client = open_client(server.url)
    assert client.get_experiment_by_name("segsweep") is None  # a dry run sends nothing
    first = subprocess.run(sync, capture_output=True, text=True, env=env(tmp_path), timeout=120)
    assert first.returncode == 0 and f"{run_dir}: sent the run's creation" in first.stdout, first.stdout + first.stderr
    run = the_run(client)
    assert run.info.status == "FINISHED"
    assert_mlflow_equals_jsonl(client, run.info.run_id, run_dir)
    params = run.data.params
    assert params["trainer.max_iters"] == "12" and params["loss.name"] == "combined"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config_resolved.yaml", "class_weights.txt", "metrics.jsonl", "plots"} <= arts
    assert (run_dir / "metrics.jsonl").read_bytes() == Path(
        client.download_artifacts(run.info.run_id, "metrics.jsonl", str(tmp_path))).read_bytes()
    assert not (run_dir / "mlflow_unsent.json").exists()

    second = subprocess.run(sync, capture_output=True, text=True, env=env(tmp_path), timeout=120)
    assert second.returncode == 0 and "nothing to sync" in second.stdout, second.stdout
    assert the_run(client).info.run_id == run.info.run_id
    assert_mlflow_equals_jsonl(client, run.info.run_id, run_dir)  # nothing twice


# --- the Optuna storage blinks ---------------------------------------------------------------------------------

def launched(log: Path, number: int) -> bool:
    if f"trial {number} launched" not in log.read_text():
        raise NotYet(f"trial {number} not launched yet")
    return True


@pytest.mark.slow
def test_a_study_whose_sqlite_storage_is_locked_for_seconds_loses_no_trial(tmp_path):
    """Another process holds the study's SQLite database locked for 12 s (longer than SQLite's 5 s busy wait)
    while trials run: the sweeper and the jobs wait for it; every trial completes, none fails or runs twice."""
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", f"hydra.sweep.dir={tmp_path}/multirun",
           f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "hydra.sweeper.n_trials=3",
           "hydra.sweeper.n_jobs=1", "trainer.max_iters=60", "trainer.log_every=3", "trainer.eval_every=6"]
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        db = tmp_path / "multirun" / "optuna.db"
        wait_for(lambda: launched(tmp_path / "sweep.log", 0), proc, "the first launch", 120,
                 log=tmp_path / "sweep.log")
        held = threading.Event()

        def hold() -> None:
            con = sqlite3.connect(db, timeout=30, isolation_level=None)
            con.execute("BEGIN EXCLUSIVE")
            held.set()
            time.sleep(12)
            con.execute("COMMIT")
            con.close()

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(30)
        holder.join()
        assert proc.wait(400) == 0, tail(tmp_path / "sweep.log", 40)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "sweep.log").read_text()  # the smoke study's jobs run in the sweeper's process
    assert "Optuna storage busy or away" in text, text[-3000:]
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3, states


@pytest.mark.slow
def test_a_study_whose_postgresql_storage_restarts_loses_no_trial(tmp_path, monkeypatch):
    """The study's PostgreSQL server crashes (immediate stop) while a trial runs and is back 8 s later: the job and
    the sweeper wait for it; every trial completes, none fails or runs twice."""
    with postgres_server(free_port(), ("optuna",)) as pg:
        pgpass = pg.write_pgpass(tmp_path / "pgpass")
        storage = pg.url("optuna")
        cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", f"hydra.sweep.dir={tmp_path}/multirun",
               f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweeper.storage='{storage}'",
               "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", "trainer.max_iters=60", "trainer.log_every=3",
               "trainer.eval_every=6"]
        with open(tmp_path / "sweep.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env={**env(tmp_path), "PGPASSFILE": str(pgpass)}, stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: launched(tmp_path / "sweep.log", 1), proc, "trial 1's launch", 180,
                     log=tmp_path / "sweep.log")
            pg.restart(down_s=8)
            assert proc.wait(400) == 0, tail(tmp_path / "sweep.log", 40)
        finally:
            if proc.poll() is None:
                proc.kill()
        text = (tmp_path / "sweep.log").read_text()
        assert "Optuna storage busy or away" in text, text[-3000:]
        monkeypatch.setenv("PGPASSFILE", str(pgpass))  # for this process's read of the study
        trials = optuna.load_study(study_name="smoke", storage=storage).trials
        assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(3)]
