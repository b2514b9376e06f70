"""Train and validation DataLoaders from the validated data and mix configs."""

from __future__ import annotations

import atexit
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from segsweep import compat
from segsweep.config import DataConfig, DatasetMixConfig
from segsweep.data.labels import LabelSet
from segsweep.data.mixing import SeededBatches, SeededConcat, SourceBatchSampler, SourceDataset
from segsweep.data.paired import DatasetError, PairedSegmentation
from segsweep.data.plan import PlannedSource, batch_counts, plan_sources
from segsweep.data.sources import open_source
from segsweep.data.toycity import ensure_toycity
from segsweep.data.transforms import EvalTransform, TrainTransform
from segsweep.engine.preemption import ignore_stop_signals


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """default_collate, with loss_weight as float32 (Python floats collate to float64)."""
    out = default_collate(batch)
    out["loss_weight"] = out["loss_weight"].float()
    return out


def _kill_workers_at_exit() -> None:
    """At interpreter exit multiprocessing terminates daemonic children with SIGTERM and then joins them without a
    timeout; loader workers ignore SIGTERM (``ignore_stop_signals``), so a worker still alive then (its iterator
    kept by a traceback: a pruned trial, a data error) would hold the process forever. Registered after
    multiprocessing's own exit hook, so it runs first."""
    for p in multiprocessing.active_children():
        if p.daemon:
            p.kill()
            p.join(timeout=5)


def stop_workers(*loaders: DataLoader) -> None:
    """End the loaders' worker processes now, whatever raised (a data error, pruning, a stop signal), so that no
    job is left waiting for them."""
    for loader in loaders:
        compat.stop_loader_workers(loader)


def source_root(p: PlannedSource, data: DataConfig) -> Path:
    """The source's root: its configured one, else (data.toycity) the generated copy of its layout."""
    if p.config.root:
        return Path(str(p.config.root))
    roots = ensure_toycity(data.cache_dir, data.toycity)
    if p.config.layout not in roots:
        raise DatasetError(f"config key 'data.sources.{p.name}.root': null, but the generated ToyCity data has no "
                           f"{p.config.layout}-layout copy (it has {sorted(roots)}; data.toycity.n_synthia > 0 "
                           "writes a SYNTHIA one)")
    return roots[p.config.layout]


@dataclass
class TrainVal:
    """The loaders of one run, and what else was built on the way (for class-weight counting and records)."""

    train_loader: DataLoader
    val_loader: DataLoader
    trained: dict[str, PairedSegmentation]  # name -> training dataset, for the sources with samples in a batch
    val: PairedSegmentation
    plan: list[PlannedSource]
    counts: list[int]  # samples of each planned source per batch
    sampler: SourceBatchSampler


def build_train_val(data: DataConfig, mix: DatasetMixConfig, labels: LabelSet, batch_size: int, seed: int,
                    pin_memory: bool, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> TrainVal:
    """An infinite mixed training loader and a one-pass validation loader (``data.val_source``'s val split).

    With several data-parallel ranks, each gets its own batches of the one mixed sequence and every
    ``world_size``-th validation image (a partition: the ranks' confusion matrices add up to the whole set's).
    Every dataset is opened here, so missing directories and labels stop the run before training starts.
    """
    plan = plan_sources(data, mix)
    counts = batch_counts([p.share for p in plan], batch_size)
    skip = data.skip_mismatched
    trained = {p.name: open_source(p.name, p.config, source_root(p, data), data.train_split, labels, data.resize,
                                   skip) for p, k in zip(plan, counts) if k > 0}
    val_loader, val = eval_loader(data, mix, labels, data.val_split, pin_memory, rank, world_size)

    train_tf = TrainTransform(data.crop_size, data.scale_range, data.hflip)
    used = [(p, k) for p, k in zip(plan, counts) if k > 0]
    parts = [SourceDataset(trained[p.name], p.position, p.loss_weight, train_tf) for p, _ in used]
    sampler = SourceBatchSampler([len(trained[p.name]) for p, _ in used], [k for _, k in used], seed,
                                 streams=[p.position for p, _ in used], start_batch=start_batch, rank=rank,
                                 world_size=world_size)
    workers = data.num_workers
    train_loader = DataLoader(
        SeededConcat(parts), batch_sampler=SeededBatches(sampler), num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals,
        # no worker seeding needed: SeededBatches gives every sample its own augmentation generator
    )
    return TrainVal(train_loader, val_loader, trained, val, plan, counts, sampler)


def eval_loader(data: DataConfig, mix: DatasetMixConfig, labels: LabelSet, split: str, pin_memory: bool = False,
                rank: int = 0, world_size: int = 1) -> tuple[DataLoader, PairedSegmentation]:
    """One ordered pass over ``split`` of ``data.val_source`` (every ``world_size``-th image from ``rank``)."""
    plan = next(p for p in plan_sources(data, mix) if p.name == data.val_source)
    ds = open_source(plan.name, plan.config, source_root(plan, data), split, labels, data.resize,
                     data.skip_mismatched)
    workers = data.num_workers
    if workers > 0:
        atexit.unregister(_kill_workers_at_exit)  # registered once per process, after multiprocessing's hook
        atexit.register(_kill_workers_at_exit)
    loader = DataLoader(
        SourceDataset(ds, plan.position, plan.loss_weight, EvalTransform()), batch_size=data.val_batch_size,
        sampler=range(rank, len(ds), world_size), num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals,
    )
    return loader, ds
