"""A trial's job and its Optuna trial: intermediate values, pruning, and the final state, told by the job itself.

The job writes its own result to the study's storage, so a trial's outcome is recorded wherever the job runs
(the sweeper's process, a local subprocess, a SLURM node) and survives the sweeper dying; the sweeper only
fails the trials whose job never reported back.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any, Protocol

import optuna
from hydra.utils import instantiate

from segsweep import compat
from segsweep.sweep.heartbeat import JobHeartbeat
from segsweep.sweep.options import StudyConfig
from segsweep.sweep.record import TrialRecord, attrs, ending, record, write
from segsweep.sweep.storage import open_storage

log = logging.getLogger("segsweep")


class TrialGone(RuntimeError):
    """The job's trial is no longer RUNNING (failed as stale while the job waited in a queue, or cut by a
    sweeper): the job stops at once rather than evaluating a point that has been retried elsewhere."""


def build_pruner(cfg) -> optuna.pruners.BasePruner:
    """``study.pruner`` ({_target_: optuna.pruners.MedianPruner, ...}) or no pruning."""
    if not cfg:
        return optuna.pruners.NopPruner()
    return instantiate(cfg, _execution_whitelist_="optuna.pruners.*")


class Trial(Protocol):
    """The trial as a training run sees it: a study's (``TrialLink``), a seed's share of it (segsweep.seeds.SeedLink),
    or a plain run's (``NO_TRIAL``)."""

    def set_attrs(self, **values: Any) -> None: ...

    def report(self, step: int, value: float) -> None: ...  # raises optuna.TrialPruned when the pruner says stop

    def complete(self, values: Sequence[float]) -> None: ...

    def end(self, error: BaseException) -> None: ...


class TrialLink:
    """The job's side of its trial: it beats it, records what it trains and finds, reports intermediate values
    (the pruner answers), and tells how it ended."""

    def __init__(self, cfg: StudyConfig) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.load_study(study_name=cfg.name, storage=open_storage(cfg.storage, cfg.storage_patience_s),
                                       pruner=build_pruner(cfg.pruner))
        self.trial = optuna.trial.Trial(self.study, cfg.trial_id)
        self.number = cfg.trial_number
        state = compat.stored_trial(self.study, cfg.trial_id).state
        if state != optuna.trial.TrialState.RUNNING:
            raise TrialGone(f"trial {self.number} is {state.name}, not RUNNING: it was failed or retried elsewhere "
                            "(e.g. its heartbeat went stale while this job waited); nothing to do")
        # From here on the job beats its own trial: the sweeper stops beating it once job_state is set.
        self.heartbeat = JobHeartbeat(cfg.storage, cfg.trial_id, cfg.heartbeat_interval, cfg.storage_patience_s) \
            if cfg.heartbeat_interval else None
        if self.heartbeat is not None:
            self.heartbeat.start()
        write(self.trial, job_state="running", job_host=socket.gethostname(), job_pid=os.getpid())
        # Optuna has no intermediate values for multi-objective studies, so those are never pruned.
        self.prunable = len(self.study.directions) == 1

    @staticmethod
    def from_config(cfg: StudyConfig) -> TrialLink | NoTrial:
        """The job's trial; a plain run (no ``study.trial_id``) gets one that records nothing and never prunes."""
        return TrialLink(cfg) if cfg.trial_id is not None else NO_TRIAL

    @property
    def record(self) -> TrialRecord:
        return record(self.trial)

    def set_attrs(self, **values) -> None:
        write(self.trial, **values)
        if "preempted_at" in values:  # checkpointed for a requeue: silent until the requeued job starts
            write(self.trial, job_state="requeued")
            self._stop_beating()

    def _stop_beating(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def report(self, step: int, value: float) -> None:
        """Report an intermediate objective value; raises ``optuna.TrialPruned`` when the pruner says stop."""
        if not self.prunable:
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.number} pruned at iteration {step} (objective {value:.4f})")

    def complete(self, values: Sequence[float]) -> None:
        self._stop_beating()
        write(self.trial, job_state="ended")
        self.study.tell(self.trial, list(values))

    def end(self, error: BaseException) -> None:
        """Tell the trial how the job ended by ``error`` (``segsweep.sweep.record.ending``): PRUNED; left RUNNING
        for a requeued job; FAIL with the reason, marked interrupted for a stopped sweep (re-run on resume)."""
        state = ending(error).trial_state
        if state == "REQUEUED":
            return  # set_attrs(preempted_at=...) handed the trial to the requeued job
        self._stop_beating()
        write(self.trial, job_state="ended")
        if state == "PRUNED":
            self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
            return
        if isinstance(error, KeyboardInterrupt):
            write(self.trial, interrupted=True, fail_reason="interrupted: the sweep was stopped")
        else:
            write(self.trial, fail_reason=f"{type(error).__name__}: {error}"[:2000])
        self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)


class NoTrial:
    """The trial of a plain run: nothing is recorded, nothing pruned (no ``None`` checks on the way)."""

    record = TrialRecord()
    number = None

    def set_attrs(self, **values) -> None:
        attrs(**values)  # the same names as a real trial's, checked

    def report(self, step: int, value: float) -> None:
        pass

    def complete(self, values: Sequence[float]) -> None:
        pass

    def end(self, error: BaseException) -> None:
        pass


NO_TRIAL = NoTrial()
