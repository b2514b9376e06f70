"""What a study prints while it runs: one line per launched and per finished trial, and a study line on every
event and at least once a minute (done / running / queued, the best so far, elapsed and an estimate of the time
left). The same on every launcher: the lines come from the sweeper, which sees every trial in the storage.
Hydra's own launcher lines (a job's whole override list) go to debug level.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from segsweep import compat
from segsweep.sweep.record import CONFIRM, SEARCH, record

log = logging.getLogger("segsweep.sweep")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def quiet_launchers() -> None:
    """Hydra's launchers log every job's full override list at INFO: debug level here (the sweeper says it in one
    line)."""
    for name in compat.LAUNCHER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def short_config(trial: FrozenTrial | optuna.Trial) -> str:
    """``ce_weight=0.63 synthetic_loss_weight=0.21 weighting=sqrt_inv_freq`` (the last part of each searched key),
    or a confirmation trial's configuration name and seed."""
    r = record(trial)
    if r.confirm_config is not None:
        return f"{r.confirm_config} seed {r.seeds[0]}" if r.seeds else r.confirm_config
    return " ".join(f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in trial.params.items())


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def stage_of(trial: FrozenTrial | optuna.Trial) -> str:
    return CONFIRM if record(trial).stage == CONFIRM else SEARCH


def launched_line(trial: optuna.Trial) -> str:
    r = record(trial)
    extra = (" enqueued=True" if r.enqueued else "") + (f" retry_of={r.retry_of}" if r.retry_of is not None else "")
    return f"trial {trial.number} launched ({stage_of(trial)}): {short_config(trial)}{extra}"


def finished_line(t: FrozenTrial, objective: str) -> str:
    """``trial 7 (search) 0.4312 val/mIoU in 3:12: ce_weight=0.63 ...``; pruned at its step; failed with why."""
    took = f" in {_duration(t.duration.total_seconds())}" if t.duration is not None else ""
    head = f"trial {t.number} ({stage_of(t)})"
    if t.state == TrialState.COMPLETE:
        values = ", ".join(f"{v:.4f}" for v in t.values)
        return f"{head} {values} {objective}{took}: {short_config(t)}"
    if t.state == TrialState.PRUNED:
        step = max(t.intermediate_values) if t.intermediate_values else None
        at = f" at step {step} ({t.intermediate_values[step]:.4f})" if step is not None else ""
        return f"{head} pruned{at}{took}: {short_config(t)}"
    return f"{head} failed{took}: {str(record(t).fail_reason or 'no reason recorded')[:200]}"


class StudyLine:
    """The study line: printed on every event, and at least every ``every`` seconds while trials run."""

    def __init__(self, name: str, objective: str, n_jobs: int, every: float = 60.0) -> None:
        self.name, self.objective, self.n_jobs, self.every = name, objective, max(1, n_jobs), every
        self.started = time.monotonic()
        self.last = -math.inf

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def emit(self, study: optuna.Study, trials: Sequence[FrozenTrial], total: int, confirm: bool,
             gone: set[int] = frozenset()) -> str:
        self.last = time.monotonic()
        line = self.text(study, trials, total, confirm, gone)
        log.info("%s", line)
        return line

    def text(self, study: optuna.Study, trials: Sequence[FrozenTrial], total: int, confirm: bool,
             gone: set[int] = frozenset()) -> str:
        live = [t for t in trials if t.number not in gone]
        done = [t for t in live if t.state in FINISHED]
        running = sum(1 for t in live if t.state == TrialState.RUNNING)
        queued = max(0, total - len(done) - running)
        stage = "confirmation" if confirm else "search"
        head = f"study {self.name} {stage} {len(done)}/{total} done {running} running {queued} queued"
        took = [t.duration.total_seconds() for t in done if t.duration is not None and t.state != TrialState.FAIL]
        clock = _duration(time.monotonic() - self.started)
        if took and (queued or running):
            mean = sum(took) / len(took)
            # the queued trials in waves of n_jobs, plus what the running ones have left (half a trial, on average)
            clock += f", ~{_duration(mean * (math.ceil(queued / self.n_jobs) + (0.5 if running else 0)))} left"
        return " | ".join(p for p in (head, self._best(study, live, confirm), clock) if p)

    def _best(self, study: optuna.Study, trials: Sequence[FrozenTrial], confirm: bool) -> str:
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete or len(study.directions) > 1:
            return ""
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        if not confirm:
            b = (max if maximize else min)(complete, key=lambda t: t.value)
            return f"best {b.value:.4f} (trial {b.number})"
        means: dict[str, list[float]] = {}
        for t in complete:
            means.setdefault(record(t).confirm_config or "?", []).append(t.value)
        label, values = (max if maximize else min)(means.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
        return f"best {label} {sum(values) / len(values):.4f} ({len(values)} seeds)"
