"""The iteration-based training loop.

One step: batch to the device (non-blocking) -> forward (bf16 autocast with ``amp``; the output put in one shape
by ``models.outputs``) -> criterion (named terms,
sample-weighted, monitors; always float32) -> backward -> optimiser and lr step -> running sums on the device.
Only a logging step reads numbers back to the host; evaluation runs every ``eval_every`` iterations and at the
end. ``amp``, ``channels_last`` and ``compile`` act on every device, the CPU included (CPU autocast runs bf16,
inductor compiles C++), so each of them runs in the CPU tests; whether they pay off on a CPU is a config choice
(``conf/trainer/default.yaml``).

Data-parallel (``world.size > 1``): the model is wrapped in DistributedDataParallel, logging steps all-reduce
the sums, and every decision that ends training (a non-finite loss, a stop request, pruning) is taken by all
ranks at the same step, so that none waits forever in a collective the others have left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from segsweep.config import TrainerConfig
from segsweep.data.labels import LabelSet
from segsweep.engine.distributed import SINGLE_PROCESS, World, any_rank, barrier, buffers_from_rank0
from segsweep.engine.evaluate import EvalResult, evaluate
from segsweep.losses import SegmentationCriterion
from segsweep.models.outputs import standardize
from segsweep.tracking.storage import MetricAccumulator
from segsweep.tracking.writers import Writer


class Preempted(Exception):
    """Training stopped early because the job was asked to (SLURM's time-limit signal, SIGTERM); the
    checkpoint of ``iteration`` is written, and the same command resumes from it."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"stopped at iteration {iteration} on request; checkpoint written")
        self.iteration = iteration


class StoppedByRank0(Exception):
    """On the other ranks: rank 0 ended training (e.g. its trial was pruned)."""


@dataclass
class TrainState:
    model: torch.nn.Module
    criterion: SegmentationCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    iteration: int = 0  # iterations completed


def autocast_for(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` (CUDA, and CPU: oneDNN bf16 kernels), or nothing. The loss always leaves it:
    the criterion computes in float32 whatever the logits' dtype."""
    if amp and torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def train(state: TrainState, train_loader: Iterable, val_loader: DataLoader, cfg: TrainerConfig,
          device: torch.device, writers: list[Writer], labels: LabelSet,
          on_eval: Callable[[int, dict[str, float]], None] | None = None,
          checkpoint: Callable[[int], None] | None = None,
          stop_requested: Callable[[], bool] | None = None, world: World = SINGLE_PROCESS) -> EvalResult:
    """Train until ``cfg.max_iters``; returns the last evaluation on the validation split.

    ``on_eval(iteration, metrics)`` runs after every evaluation (a sweep reports to its pruner there; it may
    raise to stop the run); ``checkpoint(iteration)`` every ``cfg.checkpoint_every`` iterations.
    ``stop_requested()`` is asked at every logging step; when it says yes (on any rank) the run checkpoints and
    raises ``Preempted``. Pass ``on_eval``, ``checkpoint`` and writers on rank 0 only."""
    use_cuda = device.type == "cuda"
    amp, channels_last = cfg.amp, cfg.channels_last
    autocast = autocast_for(device, amp)
    model, criterion, optimizer, scheduler = state.model, state.criterion, state.optimizer, state.scheduler
    if channels_last:  # a no-op when the caller already converted it (run.py does, before restoring a checkpoint)
        model.to(memory_format=torch.channels_last)
    forward, loss_fn = model, criterion
    if world.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if use_cuda else None)
    if cfg.compile:  # the model and the loss (its fused autograd Function included) as two compiled graphs
        forward, loss_fn = torch.compile(forward), torch.compile(criterion)
    storage = MetricAccumulator(device)
    result: EvalResult | None = None

    def emit(step: int, metrics: dict[str, float]) -> None:
        for w in writers:
            w.write(step, metrics)

    model.train()
    batches = iter(train_loader)
    while state.iteration < cfg.max_iters:
        t0 = time.perf_counter()
        batch = to_device(next(batches), device, channels_last)
        data_time = time.perf_counter() - t0

        with autocast:  # any model's output, as {"out", "aux"} logits at the labels' size
            outputs = standardize(forward(batch["image"]), batch["label"].shape[-2:])
        loss = loss_fn(outputs, batch["label"], batch["loss_weight"], batch["source"])
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        scheduler.step()
        state.iteration += 1
        step = state.iteration
        storage.add(loss, step, data_time)

        last = step == cfg.max_iters
        stop = False
        if step % cfg.log_every == 0 or last:
            # raises on a non-finite loss; a stop request is shared here, the step's only host read
            metrics, stop = storage.flush(stop_requested is not None and stop_requested())
            metrics = {f"train/{k}": v for k, v in metrics.items()}
            metrics["train/lr"] = optimizer.param_groups[0]["lr"]
            emit(step, metrics)
        if step % cfg.eval_every == 0 or last:
            t_eval = time.perf_counter()
            buffers_from_rank0(model)
            result = evaluate(model, val_loader, labels.num_classes, device, amp, channels_last)
            metrics = result.metrics(labels)
            emit(step, metrics)
            storage.period_start += time.perf_counter() - t_eval  # step times exclude evaluation
            error = None
            if on_eval is not None:
                try:
                    on_eval(step, metrics)
                except Exception as e:  # e.g. optuna.TrialPruned: every rank stops here
                    error = e
            if any_rank(error is not None, device):
                raise error or StoppedByRank0(f"rank 0 stopped training at iteration {step}")
        if checkpoint is not None and not last and (
                stop or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
            checkpoint(step)
        if stop and not last:
            barrier()  # a rank that ends first may take the others down (torchrun, srun) before the checkpoint
            raise Preempted(step)
    assert result is not None
    return result
