"""Real/synthetic mixing: samples tagged with their domain and loss weight, and a fixed-ratio batch sampler.

The domain is carried explicitly with every sample and never inferred from the loss weight: a synthetic weight
of 0 (synthetic samples seen but not trained on) or 1 (same as real) is legal.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

REAL = 0
SYNTHETIC = 1


def real_per_batch(real_ratio: float, batch_size: int) -> int:
    """Real samples in every batch: real_ratio * batch_size rounded half *up* (2.5 -> 3, 3.5 -> 4).

    Not Python's ``round``, whose banker's rounding sends halves to the even neighbour (round(2.5) == 2 but
    round(3.5) == 4): half-up is what one expects ("50 % of 5" gives 3 real). A tiny tolerance absorbs float
    error (0.35 * 10 = 3.4999999999999996 counts as 3.5).
    """
    if not 0.0 <= real_ratio <= 1.0:
        raise ValueError(f"real_ratio must be in [0, 1], got {real_ratio}")
    return min(batch_size, math.floor(real_ratio * batch_size + 0.5 + 1e-9))


class DomainDataset(torch.utils.data.Dataset):
    """Wraps a loader: ``dict(image, label, domain, loss_weight)`` after ``transform``."""

    def __init__(self, dataset: Any, domain: int, loss_weight: float, transform: Callable[[dict], dict]) -> None:
        if domain not in (REAL, SYNTHETIC):
            raise ValueError(f"domain must be {REAL} (real) or {SYNTHETIC} (synthetic), got {domain!r}")
        self.dataset, self.domain, self.loss_weight, self.transform = dataset, domain, float(loss_weight), transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(i)

    def get(self, i: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        out = self.transform(self.dataset[i], generator)
        return {"image": out["image"], "label": out["label"], "domain": self.domain, "loss_weight": self.loss_weight}


def augmentation_seed(seed: int, batch: int, slot: int) -> int:
    """The seed of one sample's augmentation: a function of the run's seed and its place in the batch stream."""
    return (seed * 0x9E3779B1 + batch * 0x85EBCA77 + slot * 0xC2B2AE3D) % (2**63)


class SeededBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Gives every index of a MixedBatchSampler its own augmentation seed, so the augmentations depend neither on
    the number of loader workers nor on where a run was resumed (``start_batch``): a resumed run redraws them."""

    def __init__(self, sampler: MixedBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for k, batch in self.sampler.numbered():
            yield [(i, augmentation_seed(self.sampler.seed, k, j)) for j, i in enumerate(batch)]


class SeededConcat(torch.utils.data.ConcatDataset):
    """ConcatDataset of DomainDatasets indexed by ``(index, augmentation seed)`` pairs (from SeededBatches)."""

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        idx, seed = item
        part = bisect.bisect_right(self.cumulative_sizes, idx)
        local = idx - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part].get(local, torch.Generator().manual_seed(seed))


class MixedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches over ``ConcatDataset([real, synthetic])`` with exactly ``real_per_batch`` real indices each.

    Real indices come first in each batch (0..n_real-1), then synthetic ones (offset by n_real). Each domain walks
    its own seeded permutation, a fresh one per pass, so no index repeats within a pass. Infinite unless
    ``num_batches`` is given. Every ``iter()`` restarts the same sequence; ``start_batch`` skips that many batches
    first (cheap: only indices are drawn), e.g. to resume a run.

    Data-parallel: rank r of ``world_size`` W takes batches r, r + W, r + 2W, ... of the one seeded sequence, so
    every rank's batch has the mixed composition and W ranks together see exactly what one process would see in
    W steps. ``num_batches`` and ``start_batch`` count this rank's batches.
    """

    def __init__(self, n_real: int, n_synthetic: int, batch_size: int, real_ratio: float, seed: int,
                 num_batches: int | None = None, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n_real, self.n_synthetic, self.batch_size = n_real, n_synthetic, batch_size
        self.k_real = real_per_batch(real_ratio, batch_size)
        self.k_synthetic = batch_size - self.k_real
        if self.k_real and n_real < 1:
            raise ValueError(f"real_ratio={real_ratio} needs {self.k_real} real samples per batch of {batch_size}, "
                             "but the real dataset is empty")
        if self.k_synthetic and n_synthetic < 1:
            raise ValueError(f"real_ratio={real_ratio} needs {self.k_synthetic} synthetic samples per batch of "
                             f"{batch_size}, but the synthetic dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.seed, self.num_batches, self.start_batch = seed, num_batches, start_batch
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("MixedBatchSampler is infinite (num_batches=None) and has no length")
        return self.num_batches

    @staticmethod
    def _stream(n: int, rng: np.random.Generator) -> Iterator[int]:
        while True:
            yield from rng.permutation(n).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self.numbered():
            yield batch

    def numbered(self) -> Iterator[tuple[int, list[int]]]:
        """(number of the batch in the whole sequence, its indices) for this rank's batches."""
        # Separate streams per domain: the real order does not depend on how many synthetic samples are drawn.
        real = self._stream(self.n_real, np.random.default_rng([self.seed, REAL])) if self.k_real else iter(())
        syn = self._stream(self.n_synthetic, np.random.default_rng([self.seed, SYNTHETIC])) if self.k_synthetic \
            else iter(())

        def draw() -> list[int]:
            return [next(real) for _ in range(self.k_real)] + [self.n_real + next(syn) for _ in range(self.k_synthetic)]

        w = self.world_size
        g = 0  # number of the next batch in the whole sequence
        for _ in range(self.start_batch * w + self.rank):
            draw()
            g += 1
        b = 0
        while self.num_batches is None or b < self.num_batches:
            yield g, draw()
            for _ in range(w - 1):  # the other ranks' batches
                draw()
            g, b = g + w, b + 1
