"""Source mixing: samples tagged with their source and loss weight, and a fixed-composition batch sampler.

The source (and through it the domain, real or synthetic) is carried explicitly with every sample and never
inferred from the loss weight: a synthetic weight of 0 (seen but not trained on) or 1 (same as real) is legal.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from segsweep.data.plan import batch_counts


def real_per_batch(real_ratio: float, batch_size: int) -> int:
    """Real samples in every batch of a real + synthetic mix: real_ratio * batch_size rounded half *up*."""
    if not 0.0 <= real_ratio <= 1.0:
        raise ValueError(f"real_ratio must be in [0, 1], got {real_ratio}")
    return batch_counts([real_ratio, 1 - real_ratio], batch_size)[0]


class SourceDataset(torch.utils.data.Dataset):
    """Wraps a loader: ``dict(image, label, source, loss_weight)`` after ``transform``; ``source`` is the source's
    position in ``data.sources``."""

    def __init__(self, dataset: Any, source: int, loss_weight: float, transform: Callable[[dict], dict]) -> None:
        if not (isinstance(source, int) and source >= 0):
            raise ValueError(f"source must be a source's position (an int >= 0), got {source!r}")
        self.dataset, self.source, self.loss_weight, self.transform = dataset, source, float(loss_weight), transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(i)

    def get(self, i: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        out = self.transform(self.dataset[i], generator)
        return {"image": out["image"], "label": out["label"], "source": self.source, "loss_weight": self.loss_weight}


def augmentation_seed(seed: int, batch: int, slot: int) -> int:
    """The seed of one sample's augmentation: a function of the run's seed and its place in the batch stream."""
    return (seed * 0x9E3779B1 + batch * 0x85EBCA77 + slot * 0xC2B2AE3D) % (2**63)


class SeededBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Gives every index of a SourceBatchSampler its own augmentation seed, so the augmentations depend neither on
    the number of loader workers nor on where a run was resumed (``start_batch``): a resumed run redraws them."""

    def __init__(self, sampler: SourceBatchSampler) -> None:
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


class SourceBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches over ``ConcatDataset(sources)`` with exactly ``counts[k]`` indices of source k in each.

    Sources appear in order within a batch (source k's indices offset by the sizes before it). Each source walks
    its own seeded permutation, a fresh one per pass, so no index repeats within a pass; its stream is seeded by
    ``(seed, streams[k])`` (its position in ``data.sources``), so it does not depend on which other sources are
    trained. Infinite unless ``num_batches`` is given. Every ``iter()`` restarts the same sequence; ``start_batch``
    skips that many batches first (cheap: only indices are drawn), e.g. to resume a run.

    Data-parallel: rank r of ``world_size`` W takes batches r, r + W, r + 2W, ... of the one seeded sequence, so
    every rank's batch has the configured composition and W ranks together see exactly what one process would see
    in W steps. ``num_batches`` and ``start_batch`` count this rank's batches.
    """

    def __init__(self, sizes: list[int], counts: list[int], seed: int, streams: list[int] | None = None,
                 num_batches: int | None = None, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.sizes, self.counts = list(sizes), list(counts)
        self.streams = list(streams) if streams is not None else list(range(len(sizes)))
        self.batch_size = sum(self.counts)
        if self.batch_size < 1:
            raise ValueError(f"a batch needs at least one sample, got counts {self.counts}")
        for k, (n, c) in enumerate(zip(self.sizes, self.counts)):
            if c and n < 1:
                raise ValueError(f"source {k} is to give {c} samples per batch of {self.batch_size}, but its "
                                 "dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.seed, self.num_batches, self.start_batch = seed, num_batches, start_batch
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"{type(self).__name__} is infinite (num_batches=None) and has no length")
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
        offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        streams = [(off, c, self._stream(n, np.random.default_rng([self.seed, key])))
                   for n, c, off, key in zip(self.sizes, self.counts, offsets, self.streams) if c]

        def draw() -> list[int]:
            return [off + next(it) for off, c, it in streams for _ in range(c)]

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


class MixedBatchSampler(SourceBatchSampler):
    """Two sources, real (0) then synthetic (1), with ``real_per_batch(real_ratio, batch_size)`` real samples."""

    def __init__(self, n_real: int, n_synthetic: int, batch_size: int, real_ratio: float, seed: int,
                 **kwargs: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.k_real = real_per_batch(real_ratio, batch_size)
        self.k_synthetic = batch_size - self.k_real
        super().__init__([n_real, n_synthetic], [self.k_real, self.k_synthetic], seed, **kwargs)
