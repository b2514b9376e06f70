"""Running sums of the losses and monitors, kept on the device between logging steps.

Reading a CUDA tensor on the host (``.item()``) waits for the GPU to finish, so the training step never does
it: every step adds its scalars to one device vector, and ``flush`` reads that vector once per logging period.
Monitors arrive as (sum, count) pairs so that the mean over a period (and, later, over several GPUs) is exact:
the mean of the real samples' losses, not a mean of per-step means.
"""

from __future__ import annotations

import math
import time

import torch

from segsweep.losses import LossOutput


class MetricAccumulator:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: list[str] | None = None  # fixed by the first step: "loss", terms, then monitors
        self.n_terms = 0
        self.monitor_keys: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self.sums: torch.Tensor | None = None
        self.steps = 0
        self.data_time = 0.0
        self.period_start = time.perf_counter()
        # First step of the period whose optimised loss was not finite (-1: none), and its term values.
        self.bad_iter = torch.full((), -1, dtype=torch.long, device=self.device)
        self.bad_values: torch.Tensor | None = None

    def add(self, out: LossOutput, iteration: int, data_time: float = 0.0) -> None:
        """Record one step. Only device operations: no host-device synchronisation."""
        if self.keys is None:
            self.keys = ["loss", *out.terms]
            self.n_terms = len(self.keys)
            self.monitor_keys = list(out.monitors)
        scalars = [out.total.detach(), *(v.detach() for v in out.terms.values())]
        sums = [s for s, _ in out.monitors.values()]
        counts = [c for _, c in out.monitors.values()]
        values = torch.stack([v.float() for v in (*scalars, *sums, *counts)])
        self.sums = values if self.sums is None else self.sums + values
        # Remember the first non-finite step of the period without reading anything back.
        finite = torch.isfinite(values[0])
        first_bad = (~finite) & (self.bad_iter < 0)
        self.bad_iter = torch.where(first_bad, torch.full_like(self.bad_iter, iteration), self.bad_iter)
        head = values[: self.n_terms]
        self.bad_values = head if self.bad_values is None else torch.where(first_bad, head, self.bad_values)
        self.steps += 1
        self.data_time += data_time

    def flush(self) -> dict[str, float]:
        """Means over the period since the last flush (one host read). Raises on a non-finite loss."""
        if self.sums is None or self.keys is None:
            return {}
        packed = torch.cat([self.sums, self.bad_iter.float().reshape(1), self.bad_values]).tolist()
        n, k = self.steps, self.n_terms
        sums, bad_iter, bad_values = packed[: len(self.sums)], int(packed[len(self.sums)]), packed[-k:]
        if bad_iter >= 0:
            detail = ", ".join(f"{name}={v:.6g}" for name, v in zip(self.keys, bad_values))
            raise FloatingPointError(f"loss is not finite at iteration {bad_iter}: {detail}")
        elapsed = time.perf_counter() - self.period_start
        metrics = {name: sums[i] / n for i, name in enumerate(self.keys)}
        m = len(self.monitor_keys)
        for j, name in enumerate(self.monitor_keys):
            total, count = sums[k + j], sums[k + m + j]
            if count > 0 and math.isfinite(total):  # absent when the domain had no (finite) sample
                metrics[name] = total / count
        metrics["time"] = elapsed / n
        metrics["data_time"] = self.data_time / n
        self._reset()
        return metrics
