"""Stop requests from outside: SLURM's warning ahead of the time limit or a preemption (submitit's signal,
USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise), and SIGTERM when no one else handles it.

A signal only sets a flag. The training loop reads it at its next logging step (a consistent point, shared by
every data-parallel rank), writes its checkpoint and raises ``Preempted``; the run closes its MLflow run and
then calls ``hand_over``, which passes the signal to the handler it replaced:

- inside a submitit job, submitit's own handler: it requeues the job (``max_num_timeout`` times for time-outs)
  and exits; the requeued job runs the same trial in the same directory and resumes from the checkpoint;
- otherwise the default action: the process ends as the signal would have ended it, checkpoint written.

submitit deliberately ignores SIGTERM (SLURM sends it to every step before cancelling), so SIGTERM is only
taken over where its handler is still the default one.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


def stop_signals() -> list[signal.Signals]:
    """submitit's preemption signal (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise), and SIGTERM."""
    return list(dict.fromkeys((signal.Signals[f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}"],
                               signal.SIGTERM)))


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: SLURM signals every process of a job step, loader workers included, and
    torch's workers die on SIGTERM, which would fail the run before its checkpoint. The main process decides;
    workers end with it (they watch their parent)."""
    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only
        for sig in stop_signals():
            previous = signal.getsignal(sig)
            if sig == signal.SIGTERM and previous != signal.SIG_DFL:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum

    def __call__(self) -> bool:
        """Has a stop been requested? (A plain attribute read: free to ask at every logging step.)"""
        return self.received is not None

    def __exit__(self, *exc: Any) -> None:
        """Put the replaced handlers back (they are remembered for ``hand_over``)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    def hand_over(self) -> None:
        """After the checkpoint: let the replaced handler act on the signal (submitit requeues and exits)."""
        signum, previous = self.received, self._previous.get(self.received, signal.SIG_DFL)
        self.__exit__()
        if signum is None or previous == signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, None)  # submitit: checkpoint_and_try_requeue -> requeue, SystemExit
        else:  # the default action, now that the handler is restored
            os.kill(os.getpid(), signum)
