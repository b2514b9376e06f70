"""Optuna studies whose trials are SLURM jobs on the real single-node cluster of scripts/slurm_cluster.py,
launched with the project's `slurm_gpu` preset (no GPU on this node, so no GPU is asked for, and less memory):
both trials run as jobs; a job sent the time-limit signal is requeued and finishes its trial in the same
MLflow run; a job killed outright fails its trial while the study goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from polling import wait_for

from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


def start_study(tmp: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", "hydra/launcher=slurm_gpu",
           # the CI node has no GPU (a GPU request fails at sbatch) and less memory than a GPU node
           "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
           "hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=30",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "trainer.max_iters=120", "trainer.log_every=2",
           "trainer.eval_every=60", "trainer.num_threads=1",
           f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun", *extra]
    return subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SEGSWEEP_CACHE": str(tmp / "cache")})


def training_job(tmp: Path, proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    """(trial number, SLURM job id) of the first trial seen training, from its MLflow run's tags."""
    client = None

    def job() -> tuple[int, str] | None:
        nonlocal client
        for number in (0, 1):
            jsonl = tmp / "multirun" / f"trial_{number}" / "metrics.jsonl"
            # the file first: a trial trains, so the MLflow store exists (a client opened sooner would race the
            # sweeper creating it)
            if jsonl.exists() and jsonl.read_text().count("\n") >= 1:
                client = client or open_client(f"sqlite:///{tmp}/mlflow.db")
                exp = client.get_experiment_by_name("segsweep")
                for run in client.search_runs([exp.experiment_id]):
                    if run.data.tags.get("segsweep.trial") == str(number):
                        return number, run.data.tags["segsweep.slurm_job_id"]
        return None
    return wait_for(job, proc, "a trial training as a SLURM job", timeout)


def finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]


