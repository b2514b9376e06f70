"""Many jobs on one store lose nothing: 4 trial jobs at once on one SQLite MLflow store and one SQLite Optuna
storage; 4 plain runs at once creating a SQLite MLflow store that does not exist yet (MLflow's schema-migration
race); and the production set-up, an ``mlflow server`` backed by PostgreSQL with the Optuna storage in
PostgreSQL, on a real server started here (Debian's ``postgresql``; a missing server fails, never skips).

"Nothing lost" is checked against each job's own record, its ``metrics.jsonl``: every key at every step is in
MLflow once, with the same value; so are its params (the validated config), its artifacts (byte for byte) and
every evaluation as an intermediate value of its Optuna trial.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState
from pg_server import PgServer, postgres_server
from ui_helpers import QUIET_ENV, free_port, mlflow_server, tail

from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
N = 4  # jobs at once on SQLite (4 writers already race; 8 cost ~100 s more of imports on 2 cores)
N_PG = 2  # jobs at once on the PostgreSQL set-up: each job costs ~9 CPU-s of imports, 8 would add ~30 s on 2 cores
# the smoke study's tiny training, for plain runs
TINY = ["debug=tiny", "model.base_channels=4", "model.depth=2"]
ARTIFACTS = {"config_resolved.yaml", "class_weights.txt", "metrics.jsonl", "plots"}
PLOTS = {"plots/training_curves.png", "plots/iou_per_class.png", "plots/confusion.png", "plots/val_panels.png"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def job_env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, **QUIET_ENV, "SEGSWEEP_CACHE": str(cache), **extra}


def sweep(tmp: Path, cache: Path, *overrides: str, env: dict[str, str] | None = None) -> None:
    """``python train.py -m sweeps=smoke ...`` in ``tmp``, its study in ``tmp/multirun``."""
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", f"hydra.sweep.dir={tmp}/multirun",
           *overrides]
    proc = subprocess.run(cmd, cwd=tmp, env=env or job_env(cache), capture_output=True, text=True, timeout=400)
    (tmp / "sweep.log").write_text(proc.stdout + proc.stderr)  # for a post-mortem when a later check fails
    if proc.returncode != 0:
        jobs = "".join(f"\n--- {p}:\n{tail(p, 15)}" for p in sorted((tmp / "multirun").glob(".submitit/*/*_log.*")))
        raise AssertionError(f"the sweep exited with {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
                             f"{jobs[-6000:]}")


def expected_params(out_dir: Path) -> dict[str, str]:
    """The params a run logs: its validated config (the resolved config it wrote), flattened."""
    from segsweep.config import Config, validate
    from segsweep.tracking.run_info import effective_params

    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(out_dir / "config_resolved.yaml"))
    return effective_params(validate(cfg))


def assert_run_complete(client, run, out_dir: Path, tmp: Path, plots: bool = True) -> None:
    """The MLflow run holds everything its job wrote to ``out_dir``: metrics, params, artifacts (no figures when
    ``plots`` is off: the smoke study sets mlflow.plots=false)."""
    rid, name = run.info.run_id, run.info.run_name
    assert run.info.status == "FINISHED", f"{name}: {run.info.status}"
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
    expected: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    for record in records:
        step = record.pop("iteration")
        for key, value in record.items():
            if value is not None:  # non-finite values are null in the JSONL and not sent to MLflow
                expected[key].append((step, value))
    assert len(expected) >= 20 and {s for v in expected.values() for s, _ in v} == {3, 6}, sorted(expected)
    assert set(run.data.metrics) == set(expected), f"{name}: metric keys differ from {out_dir}/metrics.jsonl"
    for key, points in expected.items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(rid, key))
        assert logged == sorted(points), f"{name}: {key} in MLflow {logged}, in metrics.jsonl {sorted(points)}"

    assert run.data.params == expected_params(out_dir), f"{name}: params differ from its config"

    assert {a.path for a in client.list_artifacts(rid)} == (ARTIFACTS if plots else ARTIFACTS - {"plots"}), name
    assert {a.path for a in client.list_artifacts(rid, "plots")} == (PLOTS if plots else set()), name
    dst = tmp / "downloads" / rid
    dst.mkdir(parents=True)
    for artifact in ("metrics.jsonl", "config_resolved.yaml", "class_weights.txt"):
        got = Path(client.download_artifacts(rid, artifact, str(dst)))
        assert got.read_bytes() == (out_dir / artifact).read_bytes(), f"{name}: artifact {artifact} differs"


def run_windows(runs) -> list[tuple[int, int]]:
    """(start, end) of each MLflow run, in ms."""
    return [(r.info.start_time, r.info.end_time) for r in runs]


def job_windows(sweep_dir: Path, n: int) -> list[tuple[int, int]]:
    """(first, last) log time of each trial's job, in s: the job's whole life, not only its MLflow run's (a run
    of the 6-iteration smoke trial is open ~2 s, less than two jobs' start-up can differ on a busy machine).
    Second resolution, so two jobs one after the other never overlap: the next starts no earlier than the
    second the last ended in."""
    out = []
    for t in range(n):
        stamps = [line[1:9] for line in (sweep_dir / f"trial_{t}" / "train.log").read_text().splitlines()
                  if line[:1] == "[" and line[9:10] == "]"]
        start, end = (sum(int(x) * f for x, f in zip(s.split(":"), (3600, 60, 1))) for s in (stamps[0], stamps[-1]))
        out.append((start, end if end >= start else end + 86400))  # a job across midnight
    return out


def peak_overlap(windows: list[tuple[int, int]]) -> int:
    """The most (start, end) windows open at the same moment (an end before a start at the same time)."""
    events = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows])
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def assert_study_complete(storage: str, tracking_uri: str, sweep_dir: Path, n: int, tmp: Path):
    """``n`` COMPLETE trials, each with every evaluation as an intermediate value; one FINISHED parent run with
    the study's summary; a FINISHED child run per trial holding all its job wrote.
    Returns (client, parent run, child runs)."""
    study = optuna.load_study(study_name="smoke", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n, [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]

    client = open_client(tracking_uri)
    exp = client.get_experiment_by_name("segsweep")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("segsweep.role") == "study"]
    assert len(parents) == 1, f"{len(parents)} study runs"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["n_complete"] == str(n)
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(runs) == n + 1 and len(children) == n, [r.info.run_name for r in runs]
    assert sorted(r.info.run_name for r in children.values()) == sorted(f"trial-{i}" for i in range(n))

    for t in study.trials:
        out_dir = sweep_dir / f"trial_{t.number}"
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
        evals = {r["iteration"]: r["val/mIoU"] for r in records if "val/mIoU" in r}
        assert t.intermediate_values == evals and set(evals) == {3, 6}, f"trial {t.number}"
        assert t.value == evals[6]
        child = children[t.user_attrs["mlflow_run_id"]]
        assert child.data.tags["segsweep.trial"] == str(t.number)
        assert float(child.data.params["dataset_mix.synthetic_loss_weight"]) == pytest.approx(
            t.params["dataset_mix.synthetic_loss_weight"])
        assert child.data.metrics["val/mIoU"] == t.value
        assert_run_complete(client, child, out_dir, tmp, plots=False)

    csv_path = Path(client.download_artifacts(parent.info.run_id, "study/trials.csv", str(tmp / "parent")))
    with open(csv_path, newline="") as f:
        assert len(list(csv.DictReader(f))) == n
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    return client, parent, list(children.values())


# slow: left out by -m "not slow" (the default run and CI run it). Without it, trial jobs at once on one SQLite
# MLflow store and Optuna storage still run in test_study_async (2 submitit_local jobs) and test_slurm_study, which
# check their trials and runs but not each metric against metrics.jsonl; the fresh-store test below does that for
# 4 plain runs at once on one SQLite MLflow store.
@pytest.mark.slow
def test_concurrent_trials_on_one_sqlite_store_lose_nothing(tmp_path, cache_dir):
    """N (4) trial jobs in as many processes at once, all writing to one SQLite MLflow store and one SQLite study."""
    sweep(tmp_path, cache_dir, f"hydra.sweeper.n_trials={N}", f"hydra.sweeper.n_jobs={N}",
          "hydra/launcher=local_parallel", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    _, _, children = assert_study_complete(f"sqlite:///{tmp_path}/multirun/optuna.db",
                                           f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "multirun", N, tmp_path)
    logs = list((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == N, "one local job (process) per trial"
    # they really ran side by side, so they really wrote to the stores at the same time
    assert peak_overlap(run_windows(children)) >= N // 2, run_windows(children)


def test_concurrent_runs_create_a_fresh_sqlite_store_together(tmp_path, cache_dir):
    """N (4) plain runs started at once on a store file that does not exist yet: one of them creates the schema,
    none fails (without the store lock, 7 or all 8 of 8 such runs died in MLflow's table creation and migrations)."""
    db = tmp_path / "store" / "mlflow.db"
    assert not db.exists() and not db.parent.exists()
    procs, logs = [], []
    try:
        for i in range(N):
            logs.append(tmp_path / f"run_{i}.log")
            with open(logs[-1], "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "train.py"), *TINY, f"mlflow.tracking_uri=sqlite:///{db}",
                     f"mlflow.run_name=plain-{i}", f"hydra.run.dir={tmp_path}/run_{i}"],
                    cwd=tmp_path, env=job_env(cache_dir), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 300
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:  # only on a failure or time-out: the runs this test started
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = {i: tail(logs[i], 12) for i, p in enumerate(procs) if p.returncode != 0}
    assert not failed, "\n".join(f"--- run {i} failed:\n{t}" for i, t in failed.items())

    client = open_client(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("segsweep")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(f"plain-{i}" for i in range(N))
    for r in runs:
        assert_run_complete(client, r, tmp_path / r.info.run_name.replace("plain-", "run_"), tmp_path)
    assert [e.name for e in client.search_experiments()].count("segsweep") == 1


# --- PostgreSQL: an mlflow server with a PostgreSQL backend, the Optuna storage in PostgreSQL ---------------

@pytest.fixture(scope="module")
def postgres() -> PgServer:
    """A throwaway PostgreSQL server on 127.0.0.1 with databases (and roles) ``mlflow`` and ``optuna``."""
    with postgres_server(free_port(), ("mlflow", "optuna")) as server:
        yield server


@pytest.fixture
def pgpass(postgres, tmp_path) -> Path:
    """The passwords for libpq: the URLs carry none, so none ends up in MLflow params or in ``ps``."""
    return postgres.write_pgpass(tmp_path / "pgpass")


# slow (43 s measured on 2 cores, beside another test): the default run and CI (which runs every test) include it;
# -m "not slow" leaves it out, and with it the only test of the mlflow server + PostgreSQL set-up
@pytest.mark.slow
def test_concurrent_trials_on_mlflow_server_and_optuna_in_postgres(postgres, pgpass, tmp_path, cache_dir,
                                                                   monkeypatch):
    """The production set-up: trial jobs at once, tracked through an ``mlflow server`` with a PostgreSQL backend
    and proxied artifacts, the study in PostgreSQL; read back from both."""
    monkeypatch.setenv("PGPASSFILE", str(pgpass))  # for this process's reads of the study too
    env = job_env(cache_dir)
    artifacts = tmp_path / "server-artifacts"
    storage = postgres.url("optuna")
    with mlflow_server(postgres.url("mlflow"), tmp_path / "mlflow-server.log", timeout=90,
                       extra=("--artifacts-destination", str(artifacts)), env=env) as base:
        # quoted: the URL holds ':' and '@' (the sweeper passes it on to the jobs quoted too)
        sweep(tmp_path, cache_dir, f"hydra.sweeper.n_trials={N_PG}", f"hydra.sweeper.n_jobs={N_PG}",
              "hydra/launcher=local_parallel", f"mlflow.tracking_uri={base}", f"hydra.sweeper.storage='{storage}'",
              env=env)
        _, parent, children = assert_study_complete(storage, base, tmp_path / "multirun", N_PG, tmp_path)
        windows = job_windows(tmp_path / "multirun", N_PG)
        assert peak_overlap(windows) >= 2, windows  # the jobs ran at once
        assert parent.data.params["storage"] == storage
        assert not any(pw in str(run.data) for run in (parent, *children) for pw in postgres.passwords.values())
        for run in (parent, *children):  # artifacts went through the server into its --artifacts-destination
            assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        stored = {p.relative_to(artifacts).parts[1] for p in artifacts.rglob("metrics.jsonl")}
        assert stored == {r.info.run_id for r in children}
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
    # the study lives in PostgreSQL, not in a SQLite file beside the sweep
    assert not (tmp_path / "multirun" / "optuna.db").exists()
    assert optuna.get_all_study_names(storage) == ["smoke"]
