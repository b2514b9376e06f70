"""A trial's job and its Optuna trial: intermediate values, pruning, and the final state, told by the job itself.

The job writes its own result to the study's storage, so a trial's outcome is recorded wherever the job runs
(the sweeper's process, a local subprocess, a SLURM node) and survives the sweeper dying; the sweeper only
fails the trials whose job never reported back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import optuna
from hydra.utils import instantiate

from segsweep.config import StudyConfig

log = logging.getLogger("segsweep")


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
        # Optuna has no intermediate values for multi-objective studies, so those are never pruned.
        self.prunable = len(self.study.directions) == 1

    @classmethod
    def from_config(cls, cfg: StudyConfig) -> TrialLink | None:
        return cls(cfg) if cfg.trial_id is not None else None

    def set_attrs(self, **attrs: str) -> None:
        for k, v in attrs.items():
            self.trial.set_user_attr(k, v)

    def report(self, step: int, value: float) -> None:
        """Report an intermediate objective value; raises ``optuna.TrialPruned`` when the pruner says stop."""
        if not self.prunable:
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.number} pruned at iteration {step} (objective {value:.4f})")

    def complete(self, values: Sequence[float]) -> None:
        self.study.tell(self.trial, list(values))

    def pruned(self) -> None:
        self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)

    def failed(self, error: BaseException) -> None:
        """FAIL with the error; a stopped sweep (Ctrl-C) marks the trial interrupted: re-queued on resume."""
        if isinstance(error, KeyboardInterrupt):
            self.trial.set_user_attr("interrupted", True)
            reason = "interrupted: the sweep was stopped"
        else:
            reason = f"{type(error).__name__}: {error}"
        self.trial.set_user_attr("fail_reason", reason[:2000])
        self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
