"""What a study checks once, before its first job: its stores answer, and its trials' composed config is valid.

Without it a configuration error that every trial hits launched ``n_jobs`` jobs before the failure rate stopped
the study, and a tracking URI nobody listens on failed each job after minutes of MLflow's retries.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict
from optuna.trial import FrozenTrial, TrialState

from segsweep.checks import ConfigError
from segsweep.config import validate
from segsweep.stores import check_mlflow, check_optuna
from segsweep.sweep.record import record


def check_study(config: DictConfig, config_loader, storage: str, overrides: Sequence[str],
                searched: Iterable[str], sweep_dir: Path) -> None:
    """Raises ``ConfigError`` (one line) when a store does not answer or when the config every trial starts from
    is invalid in a key the search does not set (a sampled value might make a searched key valid)."""
    check_mlflow(bool(config.mlflow.enabled), str(config.mlflow.tracking_uri), str(config.mlflow.experiment_name))
    check_optuna(storage)
    job = config_loader.load_sweep_config(config, list(overrides))  # as the launcher composes each job
    with open_dict(job):
        del job["hydra"]  # as Hydra hands the job its config
        job.output_dir = str(sweep_dir)  # ${hydra:runtime.output_dir} is set per job, at launch
    try:
        validate(job)
    except ConfigError as e:
        key = m.group(1) if (m := re.match(r"config key '([^']+)'", str(e))) else ""
        if not any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in searched):
            raise


def commonest_failure(trials: Sequence[FrozenTrial], superseded: set[int] = frozenset()) -> str:
    """``"<reason>" (3 of 4 failed trials)``: the fail reason most failed trials (but ``superseded`` ones) share
    (its first line; sampled values, which differ from trial to trial, shown as ``<x>``)."""
    trials = [t for t in trials if t.state == TrialState.FAIL and t.number not in superseded]
    reasons = Counter(re.sub(r"-?\d+\.\d+(e[-+]?\d+)?", "<x>", (record(t).fail_reason or "no reason recorded")
                             .strip().splitlines()[0])[:300] for t in trials)
    if not reasons:
        return "no failed trial recorded"
    reason, n = reasons.most_common(1)[0]
    return f"{reason!r} ({n} of {len(trials)} failed trials)"
