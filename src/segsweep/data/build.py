"""Train and validation DataLoaders from the validated data and mix configs."""

from __future__ import annotations

import atexit
import multiprocessing
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from segsweep.config import DataConfig, DatasetMixConfig
from segsweep.data.cityscapes import CityscapesSegmentation, DatasetError
from segsweep.data.gta5 import GTA5Segmentation
from segsweep.data.mixing import REAL, SYNTHETIC, DomainDataset, MixedBatchSampler, SeededBatches, SeededConcat
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
    """End the loaders' worker processes now, whatever raised (a data error, pruning, a stop signal): torch would
    only end them when the iterator is garbage-collected, which a traceback can postpone past interpreter exit.
    Workers that do not leave within torch's join timeout (they ignore SIGTERM) are killed."""
    for loader in loaders:
        it = getattr(loader, "_iterator", None)  # the persistent workers' iterator (torch keeps it there)
        loader._iterator = None
        if it is None or not hasattr(it, "_workers"):
            continue
        it._shutdown_workers()
        for w in it._workers:
            if w.is_alive():
                w.kill()
                w.join(timeout=5)


def resolve_roots(data: DataConfig) -> tuple[Path, Path]:
    """(Cityscapes-layout root, GTA5-layout root): the generated ToyCity when configured, else the given ones."""
    if data.toycity is not None:
        return ensure_toycity(data.cache_dir, data.toycity)
    return Path(str(data.real_root)), Path(str(data.synthetic_root))


def build_train_val(data: DataConfig, mix: DatasetMixConfig, batch_size: int, seed: int,
                    pin_memory: bool, start_batch: int = 0, rank: int = 0,
                    world_size: int = 1) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """An infinite mixed training loader, a one-pass real validation loader, and the raw datasets.

    With several data-parallel ranks, each gets its own batches of the one mixed sequence and every
    ``world_size``-th validation image (a partition: the ranks' confusion matrices add up to the whole set's).

    The dict holds ``real_train``, ``synthetic`` (None when no batch uses synthetic samples), ``real_val`` (loader
    datasets, e.g. for class-frequency counting), ``train_sampler`` and ``real_per_batch``.
    """
    real_root, synthetic_root = resolve_roots(data)
    needed = [("data.real_root", real_root, "the Cityscapes root, holding leftImg8bit/ and gtFine/")]
    if mix.real_ratio < 1:
        needed.append(("data.synthetic_root", synthetic_root, "the GTA5 root, holding images/ and labels/"))
    for key, root, what in needed:
        if not root.is_dir():
            raise DatasetError(f"config key '{key}': directory {root} does not exist (expected {what})")
    # Every dataset is opened here, so missing directories and labels stop the run before training starts.
    skip = data.skip_mismatched
    real_train = CityscapesSegmentation(real_root, data.train_split, data.resize, skip)
    real_val = CityscapesSegmentation(real_root, data.val_split, data.resize, skip)
    synthetic = GTA5Segmentation(synthetic_root, data.resize, skip) if mix.real_ratio < 1 else None

    train_tf = TrainTransform(data.crop_size, data.scale_range, data.hflip)
    parts = [DomainDataset(real_train, REAL, mix.real_loss_weight, train_tf)]
    if synthetic is not None:
        parts.append(DomainDataset(synthetic, SYNTHETIC, mix.synthetic_loss_weight, train_tf))
    sampler = MixedBatchSampler(len(real_train), len(synthetic) if synthetic is not None else 0, batch_size,
                                mix.real_ratio, seed, start_batch=start_batch, rank=rank, world_size=world_size)
    workers = data.num_workers
    if workers > 0:
        atexit.unregister(_kill_workers_at_exit)  # registered once per process, after multiprocessing's hook
        atexit.register(_kill_workers_at_exit)
    train_loader = DataLoader(
        SeededConcat(parts), batch_sampler=SeededBatches(sampler), num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals,
        # no worker seeding needed: SeededBatches gives every sample its own augmentation generator
    )
    val_loader = DataLoader(
        DomainDataset(real_val, REAL, mix.real_loss_weight, EvalTransform()), batch_size=data.val_batch_size,
        sampler=range(rank, len(real_val), world_size), num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals,
    )
    info = {"real_train": real_train, "synthetic": synthetic, "real_val": real_val, "train_sampler": sampler,
            "real_per_batch": sampler.k_real}
    return train_loader, val_loader, info
