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

import optuna
from hydra.utils import instantiate

from segsweep import compat
from segsweep.sweep.heartbeat import JobHeartbeat
from segsweep.sweep.options import StudyConfig

log = logging.getLogger("segsweep")


class TrialGone(RuntimeError):
    """The job's trial is no longer RUNNING (failed as stale while the job waited in a queue, or cut by a
    sweeper): the job stops at once rather than evaluating a point that has been retried elsewhere."""


def build_pruner(cfg) -> optuna.pruners.BasePruner:
    """``study.pruner`` ({_target_: optuna.pruners.MedianPruner, ...}) or no pruning."""
    if not cfg:
        return optuna.pruners.NopPruner()
    return instantiate(cfg, _execution_whitelist_="optuna.pruners.*")


class TrialLink:
    def __init__(self, cfg: StudyConfig) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.load_study(study_name=cfg.name, storage=cfg.storage, pruner=build_pruner(cfg.pruner))
        self.trial = optuna.trial.Trial(self.study, cfg.trial_id)
        self.number = cfg.trial_number
        state = compat.stored_trial(self.study, cfg.trial_id).state
        if state != optuna.trial.TrialState.RUNNING:
            raise TrialGone(f"trial {self.number} is {state.name}, not RUNNING: it was failed or retried elsewhere "
                            "(e.g. its heartbeat went stale while this job waited); nothing to do")
        # From here on the job beats its own trial: the sweeper stops beating it once job_state is set.
        self.heartbeat = JobHeartbeat(cfg.storage, cfg.trial_id, cfg.heartbeat_interval) \
            if cfg.heartbeat_interval else None
        if self.heartbeat is not None:
            self.heartbeat.start()
        self.trial.set_user_attr("job_state", "running")
        self.trial.set_user_attr("job_host", socket.gethostname())
        self.trial.set_user_attr("job_pid", os.getpid())  # to find (or kill) the job's process
        # Optuna has no intermediate values for multi-objective studies, so those are never pruned.
        self.prunable = len(self.study.directions) == 1

    @classmethod
    def from_config(cls, cfg: StudyConfig) -> TrialLink | None:
        return cls(cfg) if cfg.trial_id is not None else None

    def set_attrs(self, **attrs: str) -> None:
        for k, v in attrs.items():
            self.trial.set_user_attr(k, v)
        if "preempted_at" in attrs:  # checkpointed for a requeue: silent until the requeued job starts
            self.trial.set_user_attr("job_state", "requeued")
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
        self.study.tell(self.trial, list(values))

    def pruned(self) -> None:
        self._stop_beating()
        self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)

    def failed(self, error: BaseException) -> None:
        """FAIL with the error; a stopped sweep (Ctrl-C) marks the trial interrupted: re-queued on resume."""
        if isinstance(error, KeyboardInterrupt):
            self.trial.set_user_attr("interrupted", True)
            reason = "interrupted: the sweep was stopped"
        else:
            reason = f"{type(error).__name__}: {error}"
        self._stop_beating()
        self.trial.set_user_attr("fail_reason", reason[:2000])
        self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
