"""Optuna RDB heartbeats for trials run by our own ask/tell loop (Optuna records them only inside
``Study.optimize``): the job beats its own trial from a thread, the sweeper beats the trials it has asked but
whose job has not started yet, and any sweeper fails a RUNNING trial whose last beat is older than the grace
period ("stale heartbeat": its job died without a word, or the sweeper died before the job started).

A trial's ``job_state`` (its record, ``segsweep.sweep.record``) says who beats it: absent (the sweeper that asked
it), ``running`` (its job), ``requeued`` (a preempted SLURM job waiting in the queue: nobody beats it and it is
never called stale; the sweeper that launched it sees the job's end through submitit), ``ended`` (nobody).
"""

from __future__ import annotations

import logging
import threading
import warnings

import optuna
from optuna.trial import TrialState

from segsweep import compat
from segsweep.sweep.record import attrs, record
from segsweep.sweep.storage import PatientStorage, rdb_storage

log = logging.getLogger(__name__)


def rdb(url: str, patience_s: float, interval: int | None = None, grace: int | None = None) -> PatientStorage | None:
    """A storage of our own for heartbeats (the study's storage keeps heartbeats off, so Optuna's ask() does not
    warn about them), patient while the database blinks; None when the URL is not a SQLAlchemy database (no
    heartbeats then)."""
    try:
        with warnings.catch_warnings():  # Optuna marks heartbeats experimental; they are what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return PatientStorage(rdb_storage(url, patience_s, heartbeat_interval=interval, grace_period=grace),
                                  patience_s)
    except Exception as e:  # e.g. a journal file storage
        log.warning("no heartbeats for storage %s: %s", url, e)
        return None


class JobHeartbeat:
    """The job side: beats trial ``trial_id`` every ``interval`` seconds until ``stop()``."""

    def __init__(self, url: str, trial_id: int, interval: int, patience_s: float) -> None:
        self.storage = rdb(url, patience_s)
        self.trial_id, self.interval = trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.storage is None:
            return
        self.storage.record_heartbeat(self.trial_id)  # the first beat before anything else can fail
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a locked or unreachable database: try again at the next beat
                log.warning("heartbeat of trial id %d not recorded: %s", self.trial_id, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


class StaleWatch:
    """The sweeper side: beat pending trials, and fail the stale ones (the caller retries them)."""

    def __init__(self, url: str, interval: int, grace: int, patience_s: float) -> None:
        self.storage = rdb(url, patience_s, interval, grace)
        self.interval, self.grace = interval, grace

    def beat(self, trial_ids) -> None:
        if self.storage is None:
            return
        for tid in trial_ids:
            try:
                self.storage.record_heartbeat(tid)
            except Exception as e:
                log.warning("heartbeat of trial id %d not recorded: %s", tid, e)

    def fail_stale(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        """Fail every RUNNING trial of ``study`` whose heartbeat is stale; returns those this process failed
        (another sweeper failing the same trial first wins, so exactly one of them retries it)."""
        if self.storage is None:
            return []
        failed = []
        for tid in compat.stale_trial_ids(self.storage, study):
            t = self.storage.get_trial(tid)
            if t.state != TrialState.RUNNING or record(t).job_state == "requeued":
                continue
            try:
                reason = (f"stale heartbeat: none for over {self.grace} s (the job died without a word, or its "
                          "sweeper before it started)")
                for k, v in attrs(fail_reason=reason).items():  # the trial's record, by trial id
                    self.storage.set_trial_user_attr(tid, k, v)
                if self.storage.set_trial_state_values(tid, state=TrialState.FAIL):
                    failed.append(self.storage.get_trial(tid))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it ended meanwhile, or another sweeper failed it first
        return failed
