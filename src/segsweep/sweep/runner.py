"""The study's slots: ``n_jobs`` trials in flight while the study has trials to go.

Each trial is launched on its own, through the launcher's public ``launch``, from a daemon thread; the loop
polls the study's storage and frees a trial's slot the moment the trial is finished there (told by its job:
complete, pruned, failed) or found stale, and fills it with the next ask at once. The in-process basic launcher
runs trials one at a time in the main thread (Python delivers signals and Ctrl-C to the main thread only, so the
trial receives them).

submitit's local executor creates a job's folder (``.../%j``) only after the job's process has started, and a
process that starts first dies opening its log there, losing the trial: local launches therefore get a folder
of their own without ``%j`` (``.submitit/trial_<n>``), which the executor creates before starting the process.
It also shows every job the same GPUs (``0 .. gpus_per_node-1``): local trials therefore get GPUs of their own
from ``GpuPool``, which the trial's job is shown through the launcher's ``setup`` lines.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def is_local(launcher) -> bool:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

    return isinstance(launcher, LocalLauncher)


def _launcher_for(launcher, number: int, gpus: list[str] | None = None):
    """A copy of a submitit *local* launcher whose jobs of trial ``number`` go to a folder of their own and see
    only ``gpus`` (when given)."""
    if not is_local(launcher):
        return launcher
    folder = Path(str(launcher.params["submitit_folder"]))
    parts = [p for p in folder.parts if not any(tag in p for tag in ("%j", "%t", "%A", "%a"))]
    mine = copy.copy(launcher)
    mine.params = {**launcher.params, "submitit_folder": str(Path(*parts) / f"trial_{number}")}
    if gpus is not None:  # run by the job's shell after submitit set CUDA_VISIBLE_DEVICES to 0..n-1
        mine.params["setup"] = [*(launcher.params.get("setup") or []), f"export CUDA_VISIBLE_DEVICES={','.join(gpus)}"]
    return mine


class GpuPool:
    """This machine's GPUs shared out among submitit's local trials: ``gpus_per_node`` each, returned when the
    trial's launch returns. The GPUs are those of the sweeper's ``CUDA_VISIBLE_DEVICES``, else all of them."""

    def __init__(self, launcher, n_jobs: int) -> None:
        self.per_trial = int(launcher.params.get("gpus_per_node") or 0) if is_local(launcher) else 0
        self.free: list[str] = []
        self.held: dict[int, list[str]] = {}
        if not self.per_trial:
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            self.free = [g.strip() for g in visible.split(",") if g.strip()]
        else:
            import torch

            self.free = [str(i) for i in range(torch.cuda.device_count())]
        if self.per_trial * n_jobs > len(self.free):
            raise ValueError(
                f"config key 'hydra.sweeper.n_jobs': {n_jobs} trials at once with hydra.launcher.gpus_per_node="
                f"{self.per_trial} need {self.per_trial * n_jobs} GPUs, but this machine shows {len(self.free)} "
                f"({'CUDA_VISIBLE_DEVICES=' + repr(visible) if visible is not None else 'torch.cuda.device_count()'})"
                ": lower n_jobs or gpus_per_node")

    def take(self, number: int) -> list[str] | None:
        if not self.per_trial:
            return None
        self.held[number], self.free = self.free[: self.per_trial], self.free[self.per_trial:]
        return self.held[number]

    def give_back(self, number: int) -> None:
        self.free += self.held.pop(number, [])


def is_sequential(launcher) -> bool:
    from segsweep import compat

    return compat.is_basic_launcher(launcher)


class Slots:
    """Trials this sweeper launched and whose jobs have not returned yet."""

    # Each poll reads the study's trials from the storage: once a second frees a slot within a second of its
    # trial's end (trials take minutes) and keeps the sweeper's own CPU use small on a small machine.
    def __init__(self, launcher, n_jobs: int = 1, poll_s: float = 1.0) -> None:
        self.launcher, self.poll_s = launcher, poll_s
        self.sequential = is_sequential(launcher)
        self.gpus = GpuPool(launcher, n_jobs)
        self.trials: dict[int, optuna.Trial] = {}  # number -> trial, until its launch returns
        self.done: queue.Queue = queue.Queue()  # (number, JobReturn or exception)

    def launch(self, trial: optuna.Trial, overrides) -> None:
        self.trials[trial.number] = trial
        launcher = _launcher_for(self.launcher, trial.number, self.gpus.take(trial.number))

        def run() -> None:
            try:
                ret = list(launcher.launch([overrides], initial_job_idx=trial.number))[0]
            except BaseException as e:  # a job ended without a result (killed, node failure): its error
                if not self.sequential:
                    log.error("trial %d: the job ended without a result: %s", trial.number, e)
                ret = e
                if self.sequential and isinstance(e, KeyboardInterrupt):
                    raise
            self.done.put((trial.number, ret))

        if self.sequential:
            run()  # the main thread: signal handlers and Ctrl-C work as in a plain run
        else:
            threading.Thread(target=run, name=f"trial-{trial.number}", daemon=True).start()

    def busy(self, study_trials: list[optuna.trial.FrozenTrial]) -> int:
        """Slots in use: own trials still RUNNING in the storage (a finished one frees its slot at once, even
        while its process is still exiting)."""
        if self.gpus.per_trial:  # a trial's GPUs are free once its job's process has exited
            return len(self.trials)
        running = {t.number for t in study_trials if t.state == TrialState.RUNNING}
        return sum(1 for n in self.trials if n in running)

    def returned(self, wait_s: float) -> list[tuple[optuna.Trial, object]]:
        """Launches that returned, waiting up to ``wait_s`` for the first."""
        out = []
        try:
            out.append(self.done.get(timeout=wait_s) if wait_s > 0 else self.done.get_nowait())
            while True:
                out.append(self.done.get_nowait())
        except queue.Empty:
            pass
        for n, _ in out:
            self.gpus.give_back(n)
        return [(self.trials.pop(n), ret) for n, ret in out]

    def drain(self, settle: Callable, timeout_s: float) -> None:
        """Wait (bounded) for the launches still out, e.g. job processes exiting after their trial ended."""
        deadline = time.monotonic() + timeout_s
        while self.trials and time.monotonic() < deadline:
            settle(self.returned(min(1.0, max(0.0, deadline - time.monotonic()))))
        if self.trials:
            log.warning("not waiting any longer for the jobs of trials %s (their trials have ended)",
                        sorted(self.trials))


def died_without_a_word(error: object) -> bool:
    """A job that left no result (killed, node failure: submitit's UncompletedJobError), as opposed to one whose
    task raised (Hydra's JobReturn holds the exception; submitit's FailedJobError) -- only the former is retried."""
    return not isinstance(error, BaseException) or type(error).__name__ == "UncompletedJobError"
