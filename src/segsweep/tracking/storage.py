"""Running sums of the losses and monitors, kept on the device between logging steps.

Reading a CUDA tensor on the host (``.item()``) waits for the GPU to finish, so the training step never does
it: every step adds its scalars to one device vector, and ``flush`` reads that vector once per logging period.
Terms and monitors arrive as (sum, count) pairs, so that a logged mean is exact over the period and over every
data-parallel rank (sums and counts are all-reduced): the mean over all the real samples seen, not a mean of
per-step or per-rank means, which is wrong when steps or ranks hold different numbers of samples.
"""

from __future__ import annotations

import math
import time

import torch

from segsweep.engine.distributed import all_reduce_
from segsweep.losses import LossOutput, weighted_total


class MetricAccumulator:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.terms: list[str] | None = None  # fixed by the first step
        self.weights: dict[str, float] = {}
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
        if self.terms is None:
            self.terms, self.weights, self.monitor_keys = list(out.terms), dict(out.weights), list(out.monitors)
        parts = [out.term_parts[k] for k in self.terms]
        values = torch.stack([v.detach().float() for v in (
            out.total, *(out.terms[k] for k in self.terms),  # this step's values: kept only to name a bad step
            *(n for n, _ in parts), *(d for _, d in parts),
            *(s for s, _ in out.monitors.values()), *(c for _, c in out.monitors.values()))])
        self.sums = values if self.sums is None else self.sums + values
        # Remember the first non-finite step of the period without reading anything back.
        first_bad = (~torch.isfinite(values[0])) & (self.bad_iter < 0)
        self.bad_iter = torch.where(first_bad, torch.full_like(self.bad_iter, iteration), self.bad_iter)
        head = values[: 1 + len(self.terms)]
        self.bad_values = head if self.bad_values is None else torch.where(first_bad, head, self.bad_values)
        self.steps += 1
        self.data_time += data_time

    def flush(self, stop: bool = False) -> tuple[dict[str, float], bool]:
        """Means over the period since the last flush, over every rank (one host read), and whether any rank
        asked to ``stop``. Raises on a non-finite loss (on every rank, when any rank saw one)."""
        if self.sums is None or self.terms is None:
            return {}, stop
        n, t, m = self.steps, len(self.terms), len(self.monitor_keys)
        sums = all_reduce_(self.sums[1 + t:].clone(), "sum")  # term (num, den), monitor (sum, count)
        elapsed = time.perf_counter() - self.period_start
        # the slowest rank's data and step times; any rank's bad step or stop request
        local = torch.tensor([self.data_time / n, elapsed / n, float(stop)], device=self.device)
        peaks = all_reduce_(torch.cat([local, self.bad_iter.float().reshape(1)]), "max")  # iterations < 2**24
        packed = torch.cat([sums, peaks, self.bad_iter.float().reshape(1), self.bad_values]).tolist()
        sums, (data_time, step_time, stop_any, bad_iter, local_bad), bad_values = \
            packed[: len(sums)], packed[len(sums): len(sums) + 5], packed[len(sums) + 5:]
        if bad_iter >= 0:
            names = ["loss", *self.terms]
            detail = ", ".join(f"{k}={v:.6g}" for k, v in zip(names, bad_values)) if local_bad >= 0 else \
                "on another rank"
            raise FloatingPointError(f"loss is not finite at iteration {int(bad_iter)}: {detail}")
        nums, dens, msums, mcounts = sums[:t], sums[t: 2 * t], sums[2 * t: 2 * t + m], sums[2 * t + m:]
        metrics = {k: (nums[i] / dens[i] if dens[i] > 0 else 0.0) for i, k in enumerate(self.terms)}
        metrics = {"loss": weighted_total(self.weights, metrics), **metrics}  # the step's formula, on the means
        for name, total, count in zip(self.monitor_keys, msums, mcounts):
            if count > 0 and math.isfinite(total):  # absent when the domain had no (finite) sample
                metrics[name] = total / count
        metrics["time"], metrics["data_time"] = step_time, data_time
        self._reset()
        return metrics, stop_any > 0
