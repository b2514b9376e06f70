"""The study loop behind ``python train.py -m``: Hydra's Optuna sweeper config, a loop of our own.

``conf/config.yaml`` points ``hydra.sweeper._target_`` here, so ``hydra/sweeper=optuna`` keeps its documented
keys (sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, params) while the loop adds
what the stock one lacks:

- resume: the study is persistent and ``n_trials`` is the study's total, so running the same command again
  carries on where it stopped; trials left RUNNING by a killed sweep are failed and their parameters re-queued;
- each job is told its trial (``study.trial_id`` ...), reports intermediate values to the pruner and tells its
  own final state (COMPLETE, PRUNED or FAIL with its reason); the sweeper fails only trials whose job vanished;
- ``max_failure_rate`` is the share of the study's trials allowed to fail before the sweep stops;
- one MLflow parent run per study, every trial's run its child, and a summary (trials table, Optuna's plots,
  real vs synthetic curves, best trial) logged on the parent whenever the sweep ends or resumes.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from segsweep.sweep.parent import StudyParentRun

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _is_interrupted(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and "interrupted" in t.user_attrs


def tell_failed(study: optuna.Study, trial: optuna.Trial) -> None:
    try:
        study.tell(trial, state=TrialState.FAIL)
    except RuntimeError as e:  # GridSampler stops the study once its grid is used up, which only works in optimize()
        if "Study.stop" not in str(e):
            raise


def n_counted(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: finished ones, except those cut short by a stopped sweep."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED) if not _is_interrupted(t))


class StudySweeper(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: str | None, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, custom_search_space: str | None,
                 params: DictConfig | None) -> None:
        self.sampler = instantiate(sampler, _execution_whitelist_=(
            "hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"))
        # The stock implementation's helpers (directions, grid choices, trial configuration) are reused as is.
        self.stock = OptunaSweeperImpl(self.sampler, direction, storage, study_name, n_trials, n_jobs,
                                       max_failure_rate, custom_search_space, params)
        self.storage, self.study_name = storage, study_name or "segsweep"
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, max(1, n_jobs), max_failure_rate
        self.params = params

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.stock.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> None:
        space, fixed, fixed_overrides = create_params_from_overrides(
            [f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments))
        for name in fixed:
            space.pop(name, None)
        sampler = self.sampler
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            grid = {k: OptunaSweeperImpl._to_grid_sampler_choices(d) for k, d in space.items()}
            sampler = sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"sqlite:///{self.sweep_dir.resolve()}/optuna.db"
        directions = self.stock._get_directions()
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler,
                                    directions=directions, load_if_exists=True)
        resumed, stale = self._recover(study)
        metric_names = OmegaConf.select(self.config, "objective")
        if len(directions) > 1 and not isinstance(metric_names, str):
            study.set_metric_names(list(metric_names))
        parent = StudyParentRun.open(self.config, study, storage, space, fixed, " ".join(sys.argv))
        log.info("study %r in %s: %d of %d trials done%s; MLflow parent run %s", study.study_name, storage,
                 n_counted(study), self.n_trials, " (resumed)" if resumed else "", parent.run_id)
        parent.fail_children(stale)
        if resumed:
            parent.summarise(study, self.sweep_dir)

        job_idx, status = 0, "FAILED"
        try:
            while (to_go := self.n_trials - n_counted(study)) > 0:
                trials = [study.ask() for _ in range(min(self.n_jobs, to_go))]
                overrides = self._overrides(trials, space, fixed, fixed_overrides, storage, parent.run_id)
                returns = self._launch(study, trials, overrides, job_idx)
                job_idx += len(trials)
                parent.fail_children(self._settle(study, trials, returns))  # their MLflow runs were left RUNNING
                n_fail = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                             if not _is_interrupted(t))
                if n_fail > self.max_failure_rate * self.n_trials:
                    raise RuntimeError(f"{n_fail} of the study's {self.n_trials} trials failed, more than "
                                       f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows; "
                                       f"see the trials' fail_reason in {storage}")
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            self._fail_running(study, "interrupted: the sweep was stopped")
            raise
        finally:
            parent.summarise(study, self.sweep_dir)
            parent.close(status)
        self._log_best(study)

    def _recover(self, study: optuna.Study) -> tuple[bool, list[optuna.trial.FrozenTrial]]:
        """Fail the trials a killed sweep left RUNNING; queue every interrupted trial's parameters again, once.
        Returns (resuming, the trials found RUNNING)."""
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if stale:
            log.warning("failing %d trial(s) left RUNNING by a stopped sweep", len(stale))
            self._fail_running(study, "interrupted: the sweep stopped while it ran")
        retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if _is_interrupted(t) and t.number not in retried:
                log.info("queueing the parameters of interrupted trial %d again", t.number)
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        if study.trials and hasattr(self.sampler, "reseed_rng"):
            self.sampler.reseed_rng()  # a resumed seeded sampler would otherwise propose its first points again
        return bool(study.trials), stale

    @staticmethod
    def _fail_running(study: optuna.Study, reason: str) -> None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.trial.Trial(study, t._trial_id)
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", reason)
            tell_failed(study, trial)

    def _overrides(self, trials: list[optuna.Trial], space: dict, fixed: dict, fixed_overrides: list[str],
                   storage: str, parent_run_id: str) -> list[Sequence[str]]:
        base = self.stock._configure_trials(trials, space, fixed, fixed_overrides)
        return [(*o, f"study.name={self.study_name}", f"study.storage='{storage}'", f"study.trial_id={t._trial_id}",
                 f"study.trial_number={t.number}", f"study.parent_run_id={parent_run_id}")
                for o, t in zip(base, trials)]

    def _launch(self, study: optuna.Study, trials: list[optuna.Trial], overrides: list, job_idx: int) -> list:
        """The batch's jobs; a job that ended without a result (killed, node failure) comes back as its error.

        The submitit launchers wait for a batch's jobs in turn and raise at the first one that died, which would
        leave the others unwatched while they still run. On SLURM each trial is therefore launched on its own,
        side by side. (Not for submitit's local executor: its job folder is created after the job's process
        starts, a race that concurrent submissions lose.)"""
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

        def launch(i: int, n: int) -> list:
            try:
                return list(self.launcher.launch(overrides[i: i + n], initial_job_idx=job_idx + i))
            except Exception as e:
                log.error("trials %s: a job ended without a result: %s", [t.number for t in trials[i: i + n]], e)
                return [e] * n

        if len(trials) == 1 or not isinstance(self.launcher, SlurmLauncher):
            return launch(0, len(trials))
        with ThreadPoolExecutor(len(trials)) as pool:
            return [r for rs in pool.map(lambda i: launch(i, 1), range(len(trials))) for r in rs]

    @staticmethod
    def _settle(study: optuna.Study, trials: list[optuna.Trial], returns: list) -> list[optuna.trial.FrozenTrial]:
        """Fail the trials whose job ended without telling the study (a crash, a killed job); returns them."""
        failed = []
        for trial, ret in zip(trials, returns):
            state = study.get_trials(deepcopy=False)[trial.number].state  # numbers index a study's trials
            error = ret if isinstance(ret, Exception) else getattr(ret, "_return_value", None)
            if state == TrialState.RUNNING:
                reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else "no result"
                trial.set_user_attr("fail_reason", reason[:2000])
                tell_failed(study, trial)
                state = TrialState.FAIL
                failed.append(study.get_trials(deepcopy=False)[trial.number])
            if state == TrialState.FAIL:
                reason = study.get_trials(deepcopy=False)[trial.number].user_attrs.get("fail_reason")
                log.warning("trial %d failed: %s", trial.number, reason)
            else:
                log.info("trial %d: %s", trial.number, state.name)
        return failed

    @staticmethod
    def _log_best(study: optuna.Study) -> None:
        if len(study.directions) == 1:
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if done:
                log.info("best trial %d: value %.4f, params %s", study.best_trial.number, study.best_value,
                         study.best_params)
        else:
            log.info("%d Pareto-optimal trial(s)", len(study.best_trials))
