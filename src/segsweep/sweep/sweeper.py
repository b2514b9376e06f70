"""The study loop behind ``python train.py -m``: Hydra's Optuna sweeper config, a loop of our own.

``conf/config.yaml`` points ``hydra.sweeper._target_`` here, so ``hydra/sweeper=optuna`` keeps its documented
keys (sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, params) while the loop adds
what the stock one lacks:

- always full: ``n_jobs`` trials in flight while the study has trials to go; a trial that ends (complete,
  pruned, failed) frees its slot for the next ask at once (``runner.Slots``); ``n_trials`` is the study's total
  and trials in flight count, so the same command resumes and never over-asks;
- self-healing: jobs beat their trial in the storage (``heartbeat``); a trial whose job died without a word is
  failed ("stale heartbeat") and retried up to ``study.max_retries`` times from its last checkpoint; a restarted
  sweeper re-attaches (live trials are waited for) and several sweepers can share one study;
- each job is told its trial (``study.trial_id`` ...), reports intermediate values to the pruner and tells its
  own final state; ``study.enqueue`` points run first; a wall-clock or slot-hours budget stops asking;
- checked once before the first launch (``preflight``): its stores answer, its trials' common config is valid;
  ``max_failure_rate`` is the share of trials allowed to fail before the sweep stops (one line says why);
- one MLflow parent run per study, every trial's run its child, and a summary (trials table, Optuna's plots,
  real vs synthetic curves, best trial, why the study stopped) logged on the parent whenever the sweep ends.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from segsweep import compat
from segsweep.checks import ConfigError
from segsweep.io import file_lock
from segsweep.sweep.confirm import (
    best_search_trial,
    confirm_trials,
    enqueue_confirmation,
    is_confirm,
    merge_overrides,
    pending,
)
from segsweep.sweep.heartbeat import StaleWatch
from segsweep.sweep.options import study_options
from segsweep.sweep.parent import StudyParentRun
from segsweep.sweep.preflight import check_study, commonest_failure
from segsweep.sweep.progress import StudyLine, finished_line, launched_line, quiet_launchers, short_config
from segsweep.sweep.record import MIN_EFFECT, attrs, carried, record, write
from segsweep.sweep.runner import Slots, died_without_a_word
from segsweep.sweep.storage import open_storage
from segsweep.sync import hint as sync_hint

# Baselines are enqueued with their own values (loss.ce_weight=1.0 for plain CE), often outside the search range
# on purpose: Optuna's warning about it is no news.
warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range", category=UserWarning)
log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def tell_failed(study: optuna.Study, trial: optuna.Trial) -> None:
    try:
        study.tell(trial, state=TrialState.FAIL)
    except RuntimeError as e:  # GridSampler stops the study once its grid is used up, which only works in optimize()
        if "Study.stop" not in str(e):
            raise
    except KeyError:  # GridSampler.after_trial on a trial it did not sample (enqueued); the FAIL is stored anyway
        pass


def superseded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of trials that do not count towards ``n_trials``: failed ones evaluated again by a retry (or
    waiting for one: cut short by a stopped sweep), and surplus asks of concurrent sweepers."""
    records = {t.number: record(t) for t in trials}
    retried = {r.retry_of for r in records.values()}
    return {t.number for t in trials if t.state == TrialState.FAIL and (
        t.number in retried or records[t.number].interrupted or records[t.number].surplus)}


def n_counted(study: optuna.Study) -> int:
    trials = [t for t in study.get_trials(deepcopy=False) if not is_confirm(t)]
    gone = superseded(trials)
    return sum(1 for t in trials if t.state in FINISHED and t.number not in gone)


def slot_hours(trials: Sequence[FrozenTrial], now: dt.datetime) -> float:
    return sum(((t.datetime_complete or now) - t.datetime_start).total_seconds()
               for t in trials if t.datetime_start is not None) / 3600


