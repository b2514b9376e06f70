"""The SLURM mechanics the sweeps rely on, on a real single-node cluster (fixture `slurm_cluster` in conftest.py).

Each test uses its own submitit folder: job ids restart at 1 on every new cluster, and a folder that
already holds a result for that id would hand back the stale result.
"""

import os
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

pytestmark = pytest.mark.slurm

# Jobs unpickle the functions below; this module isn't importable on the job's side (tests/ is not on
# its sys.path), so ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _sh(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def _sacct_states(job_id, *extra):
    """Allocation-level states of job_id; with -D every run of a requeued job, oldest first."""
    return _sh("sacct", "-j", job_id, "-n", "-X", "-P", "-o", "State", *extra).split()


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _executor(folder, **params):
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")  # "slurm": never fall back to local
    # No GPU request (a node without GPUs rejects any gres at sbatch), memory below the node's.
    executor.update_parameters(timeout_min=5, slurm_mem_gb=1, **params)
    return executor


def test_sbatch_job_completes_and_is_accounted(slurm_cluster, tmp_path):
    t0 = time.monotonic()
    job_id = _sh("sbatch", "--parsable", f"--chdir={tmp_path}", "--output=%j.out",
                 "--wrap", "echo ran as job $SLURM_JOB_ID")
    states = _wait_for(lambda: [s for s in _sacct_states(job_id) if s not in ("PENDING", "RUNNING")],
                       30, f"job {job_id} to finish in sacct")
    print(f"\ntrivial sbatch job accounted as finished after {time.monotonic() - t0:.1f} s")
    assert states == ["COMPLETED"]
    assert (tmp_path / f"{job_id}.out").read_text().strip() == f"ran as job {job_id}"


def _square_with_job_id(x):
    return x * x, os.environ["SLURM_JOB_ID"]


def test_submitit_runs_function(slurm_cluster, tmp_path):
    t0 = time.monotonic()
    job = _executor(tmp_path / "submitit").submit(_square_with_job_id, 7)
    assert job.result() == (49, job.job_id)
    print(f"\nsubmitit job result after {time.monotonic() - t0:.1f} s")


def _die_hard():
    os.kill(os.getpid(), signal.SIGKILL)  # no result pickle, no exception handler: like an OOM kill


def test_hard_death_raises_instead_of_hanging(slurm_cluster, tmp_path):
    # submitit only learns the job is gone from sacct (slurmdbd); then it waits 15 s for a result file.
    t0 = time.monotonic()
    job = _executor(tmp_path / "submitit").submit(_die_hard)
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        job.result()
    elapsed = time.monotonic() - t0
    print(f"\nhard-killed job: UncompletedJobError {elapsed:.1f} s after submission")
    assert elapsed < 60
    assert _sacct_states(job.job_id) == ["FAILED"]


class _WaitForSignalThenReturn(submitit.helpers.Checkpointable):
    """First run: records itself and waits to be signalled. Requeued run: returns. Runs are lines in a file."""

    def __init__(self, runs_file):
        self.runs_file = runs_file

    def __call__(self):
        with open(self.runs_file, "a") as f:
            f.write(f"{time.time()}\n")
        runs = len(open(self.runs_file).read().split())
        if runs == 1:
            time.sleep(120)  # submitit's USR2 handler checkpoints, requeues and exits during this sleep
            return "never signalled"
        return f"finished in run {runs}"


def test_signal_checkpoints_and_requeues(slurm_cluster, tmp_path):
    runs_file = tmp_path / "runs"
    job = _executor(tmp_path / "submitit").submit(_WaitForSignalThenReturn(str(runs_file)))
    _wait_for(runs_file.exists, 30, "the first run to start")
    # What SLURM sends at the time limit: submitit's sbatch script asks for --signal=USR2@<signal_delay_s>,
    # and job.paths.submission_file shows it. Sent here by hand, as submitit's own job._interrupt(timeout=True).
    assert "#SBATCH --signal=USR2@" in job.paths.submission_file.read_text()
    signalled = time.time()
    _sh("scancel", "--signal=USR2", job.job_id)
    assert job.result() == "finished in run 2"
    restart = float(runs_file.read_text().split()[1]) - signalled
    print(f"\nrequeued job restarted {restart:.1f} s after the signal")
    assert restart < 30  # 2-3 min with Slurm's defaults (see CRED_EXPIRE_S, SchedulerParameters in slurm_cluster.py)
    # sacct -D lists every run of the job: the first one ended as REQUEUED (scontrol requeue), same job id.
    _wait_for(lambda: _sacct_states(job.job_id, "-D") == ["REQUEUED", "COMPLETED"], 30,
              f"sacct -D to show job {job.job_id} requeued then completed")
