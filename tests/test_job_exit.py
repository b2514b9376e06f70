"""A job always ends: a data error raised inside a loader worker, or a pruned trial, ends the process within
seconds (exit code 1 and one line naming the file for a single run; FAIL or PRUNED for a trial), with loader
workers on as users run it. Before the fix such a process never exited: the workers ignore SIGTERM, and Python's
exit waits for them without a timeout. A hang shows here as subprocess.TimeoutExpired."""

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from segsweep.config import ToyCityConfig
from segsweep.data.toycity import ensure_toycity
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
SMALL = ToyCityConfig(height=64, width=128, n_real_train=12, n_real_val=4, n_synthetic=12)  # as sweeps=smoke
TINY = ["debug=tiny", "model.base_channels=4", "model.depth=2"]  # debug=tiny's ToyCity is SMALL


def corrupt_cache(cache: Path) -> Path:
    """A toycity cache whose synthetic images are all truncated (PNG headers intact, so only decoding fails, in
    a loader worker, at the first batch); returns their directory."""
    gta = ensure_toycity(cache, SMALL)["gta5"]
    for image in (gta / "images").iterdir():
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    return gta / "images"


@pytest.fixture(scope="module")
def bad_cache(tmp_path_factory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("bad-cache")
    return cache, corrupt_cache(cache)


def truncated(images: Path) -> str:
    return (rf"cannot read {re.escape(str(images))}/\d{{5}}\.png: image file is truncated "
            r"\(expected a valid image file\)")


@pytest.mark.parametrize("workers", [0, 1, 4])
def test_data_error_in_a_worker_ends_the_run_with_one_line(tmp_path, bad_cache, workers):
    cache, images = bad_cache
    tracking = f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db" if workers == 4 else "mlflow.enabled=false"
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, f"data.num_workers={workers}", tracking,
           f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "SEGSWEEP_CACHE": str(cache)},
                          capture_output=True, text=True, timeout=90)  # a hang ends the test here
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    errors = [line for line in out.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and re.search(truncated(images) + "$", errors[0]), out[-3000:]
    assert "Traceback" not in out and "worker" not in errors[0]
    if workers == 4:
        client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
        (run,) = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
        assert run.info.status == "FAILED"


def test_trials_with_loader_workers_end_when_pruned_or_failing_on_data(tmp_path, bad_cache):
    """A grid of two trials in their own processes (submitit local), one loader worker each: one reads the
    corrupt cache and fails naming the file, the other is pruned at its first evaluation; both jobs end and the
    sweep finishes."""
    cache, images = bad_cache
    good = tmp_path / "good-cache"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=grid", "hydra.sweeper.study_name=exits",
           "hydra/launcher=submitit_local", "hydra.sweeper.max_failure_rate=0.5", *TINY, "data.num_workers=1",
           # sweeps=grid fixes its own max_iters and eval_every, which beat debug=tiny's (the command line wins)
           "trainer.max_iters=6", "trainer.eval_every=3",
           f"data.cache_dir={cache},{good}", "pruner=threshold", "study.pruner.lower=1.5",
           f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/multirun"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    trials = optuna.load_study(study_name="exits", storage=f"sqlite:///{tmp_path}/multirun/optuna.db").trials
    by_cache = {t.params["data.cache_dir"]: t for t in trials}
    failed, pruned = by_cache[str(cache)], by_cache[str(good)]
    assert failed.state == TrialState.FAIL and pruned.state == TrialState.PRUNED
    assert re.fullmatch("DatasetError: " + truncated(images), failed.user_attrs["fail_reason"])
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(failed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert client.get_run(pruned.user_attrs["mlflow_run_id"]).info.status == "KILLED"
