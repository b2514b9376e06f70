"""``study.*``: how a study runs its trials (seeds, confirmation, heartbeats, retries, budgets) and how a trial's
job reaches its Optuna trial. Part of the config schema (``segsweep.config.Config.study``); the sweeper reads it
typed, once (``study_options``), never key by key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segsweep.checks import check, finite


@dataclass
class ConfirmConfig:
    """The confirmation stage after a study's search (segsweep.sweep.confirm): the ``top_k`` configurations with
    the best mean and every ``study.baselines`` entry, each trained again with ``seeds`` fresh seeds."""

    top_k: int = 0  # configurations re-trained after the search (0: no confirmation stage)
    seeds: int = 3  # fresh seeds per configuration: seed_base, seed_base + 1, ... (never the search's seeds)
    seed_base: int = 1000

    def __post_init__(self) -> None:
        check(self.top_k >= 0, "study.confirm.top_k", "an integer >= 0", self.top_k)
        check(self.seeds >= 1, "study.confirm.seeds", "an integer >= 1", self.seeds)


@dataclass
class StudyConfig:
    """How a trial's job reaches its Optuna trial and its study's MLflow parent run. The sweeper sets every key
    but ``pruner`` on each job's command line; in a single run they stay null and nothing is reported."""

    # Repeats with common random numbers (segsweep.seeds): every configuration is trained with the same seeds
    # (seed s: same initial weights, batches and augmentations whatever the loss, weighting or synthetic weight).
    repeats: int = 1  # seeds per trial, trained one after another; the trial's value is their mean
    seeds: list[int] | None = None  # the search's seeds (the first `repeats` are used); null: trainer.seed + 0, 1, ...
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    baselines: Any = None  # {name: [Hydra overrides]}, e.g. {plain_ce: [loss=ce, weighting=none]} (confirmed too)
    # the smallest difference in the objective worth having: the report calls a gain better, equivalent or
    # undecided against it (0.01 mIoU = one point; segsweep.stats.DEFAULT_MIN_EFFECT says why)
    min_effect: float = 0.01
    name: str | None = None  # the Optuna study (also the MLflow parent run's name)
    storage: str | None = None  # its storage URL
    trial_id: int | None = None  # the trial this job evaluates
    trial_number: int | None = None  # its number in the study (names the job directory and the MLflow run)
    parent_run_id: str | None = None  # the study's MLflow run; this job's run is its child
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner, n_warmup_steps: 1}; null: no pruning
    # Self-healing studies (segsweep.sweep): the job beats its trial in the study's storage every
    # heartbeat_interval s; a RUNNING trial silent for grace_period s is failed ("stale heartbeat") and run again
    # (at most max_retries times), from its last checkpoint when it left one (resume_from, set by the sweeper).
    heartbeat_interval: int | None = 10  # null: no heartbeats (a dead job is then noticed by its launcher only)
    grace_period: int = 60
    max_retries: int = 1
    # how long the sweeper and the jobs wait for a storage that blinks (locked, restarting) before giving up
    storage_patience_s: float = 600
    resume_from: str | None = None  # a dead trial's checkpoint.pt: weights and iteration, not its MLflow run
    enqueue: Any = None  # hand-picked points run first, e.g. [{loss.ce_weight: 0.6, weighting: sqrt_inv_freq}]
    budget_wall_min: float | None = None  # ask no new trial once the study has run this long (minutes)
    budget_slot_hours: float | None = None  # ... or once its trials have used this many slot-hours
    # true: n_jobs trials at a time, the next batch only when all have ended (no slot refilled early): the
    # lock-step loop bench/bench_study.py compares with
    lockstep: bool = False

    def __post_init__(self) -> None:
        check(self.heartbeat_interval is None or self.heartbeat_interval > 0, "study.heartbeat_interval",
              "a positive number of seconds or null", self.heartbeat_interval)
        check(self.heartbeat_interval is None or self.grace_period > self.heartbeat_interval,
              "study.grace_period", "more seconds than study.heartbeat_interval", self.grace_period)
        check(self.max_retries >= 0, "study.max_retries", "an integer >= 0", self.max_retries)
        check(finite(self.storage_patience_s) and self.storage_patience_s >= 0, "study.storage_patience_s",
              "a number of seconds >= 0", self.storage_patience_s)
        check(finite(self.min_effect) and self.min_effect >= 0, "study.min_effect", "a number >= 0",
              self.min_effect)


def study_options(cfg: DictConfig) -> StudyConfig:
    """``study.*`` of a composed config as the typed schema (its defaults and range checks): what the sweeper
    reads, once, instead of raw keys."""
    node = cfg.study  # resolved where it is: its values may interpolate others (${trainer.eval_every})
    if OmegaConf.get_type(node) is not StudyConfig:  # a plain node: the schema's defaults and checks first
        node = OmegaConf.merge(OmegaConf.structured(StudyConfig), node)
    typed = OmegaConf.to_object(node)
    assert isinstance(typed, StudyConfig)
    return typed
