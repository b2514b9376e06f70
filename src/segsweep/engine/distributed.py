"""Data-parallel training: one process per GPU (NCCL) or per CPU worker (gloo).

The processes come from ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or from a
submitit job with ``tasks_per_node > 1`` (each SLURM task runs the same Hydra job; submitit's
``TorchDistributedEnvironment`` turns the SLURM variables into torchrun's). With one process nothing here
does anything, so single-process code paths stay plain.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("segsweep")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, checkpoints, evaluates into MLflow and talks to the Optuna trial."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()


def _export_submitit_env() -> None:
    """Inside a multi-task submitit job, set torchrun's variables from SLURM's (no-op otherwise)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # the GPU is chosen below by local rank; SLURM may show every task all of the node's GPUs
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group when there are several processes; returns the world and this rank's device."""
    _export_submitit_env()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size)
    log.info("data-parallel: rank %d of %d on %s (%s)", rank, size, device, dist.get_backend())
    return World(rank, size, local_rank), device


def _several() -> bool:
    """Is this process one of several in an initialised process group?"""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum or max over the ranks; the identity with one process."""
    if _several():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def buffers_from_rank0(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, which each rank updates from its own batches) to
    every rank, so that the ranks evaluate the same model on their shares of the validation set."""
    if _several():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0's checkpoint is on disk before all of them stop)."""
    if _several():
        dist.barrier()


def from_rank0(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank (e.g. its run directory, when each rank's Hydra made its own)."""
    if not _several():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on any: decisions that stop training must be taken together."""
    if not _several():
        return flag
    return bool(all_reduce_(torch.tensor([float(flag)], device=device), "max").item())
