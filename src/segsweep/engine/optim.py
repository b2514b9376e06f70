"""Optimiser and learning-rate schedule (linear warm-up, then poly / cosine / constant)."""

from __future__ import annotations

import math

import torch

from segsweep.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: the usual choice for segmentation networks.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(it: int, max_iters: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based)."""
    if it < cfg.warmup_iters:
        return cfg.warmup_factor + (1 - cfg.warmup_factor) * it / cfg.warmup_iters
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters))
    if cfg.schedule == "poly":
        return (1 - progress) ** cfg.poly_power
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, max_iters: int, cfg: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, max_iters, cfg))
