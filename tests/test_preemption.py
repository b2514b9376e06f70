"""Stop signals: SLURM's time-limit warning (USR2, as submitit asks SLURM to send it) and SIGTERM make a run
checkpoint at its next logging step; the same command resumes it exactly, in the same MLflow run. Inside a
submitit job the signal requeues the job, which resumes its trial and finishes it."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState
from polling import wait_for

from segsweep.config import register_configs
from segsweep.seeds import run
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
# debug=tiny's ToyCity, trained longer (60 iterations, a logging step every 2): the signals arrive mid-run
TINY = ["debug=tiny", "trainer.max_iters=60", "trainer.log_every=2", "trainer.eval_every=30",
        "trainer.num_threads=1", "model.base_channels=4", "model.depth=2"]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# time-limit (USR2) outside submitit takes SIGTERM's path (the same handler, then the signal's default action), so
# it is slow here. USR2's submitit path (a requeue) runs in the slow test below and on the real SLURM cluster in
# test_slurm_study's first test, which is not slow: under -m "not slow" that one still sends USR2.
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGUSR2, marks=pytest.mark.slow), signal.SIGTERM],
                         ids=["time-limit", "sigterm"])
def test_stop_signal_checkpoints_and_the_same_command_resumes_exactly(tmp_path, sig):
    args = [*TINY, "data.num_workers=1", f"data.cache_dir={tmp_path}/cache",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        reference = run(compose("config", overrides=[*args, f"output_dir={tmp_path}/straight",
                                                     "mlflow.enabled=false"]))

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={out}"]
    # its own process group, signalled whole as SLURM signals a job step (the loader worker gets it too)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: len(records(out / "metrics.jsonl")) >= 1, proc, "the first logging step", interval=0.05)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -sig, err[-3000:]  # the process still ends as the signal ends it
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    stopped = ckpt["iteration"]
    assert 0 < stopped < 60 and stopped % 2 == 0  # at a logging step
    assert records(out / "metrics.jsonl")[-1]["iteration"] == stopped
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    first = client.get_run(ckpt["mlflow_run_id"])
    assert first.info.status == "KILLED" and first.data.tags["segsweep.preempted_at"] == str(stopped)

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint.pt'} at iteration {stopped}" in again.stdout

    mlrun = client.get_run(ckpt["mlflow_run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.metrics["val/mIoU"] == reference  # the uninterrupted run's value, to the last bit
    a = torch.load(tmp_path / "straight" / "model_final.pt", weights_only=True)["model"]
    b = torch.load(out / "model_final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["iteration"] for r in records(out / "metrics.jsonl")] == \
        [r["iteration"] for r in records(tmp_path / "straight" / "metrics.jsonl")]  # nothing twice or missing
    assert not (out / "checkpoint.pt").exists()


def task_pids(marker: str) -> list[int]:
    """PIDs of submitit task processes whose command line mentions ``marker`` (the test's own folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "submitit.core._submit" in cmdline and marker in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow  # the same requeue runs on the real SLURM cluster in test_slurm_study (USR2, sacct REQUEUED)
def test_time_limit_signal_requeues_a_submitit_job_which_finishes_its_trial(tmp_path):
    sweep_dir = tmp_path / "multirun"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", "hydra/launcher=local_parallel",
           "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1", *TINY, "data.num_workers=0",
           f"data.cache_dir={tmp_path}/cache", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
           f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    jsonl = sweep_dir / "trial_0" / "metrics.jsonl"
    try:
        wait_for(lambda: len(records(jsonl)) >= 1 and task_pids(str(sweep_dir)), proc, "trial 0 training",
                 interval=0.05)
        (pid,) = task_pids(str(sweep_dir))
        os.kill(pid, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]

    (trial,) = optuna.load_study(study_name="smoke", storage=f"sqlite:///{sweep_dir}/optuna.db").trials
    assert trial.state == TrialState.COMPLETE  # the same trial, finished by the requeued job
    stopped = int(trial.user_attrs["preempted_at"])
    iterations = [r["iteration"] for r in records(jsonl) if "train/loss" in r]
    assert iterations == list(range(2, 61, 2)) and 0 < stopped < 60  # each logging step once
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    child = client.get_run(trial.user_attrs["mlflow_run_id"])  # one run for both halves
    assert child.info.status == "FINISHED" and child.data.tags["segsweep.preempted_at"] == str(stopped)
    assert child.data.metrics["val/mIoU"] == pytest.approx(trial.value)
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert steps == list(range(2, 61, 2))
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.*"))
    assert "Requeued job" in logs and "resumed from" in logs
