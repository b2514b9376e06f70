"""submitit's local launcher shows every job the same GPUs (0 .. gpus_per_node-1); segsweep gives each local trial
GPUs of its own (segsweep.sweep.runner.GpuPool) and refuses, before any store is touched, a study whose n_jobs
trials need more GPUs than the machine shows. No GPU is needed: the GPU ids are only shown to the jobs
(CUDA_VISIBLE_DEVICES), which record them on their MLflow runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

from segsweep.sweep.runner import GpuPool, _launcher_for
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]


def local(gpus_per_node=1, setup=None) -> LocalLauncher:
    return LocalLauncher(submitit_folder="/tmp/x/.submitit/%j", gpus_per_node=gpus_per_node, setup=setup)


def test_each_trial_gets_gpus_of_its_own_and_gives_them_back(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    pool = GpuPool(local(gpus_per_node=2), n_jobs=2)
    assert pool.take(0) == ["3", "5"] and pool.take(1) == ["6", "7"]
    pool.give_back(0)
    assert pool.take(2) == ["3", "5"]
    launcher = _launcher_for(local(setup=["module load cuda"]), 2, ["3", "5"])
    # the job's shell runs this after submitit set CUDA_VISIBLE_DEVICES=0,1 for every job
    assert launcher.params["setup"] == ["module load cuda", "export CUDA_VISIBLE_DEVICES=3,5"]
    assert launcher.params["submitit_folder"] == "/tmp/x/.submitit/trial_2"


def test_no_gpu_asked_means_no_pinning(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pool = GpuPool(local(gpus_per_node=None), n_jobs=4)
    assert pool.take(0) is None
    assert _launcher_for(local(gpus_per_node=None), 0, None).params["setup"] is None  # left as configured


def test_more_gpus_than_the_machine_shows_is_a_config_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match=r"'hydra.sweeper.n_jobs': 3 trials at once .* need 3 GPUs, but this machine "
                                         r"shows 2 \(CUDA_VISIBLE_DEVICES='0,1'\)"):
        GpuPool(local(gpus_per_node=1), n_jobs=3)


def study(tmp: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", "hydra/launcher=submitit_local",
           "hydra.launcher.gpus_per_node=1", "trainer.num_threads=1", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
           f"hydra.sweep.dir={tmp}/multirun", *extra]
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SEGSWEEP_CACHE": str(tmp / "cache"), **env})


def test_two_local_trials_at_once_run_on_different_gpus(tmp_path):
    done = study(tmp_path, {"CUDA_VISIBLE_DEVICES": "5,7"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    shown = sorted(r.data.tags.get("segsweep.cuda_visible_devices", "?") for r in runs
                   if "segsweep.trial" in r.data.tags)
    assert shown == ["5", "7"]  # without the pool both would have been shown "0"

    (tmp_path / "refused").mkdir()
    refused = study(tmp_path / "refused", {"CUDA_VISIBLE_DEVICES": "5"})
    assert refused.returncode != 0
    assert "'hydra.sweeper.n_jobs': 2 trials at once with hydra.launcher.gpus_per_node=1 need 2 GPUs" in refused.stderr
    assert not (tmp_path / "refused" / "multirun" / "optuna.db").exists()  # refused before any store was made