class StudySweeper(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: str | None, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, custom_search_space: str | None,
                 params: DictConfig | None) -> None:
        self.sampler = instantiate(sampler, _execution_whitelist_=(
            "hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"))
        # The stock implementation's helpers (directions, grid choices, trial configuration) are reused as is.
        self.stock = compat.PluginSweeper(self.sampler, direction, storage, study_name, n_trials, n_jobs,
                                          max_failure_rate, custom_search_space, params)
        self.storage, self.study_name = storage, study_name or "segsweep"
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, max(1, n_jobs), max_failure_rate
        self.params = params

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.config_loader = config, hydra_context.config_loader
        self.stock.setup(config)
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.opts = study_options(config)  # study.*, typed once (defaults and checks of the schema)
        objective = OmegaConf.to_container(config.objective) if OmegaConf.is_config(config.objective) \
            else config.objective
        self.objective: str | list[str] = objective

    def sweep(self, arguments: list[str]) -> None:
        slots = Slots(self.launcher, self.n_jobs)  # first: a launcher that cannot run n_jobs trials stops here
        # the study's params, then the command line's: a key given in both is searched or fixed as the latter says
        space, fixed, fixed_overrides = compat.search_space([f"{k}={v}" for k, v in (self.params or {}).items()])
        cli_space, cli_fixed, cli_overrides = compat.search_space(arguments)
        space = {**{k: v for k, v in space.items() if k not in cli_fixed}, **cli_space}
        fixed = {**{k: v for k, v in fixed.items() if k not in cli_space}, **cli_fixed}
        fixed_overrides = [*fixed_overrides, *cli_overrides]
        for name in fixed:
            space.pop(name, None)
        sampler = self.sampler
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            grid = {k: compat.grid_choices(d) for k, d in space.items()}
            sampler = sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        storage = self.storage or f"sqlite:///{self.sweep_dir.resolve()}/optuna.db"
        try:  # once, before any store is written or any job launched: the stores, the trials' common config
            check_study(self.config, self.config_loader, storage,
                        [*fixed_overrides, *(f"{k}={v}" for k, v in fixed.items())], space, self.sweep_dir)
        except ConfigError as e:
            log.error("study not started: %s", e)
            raise SystemExit(1) from None
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        directions = self.stock.directions()
        with self._lock():  # a second sweeper started at the same moment finds the study and the parent run
            study = optuna.create_study(study_name=self.study_name, sampler=sampler,
                                        storage=open_storage(storage, self.opts.storage_patience_s),
                                        directions=directions, load_if_exists=True)
            interval = self.opts.heartbeat_interval
            self.watch = StaleWatch(storage, interval, self.opts.grace_period, self.opts.storage_patience_s) \
                if interval else None
            resumed, stale = self._recover(study)
            self._enqueue(study)
            if study.user_attrs.get(MIN_EFFECT) != self.opts.min_effect:
                study.set_user_attr(MIN_EFFECT, float(self.opts.min_effect))  # the report's margin
            if len(directions) > 1 and not isinstance(self.objective, str):
                study.set_metric_names(list(self.objective))
            parent = StudyParentRun.open(self.config, study, storage, space, fixed, " ".join(sys.argv))
        search = f"search {n_counted(study)} of {self.n_trials} trials done" if self.n_trials else \
            "no search (n_trials=0): the confirmation stage only"
        log.info("study %s%s: %s; MLflow parent run %s", study.study_name, " (resumed)" if resumed else "",
                 search, parent.run_id)
        log.info("study storage: %s", storage)
        quiet_launchers()
        self.progress = StudyLine(study.study_name, self.objective if isinstance(self.objective, str) else "values",
                                  self.n_jobs)
        parent.fail_children(stale, "interrupted: the sweep stopped while it ran")
        # a resumed study's summary and report are rewritten when this sweep ends (below), not first: a
        # re-attaching sweeper must watch its live trials' heartbeats at once, not draw plots for ~10 s

        def overrides(trial: optuna.Trial) -> Sequence[str]:
            base = self.stock.trial_overrides(trial, space, fixed, fixed_overrides)
            extra = [f"study.name={self.study_name}", f"study.storage='{storage}'",
                     f"study.trial_id={compat.trial_id(trial)}", f"study.trial_number={trial.number}",
                     f"study.parent_run_id={parent.run_id}"]
            r = record(trial)
            if resume := r.resume_from:
                extra.append(f"study.resume_from='{resume}'")
            return merge_overrides([*base, *extra], r.overrides)  # a baseline's loss=ce ...

        status, reason, interrupted, failing = "FAILED", None, False, False
        try:
            reason = self._run(study, slots, parent, overrides, confirm=False)
            if reason.startswith("n_trials reached") and self._confirmation(study, space):
                reason = f"{reason}; confirmation stage: {self._run(study, slots, parent, overrides, confirm=True)}"
            failing = "max_failure_rate" in reason
            status = "FAILED" if failing else "FINISHED"
        except KeyboardInterrupt:
            status, reason, interrupted = "KILLED", "interrupted (Ctrl-C); the same command resumes the study", True
        finally:
            parent.summarise(study, self.sweep_dir, reason or "the sweeper failed")
            parent.close(status, self.sweep_dir)
        if line := sync_hint(self.sweep_dir):
            log.warning("%s", line)
        if interrupted:  # one line, not a traceback: Ctrl-C is how a user stops a study
            running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
            log.warning("study interrupted (Ctrl-C); the same command resumes it%s",
                        f" (and re-attaches to trials {running} if their jobs live on)" if running else "")
            raise SystemExit(130)
        if failing:  # one line: the rate, and what most failed trials had in common
            trials = study.get_trials(deepcopy=False)
            log.error("study stopped: %s; commonest fail reason: %s", reason,
                      commonest_failure(trials, superseded(trials)))
            raise SystemExit(1)
        for k, part in enumerate((reason or "").split("; ")):  # one line each: the search, the confirmation
            log.info("%s%s", "study stopped: " if k == 0 else "  ", part)
        self._log_best(study)

    def _lock(self):
        return file_lock(self.sweep_dir / ".sweeper.lock")

    # ---- the loop -------------------------------------------------------------------------------------------

    def _confirmation(self, study: optuna.Study, space) -> bool:
        """After the search: enqueue the confirmation stage's trials (once; segsweep.sweep.confirm); whether any
        is still to run."""
        with self._lock():  # two sweepers finishing the search together enqueue it once
            enqueue_confirmation(study, self.config, space, self.opts)
        return pending(study) > 0

    def _stage(self, study: optuna.Study, confirm: bool) -> tuple[list[FrozenTrial], int]:
        """The trials of one stage (the search, or the confirmation) and how many that stage runs in all."""
        trials = [t for t in study.get_trials(deepcopy=False) if is_confirm(t) == confirm]
        if not confirm:
            return trials, self.n_trials
        gone = superseded(trials)
        return trials, sum(1 for t in trials if t.number not in gone)

    def _run(self, study: optuna.Study, slots: Slots, parent: StudyParentRun, overrides, confirm: bool) -> str:
        """Keep the slots full until the stage has its trials (the search: ``n_trials``; the confirmation: every
        enqueued one), or a budget or the failure rate stops it, and no trial of it is still running anywhere;
        returns why it stopped."""
        lockstep, last_beat, stop = self.opts.lockstep, 0.0, None
        self._confirm_stage = confirm
        while True:
            if self.watch is not None:
                for t in self.watch.fail_stale(study):
                    log.warning("trial %d: stale heartbeat, failed", t.number)
                    self._lost(study, parent, t)
                if time.monotonic() - last_beat >= self.watch.interval:  # trials whose job has not started yet
                    last_beat = time.monotonic()
                    self.watch.beat(compat.trial_id(t) for t in slots.trials.values()
                                    if record(compat.stored_trial(study, compat.trial_id(t))).job_state is None)
            self._settle(study, parent, slots.returned(0))
            trials, total = self._stage(study, confirm)
            gone = superseded(trials)
            counted = sum(1 for t in trials if t.state in FINISHED and t.number not in gone)
            running = sum(1 for t in trials if t.state == TrialState.RUNNING)
            stop = stop or self._stopped(trials, gone, total)
            to_go = total - counted - running
            n_ask = 0
            if stop is None and to_go > 0 and not (lockstep and slots.trials):
                n_ask = 1 if slots.sequential else min(self.n_jobs - slots.busy(trials), to_go)
            for _ in range(n_ask):
                self._ask_and_launch(study, slots, overrides)
            if n_ask > 0:
                continue  # sequential: it ran to its end; parallel: look again at once
            if not slots.trials and running == 0 and (stop or to_go <= 0):
                break
            if slots.trials and self.progress.due():  # at least once a minute while trials run
                self._study_line(study)
            self._settle(study, parent, slots.returned(slots.poll_s))
        slots.drain(lambda returned: self._settle(study, parent, returned), timeout_s=30)
        if confirm:
            return stop or f"{counted} of {total} confirmation trials done"
        return stop or f"n_trials reached: {counted} of {self.n_trials} trials done"

    def _ask_and_launch(self, study: optuna.Study, slots: Slots, overrides) -> None:
        trial = study.ask()
        if self.watch is not None:
            # from the ask on: a sweeper dying now leaves a trial that goes stale
            self.watch.beat([compat.trial_id(trial)])
        trials = [t for t in study.get_trials(deepcopy=False) if not is_confirm(t)]
        gone = superseded(trials)
        before = sum(1 for t in trials if t.number < trial.number and t.number not in gone)
        if not is_confirm(trial) and before >= self.n_trials:  # another sweeper asked the last one at the same moment
            write(trial, surplus=True,
                  fail_reason="surplus: the study had its n_trials (asked by two sweepers at once)")
            tell_failed(study, trial)
            return
        job_overrides = overrides(trial)
        log.info("%s", launched_line(trial))
        log.debug("trial %d overrides: %s", trial.number, " ".join(job_overrides))
        slots.launch(trial, job_overrides)

    def _stopped(self, trials: Sequence[FrozenTrial], gone: set[int], total: int) -> str | None:
        n_fail = sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in gone)
        if n_fail > self.max_failure_rate * total:
            return (f"max_failure_rate exceeded: {n_fail} of the stage's {total} trials failed, more than "
                    f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows")
        started = [t.datetime_start for t in trials if t.datetime_start is not None]
        now = dt.datetime.now()
        wall = self.opts.budget_wall_min
        if wall is not None and started and (now - min(started)).total_seconds() / 60 >= wall:
            return f"budget: wall clock of {wall} min reached (study.budget_wall_min)"
        hours = self.opts.budget_slot_hours
        if hours is not None and slot_hours(trials, now) >= hours:
            return f"budget: {hours} slot-hours used (study.budget_slot_hours)"
        return None

    def _settle(self, study: optuna.Study, parent: StudyParentRun, returned) -> None:
        """Trials whose launch returned: fail (and retry) those whose job ended without telling the study."""
        for trial, ret in returned:
            frozen = compat.stored_trial(study, compat.trial_id(trial))
            error = ret if isinstance(ret, BaseException) else compat.job_error(ret)
            if frozen.state == TrialState.RUNNING:  # its job is over (requeues included) and told nothing
                reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else "no result"
                write(trial, fail_reason=f"the job ended without a result: {reason}"[:2000])
                tell_failed(study, trial)
                frozen = compat.stored_trial(study, compat.trial_id(trial))
                if died_without_a_word(error):
                    self._lost(study, parent, frozen)
                else:  # the job's own exception (a config or data error): the same point would fail again
                    parent.fail_children([frozen], record(frozen).fail_reason)
            (log.warning if frozen.state == TrialState.FAIL else log.info)("%s", finished_line(
                frozen, self.progress.objective))
            self._study_line(study)

    def _study_line(self, study: optuna.Study) -> None:
        trials, total = self._stage(study, self._confirm_stage)
        self.progress.emit(study, trials, total, self._confirm_stage, superseded(trials))

    def _lost(self, study: optuna.Study, parent: StudyParentRun, dead: FrozenTrial) -> None:
        """A trial whose job died: close its MLflow run FAILED, and queue its point again (resuming from its
        checkpoint when it left one) unless it was already retried ``study.max_retries`` times."""
        parent.fail_children([dead], record(dead).fail_reason or "the job died")
        self._retry(study, dead, "retry_count", self.opts.max_retries)

    @staticmethod
    def _retry(study: optuna.Study, dead: FrozenTrial, counter: str, limit: int) -> None:
        r = record(dead)
        count = int(getattr(r, counter))
        if count >= limit:
            log.warning("trial %d not retried: it already is retry %d of %d", dead.number, count, limit)
            return
        new = attrs(**carried(dead), retry_of=dead.number, **{counter: count + 1})
        ckpt = Path(r.output_dir or "/nonexistent") / "checkpoint.pt"
        resume = str(ckpt) if ckpt.exists() else r.resume_from
        if resume:
            new["resume_from"] = resume
        log.info("trial %d queued again%s", dead.number, f", from {resume}" if resume else "")
        # as optuna's RetryFailedTrialCallback: the dead trial's system attrs go along (GridSampler's grid_id)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=dead.params, distributions=dead.distributions, user_attrs=new,
            system_attrs={**dead.system_attrs, "fixed_params": dead.params}))

    # ---- start ----------------------------------------------------------------------------------------------

    def _enqueue(self, study: optuna.Study) -> None:
        """``study.enqueue``: hand-picked points, evaluated before the sampler's (once per study)."""
        for point in self.opts.enqueue or []:
            study.enqueue_trial(dict(point), user_attrs=attrs(enqueued=True), skip_if_exists=True)

    def _recover(self, study: optuna.Study) -> tuple[bool, list[FrozenTrial]]:
        """Re-attach to a study: trials left RUNNING are waited for while their heartbeat is fresh (one beat now
        for those whose job never started: they go stale unless their own sweeper still beats them); without
        heartbeats (study.heartbeat_interval=null) nothing tells whether their jobs live, so they are failed at
        once, marked interrupted. Interrupted trials are queued again once.
        Returns (resuming, the trials failed here)."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        failed: list[FrozenTrial] = []
        if running and self.watch is not None:
            log.info("re-attaching to %d running trial(s): %s", len(running), [t.number for t in running])
            self.watch.beat(compat.trial_id(t) for t in running if record(t).job_state is None)
        elif running:
            log.warning("failing %d trial(s) left RUNNING (no heartbeats to tell whether they live)", len(running))
            for t in running:
                trial = optuna.trial.Trial(study, compat.trial_id(t))
                write(trial, interrupted=True, fail_reason="interrupted: the sweep stopped while it ran")
                tell_failed(study, trial)
            failed = [compat.stored_trial(study, compat.trial_id(t)) for t in running]
        retried = {record(t).retry_of for t in study.get_trials(deepcopy=False)}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if record(t).interrupted and t.number not in retried:
                self._retry(study, t, "interrupt_count", 1_000_000)
        if study.trials and hasattr(self.sampler, "reseed_rng"):
            self.sampler.reseed_rng()  # a resumed seeded sampler would otherwise propose its first points again
        return bool(study.trials), failed

    def _log_best(self, study: optuna.Study) -> None:
        if len(study.directions) == 1:
            if (best := best_search_trial(study)) is not None:
                log.info("best search trial %d: %.4f, %s", best.number, best.value, short_config(best))
            if confirm_trials(study, (TrialState.COMPLETE,)):
                from segsweep.report import build, fmt_ci

                if (r := build(study)).confirmed:
                    b = r.confirmed[0]
                    log.info("best confirmed configuration: %s, mean %.4f, 95 %% CI %s over %d seeds", b.label,
                             b.summary.mean, fmt_ci(b.summary), b.summary.n)
        else:
            log.info("%d Pareto-optimal trial(s)", len(study.best_trials))
        if (report := self.sweep_dir / "study_summary" / "report.md").exists():
            log.info("the study's answer, with intervals and paired tests: %s", report)
