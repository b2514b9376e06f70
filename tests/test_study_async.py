"""Always-full, self-healing studies with local processes (`hydra/launcher=submitit_local`, tiny trials):
a freed slot starts the next trial while another still runs; a SIGKILLed job is found by its stale heartbeat and
its trial retried from its checkpoint in a new MLflow run; enqueued points run first; two sweepers share one
study; a budget stops the study cleanly."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState
from polling import STUDY_OPENED, logged, wait_for

from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT = ["study.heartbeat_interval=1", "study.grace_period=4"]


def command(tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", "trainer.num_threads=1",
            f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun", *extra]


def start(tmp: Path, *extra: str, log: str = "sweep.log") -> subprocess.Popen:
    return subprocess.Popen(command(tmp, *extra), cwd=tmp, stdout=open(tmp / log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "SEGSWEEP_CACHE": str(tmp.parent / "cache")})


def finish(proc: subprocess.Popen, tmp: Path, log: str = "sweep.log", timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp / log).read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


def study(tmp: Path) -> optuna.Study:
    """The study, read from its SQLite storage: only once the sweep has created it (see tests/polling.py)."""
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp}/multirun/optuna.db")


def parent_and_children(tmp: Path):
    client = open_client(f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("segsweep.role") == "study"]
    return client, parent, {r.info.run_id: r for r in runs if r is not parent}


def test_slots_stay_full_and_a_killed_job_is_retried_from_its_checkpoint(tmp_path):
    # Trial 0 (enqueued) is long, trial 1 (enqueued) short: trial 2 must start when trial 1 ends, while 0 runs.
    # Trial 0's process is then SIGKILLed after its first checkpoint: only its heartbeat can tell.
    proc = start(tmp_path, "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                 "trainer.max_iters=choice(6,150)", "study.enqueue=[{trainer.max_iters:150},{trainer.max_iters:6}]",
                 "trainer.eval_every=50", "trainer.log_every=5", "trainer.checkpoint_every=10",
                 "data.num_workers=1", *HEARTBEAT)
    ckpt = tmp_path / "multirun" / "trial_0" / "checkpoint.pt"

    def trial0_checkpointed():
        if not ckpt.exists():  # the file first: trial 0 training means the study's storage exists
            return None
        t = study(tmp_path).trials[0]
        return t.state == TrialState.RUNNING and t.user_attrs.get("job_pid")
    try:
        pid = wait_for(trial0_checkpointed, proc, "trial 0's first checkpoint", timeout=180,
                       log=tmp_path / "sweep.log")
        os.kill(pid, signal.SIGKILL)  # the job's training process (a grandchild of this test's sweeper)
    finally:
        finish(proc, tmp_path)

    trials = study(tmp_path).trials
    t0, t1 = trials[0], trials[1]
    # enqueued points ran first, and are marked
    assert t0.user_attrs["enqueued"] and t1.user_attrs["enqueued"]
    assert t0.params["trainer.max_iters"] == 150 and t1.params["trainer.max_iters"] == 6
    assert all(not t.user_attrs.get("enqueued") for t in trials[2:])
    # asynchrony: trial 2 started after trial 1 ended and before trial 0 ended (lock-step would wait for 0)
    t2 = trials[2]
    assert t1.datetime_complete < t2.datetime_start < t0.datetime_complete, (t1, t2, t0)
    # trial 0's job died without a word: failed by its stale heartbeat, not by the launcher (15 s later)
    assert t0.state == TrialState.FAIL and t0.user_attrs["fail_reason"].startswith("stale heartbeat"), t0.user_attrs
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == t0.params
    assert retry.user_attrs["resume_from"] == str(ckpt)
    retry_dir = tmp_path / "multirun" / f"trial_{retry.number}"
    logs = "".join(p.read_text() for p in (tmp_path / "multirun" / ".submitit" / f"trial_{retry.number}").glob("*.out"))
    assert f"resumed from {ckpt} at iteration" in logs, logs[-3000:]
    resumed_at = int(logs.split(f"resumed from {ckpt} at iteration ")[1].split()[0])
    assert resumed_at >= 10 and resumed_at % 10 == 0
    records = [json.loads(x) for x in (retry_dir / "metrics.jsonl").open()]
    # the dead run's lines up to its checkpoint, then the retry's: every logging step once
    assert [r["iteration"] for r in records if "train/loss" in r] == list(range(5, 151, 5))
    # the study has its 3 trials: 1, 2 and the retry, each once; the dead trial does not count
    assert sorted(t.number for t in trials if t.state == TrialState.COMPLETE) == sorted({1, 2, retry.number})
    assert len(trials) == 4
    # MLflow: the dead run closed FAILED pointing to the retry's new run, which resumed after the checkpoint
    client, parent, runs = parent_and_children(tmp_path)
    dead, new = runs[t0.user_attrs["mlflow_run_id"]], runs[retry.user_attrs["mlflow_run_id"]]
    assert dead.info.run_id != new.info.run_id
    assert dead.info.status == "FAILED" and dead.data.tags["segsweep.retried_by"] == new.info.run_id
    assert dead.data.tags["segsweep.fail_reason"].startswith("stale heartbeat")
    assert new.info.status == "FINISHED" and new.data.tags["segsweep.retry_of"] == dead.info.run_id
    steps = [m.step for m in client.get_metric_history(new.info.run_id, "train/loss")]
    assert steps and min(steps) > resumed_at  # trained on from the checkpoint, not from scratch
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["stop_reason"].startswith("n_trials reached") and parent.data.tags["n_retried"] == "1"


def test_two_sweepers_share_one_study(tmp_path):
    extra = ["hydra/launcher=submitit_local", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", *HEARTBEAT]
    first = start(tmp_path, *extra, log="first.log")
    try:
        # the log line first: the first sweeper has created the study (loading it sooner would race that)
        wait_for(lambda: logged(tmp_path / "first.log", STUDY_OPENED) and len(study(tmp_path).trials) >= 1, first,
                 "the first sweeper's first trial", timeout=180, log=tmp_path / "first.log")
        second = start(tmp_path, *extra, log="second.log")
        logs = [finish(second, tmp_path, "second.log")]
    finally:
        logs.insert(0, finish(first, tmp_path, "first.log"))
    trials = study(tmp_path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.user_attrs.get("surplus") for t in others), others  # only surplus asks, never launched
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4  # no point evaluated twice
    launched = [{int(line.split("trial ")[1].split()[0]) for line in log.splitlines() if " launched" in line}
                for log in logs]
    assert launched[0] and launched[1], "both sweepers launched trials"
    assert not launched[0] & launched[1] and launched[0] | launched[1] == {t.number for t in complete}
    for t in complete:  # one job per trial
        assert len(list((tmp_path / "multirun" / ".submitit" / f"trial_{t.number}").glob("*_log.out"))) == 1
    assert not any((tmp_path / "multirun" / f"trial_{t.number}").exists() for t in others)


def test_a_budget_stops_the_study_cleanly(tmp_path):
    # in-process trials; the wall-clock budget (0.6 s) is used up by the first trial: no second one is asked
    proc = start(tmp_path, "hydra.sweeper.n_trials=5", "study.budget_wall_min=0.01", *HEARTBEAT)
    finish(proc, tmp_path)
    (trial,) = study(tmp_path).trials
    assert trial.state == TrialState.COMPLETE
    _, parent, _ = parent_and_children(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["stop_reason"] == "budget: wall clock of 0.01 min reached (study.budget_wall_min)"
    summary = tmp_path / "multirun" / "study_summary" / "stop_reason.txt"
    assert summary.read_text().startswith("budget: wall clock")