def load(tmp: Path):
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp}/multirun/optuna.db")
    client = open_client(f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("segsweep.role") == "study"]
    children = {int(r.data.tags["segsweep.trial"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return study, client, parent, children


def test_study_runs_as_slurm_jobs_and_a_signalled_job_requeues_and_finishes(tmp_path, slurm_cluster):
    proc = start_study(tmp_path)
    number, job_id = training_job(tmp_path, proc)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before the time limit
    finish(proc)

    study, client, parent, children = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert parent.info.status == "FINISHED" and sorted(children) == [0, 1]
    ids = {n: r.data.tags["segsweep.slurm_job_id"] for n, r in children.items()}
    assert len(set(ids.values())) == 2  # two SLURM jobs
    for t in study.trials:
        child = children[t.number]
        assert child.info.status == "FINISHED" and child.data.metrics["val/mIoU"] == pytest.approx(t.value)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert steps == list(range(2, 121, 2))  # every logging step once, across the requeue
    preempted = study.trials[number]
    stopped = int(preempted.user_attrs["preempted_at"])
    assert children[number].data.tags["segsweep.preempted_at"] == str(stopped) and 0 < stopped < 120
    assert "preempted_at" not in study.trials[1 - number].user_attrs
    records = [json.loads(x) for x in (tmp_path / "multirun" / f"trial_{number}" / "metrics.jsonl").open()]
    assert [r["iteration"] for r in records if "train/loss" in r] == list(range(2, 121, 2))
    state = subprocess.run(["sacct", "-n", "-X", "-D", "-j", job_id, "-o", "State"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert "REQUEUED" in state and state[-1] == "COMPLETED", state  # the job's two lives, per sacct


@pytest.mark.slow  # a SLURM job killed outright runs by default in the re-attach test below (there retried)
def test_a_job_killed_outright_fails_its_trial_and_the_study_goes_on(tmp_path, slurm_cluster):
    # no retry here (study.max_retries=0): the launcher's error fails the trial (submitit's sacct check, 17 s,
    # before the default 60 s heartbeat grace), and the other trial is waited for
    proc = start_study(tmp_path, "study.max_retries=0")
    number, job_id = training_job(tmp_path, proc)
    # SIGKILL to the job's step (`<job>.0`, the training process): no warning, no checkpoint. (A signal to the
    # job itself is a cancel: SIGTERM first, which submitit ignores, and SIGKILL only after KillWait.)
    subprocess.run(["scancel", "--signal=KILL", f"{job_id}.0"], check=True)
    finish(proc)

    study, _, parent, children = load(tmp_path)
    killed, other = study.trials[number], study.trials[1 - number]
    assert killed.state == TrialState.FAIL and "UncompletedJobError" in killed.user_attrs["fail_reason"]
    assert other.state == TrialState.COMPLETE  # awaited to its end, not failed with its neighbour
    assert children[number].info.status == "FAILED"  # its run, left RUNNING by the dead job, closed by the sweep
    assert children[1 - number].info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert parent.data.tags["n_fail"] == "1"


@pytest.mark.slow  # data-parallel training runs by default in test_distributed (torchrun, 2 CPU ranks)
def test_a_trial_with_two_tasks_per_node_trains_data_parallel(tmp_path, slurm_cluster):
    proc = start_study(tmp_path, "hydra.launcher.tasks_per_node=2", "hydra.sweeper.n_trials=1",
                       "hydra.sweeper.n_jobs=1", "trainer.max_iters=6")
    finish(proc)
    study, _, _, children = load(tmp_path)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert children[0].data.tags["segsweep.world_size"] == "2"  # one run, logged by rank 0 of 2 SLURM tasks
    logs = {p.name: p.read_text() for p in (tmp_path / "multirun" / ".submitit").glob("*/*_log.out")}
    assert len(logs) == 2  # one log per task
    assert "data-parallel: rank 0 of 2 on cpu (gloo)" in "".join(logs.values())
    records = [json.loads(x) for x in (tmp_path / "multirun" / "trial_0" / "metrics.jsonl").open()]
    assert [r["iteration"] for r in records if "train/loss" in r] == [2, 4, 6]  # written once, not per rank


def test_a_restarted_sweeper_reattaches_to_live_jobs_and_retries_a_dead_one(tmp_path, slurm_cluster):
    # 2 SLURM jobs run; the sweeper is SIGKILLed, then one job's training step too (after its first checkpoint).
    # The same command again must wait for the live job's trial (not fail it), fail the dead one by its stale
    # heartbeat and retry it from its checkpoint, alongside the live one: each trial COMPLETE once.
    # trial 1 must outlive the restart + the 5 s grace + the retry's ask: 900 iterations leave it ~1 min of margin
    # on a loaded 2-core machine (450 left a few seconds, and once too few)
    extra = ("hydra.sweeper.n_trials=3", "trainer.max_iters=900", "trainer.checkpoint_every=10", "data.num_workers=1",
             "study.heartbeat_interval=1", "study.grace_period=5",
             "study.enqueue=[{loss.ce_weight:0.6,dataset_mix.synthetic_loss_weight:0.5}]")
    proc = start_study(tmp_path, *extra)
    storage = f"sqlite:///{tmp_path}/multirun/optuna.db"
    ckpt = tmp_path / "multirun" / "trial_0" / "checkpoint.pt"

    def both_training() -> bool:
        # the files first: the study's store exists once a trial writes (opening it sooner would race the
        # sweeper creating its tables)
        return ckpt.exists() and all((tmp_path / "multirun" / f"trial_{n}" / "metrics.jsonl").exists()
                                     for n in (0, 1)) \
            and len(optuna.load_study(study_name="smoke", storage=storage).trials) == 2
    wait_for(both_training, proc, "both jobs training and trial 0 checkpointed", timeout=240)
    proc.kill()  # the sweeper dies (a login node rebooting); its jobs run on
    proc.wait(timeout=30)
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")  # the store exists: the trials' runs are in it
    exp = client.get_experiment_by_name("segsweep")
    jobs = {int(r.data.tags["segsweep.trial"]): r.data.tags["segsweep.slurm_job_id"]
            for r in client.search_runs([exp.experiment_id]) if "segsweep.trial" in r.data.tags}
    # trial 0's run exists: it checkpointed (its run opened first)
    subprocess.run(["scancel", "--signal=KILL", f"{jobs[0]}.0"], check=True)  # no warning, no checkpoint now
    again = start_study(tmp_path, *extra)
    finish(again)

    study, client, parent, children = load(tmp_path)
    trials = study.trials
    t0, t1 = trials[0], trials[1]
    assert t0.user_attrs["enqueued"] is True and t0.params["loss.ce_weight"] == 0.6  # the enqueued point first
    assert t1.state == TrialState.COMPLETE and "fail_reason" not in t1.user_attrs  # live: waited for, not failed
    assert t0.state == TrialState.FAIL and t0.user_attrs["fail_reason"].startswith("stale heartbeat")
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == t0.params
    assert retry.user_attrs["resume_from"] == str(ckpt)
    assert retry.datetime_start < t1.datetime_complete  # launched while trial 1's job still ran
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4, [(t.number, t.state.name) for t in trials]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # every point COMPLETE exactly once
    # trial 1's job ran once, to its end (sacct), and each complete trial had a job of its own
    jobs[1] = children[1].data.tags["segsweep.slurm_job_id"]
    state = subprocess.run(["sacct", "-n", "-X", "-D", "-j", jobs[1], "-o", "State"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert state == ["COMPLETED"], state
    ids = [children[t.number].data.tags["segsweep.slurm_job_id"] for t in complete]
    assert len(set(ids)) == 3 and jobs[1] in ids
    dead = children[0]
    assert dead.info.status == "FAILED"
    assert dead.data.tags["segsweep.retried_by"] == children[retry.number].info.run_id
    assert parent.info.status == "FINISHED" and parent.data.tags["stop_reason"].startswith("n_trials reached")
