"""Optuna studies through the CLI (`python train.py -m sweeps=smoke`), each in its own temporary directory:
completion and MLflow linkage, resume after a kill or Ctrl-C, a failing trial, a pruned trial."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from polling import STUDY_OPENED, logged, wait_for

from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def command(tmp: Path, *extra: str) -> list[str]:
    study = [] if any(e.startswith("sweeps=") for e in extra) else ["sweeps=smoke"]
    return [sys.executable, str(ROOT / "train.py"), "-m", *study, f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"hydra.sweep.dir={tmp}/multirun", *extra]


def sweep(tmp: Path, cache: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(tmp, *extra), cwd=tmp, env={**os.environ, "SEGSWEEP_CACHE": str(cache)},
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def study(tmp: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp}/multirun/optuna.db")


def runs(tmp: Path):
    client = open_client(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("segsweep")
    all_runs = client.search_runs([exp.experiment_id])
    parents = [r for r in all_runs if r.data.tags.get("segsweep.role") == "study"]
    assert len(parents) == 1, "one parent run per study, also after a resume"
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def test_study_completes_with_parent_children_and_summary(tmp_path, cache_dir):
    sweep(tmp_path, cache_dir, "mlflow.plots=true")  # the smoke study draws no figures by default
    s = study(tmp_path)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 2
    assert all(0 <= t.value <= 1 for t in s.trials)
    client, parent, children = runs(tmp_path)
    assert parent.info.run_name == "smoke" and parent.info.status == "FINISHED"
    assert parent.data.params["study_name"] == "smoke" and "space.loss.ce_weight" in parent.data.params
    assert parent.data.params["storage"] == f"sqlite:///{tmp_path}/multirun/optuna.db"
    assert "train.py -m sweeps=smoke" in parent.data.params["command"]
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    by_number = {int(r.data.tags["segsweep.trial"]): r for r in children}
    for t in s.trials:  # each trial knows its child run, whose params are the sampled ones
        child = by_number[t.number]
        assert t.user_attrs["mlflow_run_id"] == child.info.run_id and child.info.status == "FINISHED"
        assert float(child.data.params["dataset_mix.synthetic_loss_weight"]) == pytest.approx(
            t.params["dataset_mix.synthetic_loss_weight"])
        # beta = 1 - alpha: loss.dice_weight null in the study resolves to the complement
        assert float(child.data.params["loss.dice_weight"]) == pytest.approx(1 - t.params["loss.ce_weight"])
        for key in ("train/ce_real", "train/ce_synthetic", "train/dice_real", "train/dice_synthetic"):
            assert key in child.data.metrics
        assert child.data.metrics["val/mIoU"] == pytest.approx(t.value)
        assert (tmp_path / "multirun" / f"trial_{t.number}" / "metrics.jsonl").is_file()
    best = max(s.trials, key=lambda t: t.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/trials.csv", "study/optimization_history.png", "study/real_vs_synthetic.png"} <= artifacts
    for child in children:  # each trial's own figures
        assert {a.path for a in client.list_artifacts(child.info.run_id, "plots")} == {
            "plots/training_curves.png", "plots/iou_per_class.png", "plots/confusion.png", "plots/val_panels.png"}


# slow: by default a killed job's path (a stale heartbeat, retried) runs in test_study_async and test_slurm_study,
# and Ctrl-C + resume in test_study_confirm_cli (during the confirmation stage)
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_resume_after_interruption_loses_and_repeats_nothing(tmp_path, cache_dir, sig):
    # short heartbeats: a killed sweep's in-process trial goes stale within seconds of the restart
    extra = ("hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", "trainer.max_iters=40", "trainer.log_every=5",
             "study.heartbeat_interval=1", "study.grace_period=3")
    # SIGINT at its default disposition, as in a terminal: a test runner started in the background (CI) passes it
    # on ignored, and Python then never raises KeyboardInterrupt.
    out = open(tmp_path / "sweep.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(command(tmp_path, *extra), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "SEGSWEEP_CACHE": str(cache_dir)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def second_trial_training():
            if not logged(tmp_path / "sweep.log", STUDY_OPENED):  # the study is not created yet: do not open it
                return False
            trials = study(tmp_path).trials
            return (len(trials) == 2 and trials[0].state == TrialState.COMPLETE
                    and "mlflow_run_id" in trials[1].user_attrs)
        wait_for(second_trial_training, proc, "trial 1 started training", log=tmp_path / "sweep.log")
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    if sig == signal.SIGINT:  # Ctrl-C: one line saying how to go on, no traceback
        log = (tmp_path / "sweep.log").read_text()
        assert proc.returncode == 130
        assert "Traceback" not in log
        assert "study interrupted (Ctrl-C); the same command resumes it" in log
    interrupted = study(tmp_path).trials[1]
    assert interrupted.state == (TrialState.RUNNING if sig == signal.SIGKILL else TrialState.FAIL)
    first_params = study(tmp_path).trials[0].params

    sweep(tmp_path, cache_dir, *extra)  # the same command resumes the study

    trials = study(tmp_path).trials
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    if sig == signal.SIGINT:  # the trial saw Ctrl-C itself
        assert trials[1].user_attrs["interrupted"] is True
    else:  # it died with its sweep: the restarted sweeper found its heartbeat stale
        assert trials[1].user_attrs["fail_reason"].startswith("stale heartbeat")
    # the interrupted point is evaluated again, once (after a kill, the restarted sweeper may ask a new trial
    # before the dead one's heartbeat is stale: the retry is trial 2 or 3)
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    (new,) = [t for t in trials[2:] if t is not retry]
    assert retry.params == trials[1].params
    assert trials[0].params == first_params  # the completed trial was kept, not rerun
    assert new.params not in (trials[0].params, trials[1].params)
    client, parent, children = runs(tmp_path)
    assert parent.info.status == "FINISHED"
    status = {int(r.data.tags["segsweep.trial"]): r.info.status for r in children}
    assert status == {0: "FINISHED", 1: "KILLED" if sig == signal.SIGINT else "FAILED", 2: "FINISHED",
                      3: "FINISHED"}


# the smoke study's tiny trials, for the other named studies: debug=tiny, and again the iterations, which a named
# study fixes itself (its fixed params beat debug=tiny's; the command line beats both)
TINY = ["debug=tiny", "trainer.max_iters=6", "trainer.eval_every=3", "model.base_channels=4", "model.depth=2"]


def test_failed_trial_is_recorded_and_the_study_finishes(tmp_path, cache_dir):
    # a grid over the real fraction with one value out of range: that trial fails with the config error
    sweep(tmp_path, cache_dir, "sweeps=grid", "hydra.sweeper.study_name=smoke", "hydra.sweeper.max_failure_rate=0.5",
          "dataset_mix.real_ratio=0.5,1.7", *TINY)
    trials = sorted(study(tmp_path).trials, key=lambda t: t.params["dataset_mix.real_ratio"])
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "dataset_mix.real_ratio" in trials[1].user_attrs["fail_reason"]
    assert "expected a number in [0, 1], got 1.7" in trials[1].user_attrs["fail_reason"]
    _, parent, children = runs(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 1  # the bad value stopped before any run


def test_pruned_trial_is_recorded_as_pruned(tmp_path, cache_dir):
    # a threshold no tiny trial reaches: pruned at its first evaluation (iteration 3 of 6)
    sweep(tmp_path, cache_dir, "hydra.sweeper.n_trials=1",
          "pruner=threshold", "study.pruner.lower=0.99")
    (trial,) = study(tmp_path).trials
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [3]
    _, parent, (child,) = runs(tmp_path)
    assert child.info.status == "KILLED" and child.data.tags["segsweep.trial_state"] == "PRUNED"
    assert parent.data.tags["n_pruned"] == "1"


@pytest.mark.slow  # the Pareto summary is checked by default in test_sweep_summary (a study built in process)
def test_multi_objective_study_records_the_pareto_front(tmp_path, cache_dir):
    sweep(tmp_path, cache_dir, "sweeps=pareto", "hydra/launcher=basic", "hydra.sweeper.study_name=smoke",
          "hydra.sweeper.n_trials=2", "weighting=none", *TINY)
    s = study(tmp_path)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 2
    assert all(len(t.values) == 2 for t in s.trials) and s.metric_names == ["val/mIoU", "val/mIoU_rare"]
    _, parent, children = runs(tmp_path)
    for t in s.trials:
        child = next(r for r in children if r.info.run_id == t.user_attrs["mlflow_run_id"])
        assert t.values == pytest.approx([child.data.metrics["val/mIoU"], child.data.metrics["val/mIoU_rare"]])
    assert int(parent.data.tags["n_pareto"]) == len(s.best_trials)


@pytest.mark.slow  # pruned trials in local job processes run by default in test_job_exit (with loader workers)
def test_trials_in_local_subprocesses_prune_and_link_to_the_parent(tmp_path, cache_dir):
    done = sweep(tmp_path, cache_dir, "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=2",
                 "pruner=threshold", "study.pruner.lower=0.99")
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2  # told by the jobs, from their own processes
    console = done.stdout + done.stderr  # the same lines as with the basic launcher, from the sweeper
    for t in trials:
        assert f"trial {t.number} launched (search): " in console
        assert re.search(rf"trial {t.number} \(search\) pruned at step 3 \(0\.\d{{4}}\) in \d+:\d\d: "
                         r"synthetic_loss_weight=0\.\d+ ce_weight=",
                         console), console[-2000:]
    assert "study smoke search 2/2 done 0 running 0 queued" in console and "#0 : " not in console
    logs = sorted((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # one submitit job (a separate process) per trial
    _, parent, children = runs(tmp_path)
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    assert {r.info.status for r in children} == {"KILLED"} and parent.data.tags["n_pruned"] == "2"


def test_trial_failing_in_training_marks_its_mlflow_run_failed(tmp_path, cache_dir):
    # a learning rate that makes the loss non-finite within the first logging period
    sweep(tmp_path, cache_dir, "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failure_rate=1.0", "optim.lr=1e30")
    (trial,) = study(tmp_path).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("FloatingPointError: loss is not finite at iteration")
    _, parent, (child,) = runs(tmp_path)
    assert child.info.status == "FAILED" and parent.data.tags["n_fail"] == "1"
