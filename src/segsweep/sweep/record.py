"""A trial's record in its study: every Optuna user attribute that a job or a sweeper writes, with its type and
meaning, written (``write``, ``attrs``) and read (``record``) here only; and how a job's ending maps to its MLflow
run's status and its trial's state (``ending``).

Where a study stores what: the trial's value(s) is the mean over its seeds (``study.tell``); everything else a
trial holds is below, in its user attributes. Each seed's values, class IoUs and split monitors
(``seed_*``) are what the report computes everything from; the MLflow runs hold the curves and the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import optuna

SEARCH, CONFIRM = "search", "confirm"
MIN_EFFECT = "min_effect"  # the study's own attribute: study.min_effect, the report's margin (segsweep.stats)


@dataclass(frozen=True)
class TrialRecord:
    # What the job trained and found (segsweep.seeds), written as each seed ends; the report reads these.
    stage: str = SEARCH  # "search", or "confirm" (a confirmation trial: fresh seeds, never pruned)
    seeds: list[int] = field(default_factory=list)  # the seeds the job trains (set by the confirmation stage)
    seed_values: dict[str, float] = field(default_factory=dict)  # seed -> the (first) objective
    seed_objectives: dict[str, list[float]] = field(default_factory=dict)  # seed -> every objective
    seed_iou: dict[str, dict[str, float]] = field(default_factory=dict)  # seed -> class -> IoU
    seed_monitors: dict[str, dict[str, float]] = field(default_factory=dict)  # seed -> split monitor -> last value
    seed_runs: dict[str, str] = field(default_factory=dict)  # seed -> its MLflow run (several seeds)
    labels: dict[str, Any] | None = None  # the label set (segsweep.data.labels.LabelSet.to_dict)
    output_dir: str | None = None  # the job's directory (checkpoints, metrics.jsonl, plots)
    mlflow_run_id: str | None = None  # the trial's MLflow run (a child of the study's)
    # The job's life (segsweep.sweep.trial). job_state: absent while the sweeper beats the trial, "running" once
    # the job beats it, "requeued" while a preempted SLURM job waits in the queue, "ended" once it told its end.
    job_state: str | None = None
    job_host: str | None = None
    job_pid: int | None = None
    preempted_at: str | None = None  # the iteration of the checkpoint a requeued job resumes from
    fail_reason: str | None = None
    interrupted: bool = False  # failed because the sweep stopped (Ctrl-C): queued again when it resumes
    # The sweeper's bookkeeping (segsweep.sweep.sweeper)
    enqueued: bool = False  # a study.enqueue point
    retry_of: int | None = None  # the failed trial this one evaluates again
    retry_count: int = 0  # retries after dead jobs so far (study.max_retries)
    interrupt_count: int = 0  # re-runs after stopped sweeps
    resume_from: str | None = None  # the dead trial's checkpoint this one starts from
    surplus: bool = False  # asked by two sweepers at once: failed at once, not counted
    overrides: list[str] = field(default_factory=list)  # Hydra overrides beyond the params (a baseline's loss=ce)
    # The confirmation stage (segsweep.sweep.confirm)
    confirm_config: str | None = None  # its label: top1, plain_ce, ...
    confirm_kind: str | None = None  # top, baseline, top+baseline
    confirm_id: str | None = None  # the configuration's id (params and overrides)
    confirm_key: str | None = None  # <confirm_id>@<seed>: enqueued once per study
    source_trials: list[int] = field(default_factory=list)  # the search trials of a top configuration


KEYS = frozenset(f.name for f in fields(TrialRecord))
# What a retry carries over from the trial it evaluates again (its stage, seeds and configuration).
CARRIED = ("stage", "seeds", "overrides", "confirm_config", "confirm_kind", "confirm_id", "confirm_key",
           "source_trials")


def record(trial: optuna.trial.FrozenTrial | optuna.Trial) -> TrialRecord:
    """The trial's record as stored (attributes of other tools are left out)."""
    return TrialRecord(**{k: v for k, v in trial.user_attrs.items() if k in KEYS and v is not None})


def attrs(**values: Any) -> dict[str, Any]:
    """User attributes for ``enqueue_trial``/``create_trial``, every name checked against the record."""
    unknown = sorted(set(values) - KEYS)
    if unknown:
        raise KeyError(f"{unknown} are not fields of segsweep.sweep.record.TrialRecord")
    return values


def write(trial: optuna.Trial, **values: Any) -> None:
    """Store fields of the trial's record (each a user attribute)."""
    for k, v in attrs(**values).items():
        trial.set_user_attr(k, v)


def carried(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The fields a retry of ``t`` carries over (its stage, seeds and configuration)."""
    return {k: t.user_attrs[k] for k in CARRIED if k in t.user_attrs}


# ---- how a job ends ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ending:
    mlflow_status: str  # FINISHED, KILLED (stopped: not the configuration's fault), FAILED
    trial_state: str  # COMPLETE, PRUNED, REQUEUED (stays RUNNING: the requeued job goes on), FAIL


def ending(error: BaseException | None) -> Ending:
    """What a job's end means for its MLflow run and its trial: the one mapping, for the run, the seed loop and
    the sweeper."""
    from segsweep.engine.trainer import Preempted

    if error is None:
        return Ending("FINISHED", "COMPLETE")
    if isinstance(error, optuna.TrialPruned):
        return Ending("KILLED", "PRUNED")  # MLflow has no 'pruned' status: KILLED, tagged segsweep.trial_state
    if isinstance(error, Preempted):
        return Ending("KILLED", "REQUEUED")
    if isinstance(error, KeyboardInterrupt):
        return Ending("KILLED", "FAIL")  # interrupted: run again when the study resumes
    return Ending("FAILED", "FAIL")
