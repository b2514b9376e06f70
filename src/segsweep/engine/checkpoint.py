"""Checkpoints written atomically: a crash mid-write never leaves a truncated file under the final name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from segsweep.io import atomic_path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Synced to disk before the rename: after a node's power cut the checkpoint is the old one or the new one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)  # never unpickles code


def training_state(state, mlflow_run_id: str | None) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly: weights, optimiser and lr schedule, iteration, RNG.
    (Augmentations are seeded per sample from the batch number, and the sampler restarts at the iteration.)"""
    out = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
           "scheduler": state.scheduler.state_dict(), "iteration": state.iteration,
           "torch_rng": torch.get_rng_state(), "mlflow_run_id": mlflow_run_id}
    if torch.cuda.is_available():
        out["cuda_rng"] = torch.cuda.get_rng_state_all()
    return out


def restore(state, ckpt: dict[str, Any]) -> None:
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.iteration = ckpt["iteration"]
    torch.set_rng_state(ckpt["torch_rng"])
    if "cuda_rng" in ckpt and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
