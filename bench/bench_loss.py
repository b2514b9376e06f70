"""Forward+backward cost of the full loss recipe against baselines measured in the same run.

    python bench/bench_loss.py [--device cuda] [--threads 2] [--sizes 96x96 256x512]

Rows: plain class-weighted F.cross_entropy (the baseline), the full recipe (CE + per-image Dice, class weights,
sample weights, monitors), the same with batch-pooled Dice, CE + a per-class Python-loop Dice as in the seed
documents, and MONAI's DiceCELoss when monai is installed. Ratios are against the baseline of the same size.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from segsweep.losses import SegmentationCriterion

C = 19


def seed_loop_loss(logits, target, weight, smooth=1.0):
    """0.6 CE + 0.4 Dice written as in the seeds: one Dice per class, pooled over the batch, a loop over classes."""
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    valid = (target != 255).unsqueeze(1)
    probs = F.softmax(logits, dim=1) * valid
    onehot = F.one_hot(torch.where(valid.squeeze(1), target, 0), C).permute(0, 3, 1, 2) * valid
    B = logits.shape[0]
    probs_flat, targets_flat = probs.view(B, C, -1), onehot.view(B, C, -1)
    dice_loss = 0.0
    for c in range(C):
        inter = (probs_flat[:, c] * targets_flat[:, c]).sum()
        union = probs_flat[:, c].sum() + targets_flat[:, c].sum()
        dice_loss = dice_loss + weight[c] * (1 - (2 * inter + smooth) / (union + smooth))
    return 0.6 * ce + 0.4 * dice_loss / weight.sum()


def make_batch(B, H, W, device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, C, H, W, generator=g).to(device)
    target = torch.randint(0, C, (B, H, W), generator=g)
    target[torch.rand(B, H, W, generator=g) < 0.1] = 255
    weight = torch.rand(C, generator=g) + 0.5
    sample_weight = torch.tensor([1.0] * (B - B // 4) + [0.5] * (B // 4))
    domain = torch.tensor([0] * (B - B // 4) + [1] * (B // 4))
    return logits, target.to(device), weight.to(device), sample_weight.to(device), domain.to(device)


def fwd_bwd(fn, logits):
    x = logits.detach().requires_grad_(True)
    fn(x).backward()
    return x.grad


def build_rows(B, H, W, device, dice_ce_cls):
    logits, target, weight, sw, domain = make_batch(B, H, W, device)
    image = SegmentationCriterion(ce_weight=0.6, dice_weight=0.4, class_weight=weight).to(device)
    pooled = SegmentationCriterion(ce_weight=0.6, dice_weight=0.4, class_weight=weight, dice_pooling="batch").to(device)
    ce_only = SegmentationCriterion(ce_weight=1.0, dice_weight=0.0, class_weight=weight).to(device)
    rows = {
        "F.cross_entropy (weighted)": lambda x: F.cross_entropy(x, target, weight=weight, ignore_index=255),
        "recipe CE+Dice (image)": lambda x: image({"out": x}, target, sw, domain).total,
        "recipe CE+Dice (batch)": lambda x: pooled({"out": x}, target, sw, domain).total,
        "recipe CE only": lambda x: ce_only({"out": x}, target, sw, domain).total,
        "seed loop CE+Dice": lambda x: seed_loop_loss(x, target, weight),
    }
    if dice_ce_cls is not None:
        # MONAI has no ignore index: ignored pixels are mapped to class 0, close enough for timing
        try:
            monai_loss = dice_ce_cls(to_onehot_y=True, softmax=True, weight=weight)
        except TypeError:  # MONAI before 1.2 named it ce_weight (CE only)
            monai_loss = dice_ce_cls(to_onehot_y=True, softmax=True, ce_weight=weight)
        t_monai = torch.where(target == 255, 0, target).unsqueeze(1)
        rows["MONAI DiceCELoss"] = lambda x: monai_loss(x, t_monai)
    return logits, rows


def time_rows(logits, rows, threads: int, rounds: int, round_time: float) -> dict[str, float]:
    """Median seconds per fwd+bwd of every row; rows alternate within each round, so a slow spell of a shared
    machine hits all of them alike."""
    timers = {}
    for name, fn in rows.items():
        for _ in range(3):  # warm-up (allocator, first-call dispatch)
            fwd_bwd(fn, logits)
        timers[name] = benchmark.Timer("fwd_bwd(fn, logits)", num_threads=threads,
                                       globals={"fwd_bwd": fwd_bwd, "fn": fn, "logits": logits})
    number = max(1, int(round_time / next(iter(timers.values())).timeit(3).median))
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.timeit(number).median)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", nargs="+", default=["96x96", "256x512"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--round-time", type=float, default=0.1, help="seconds of the baseline per row and round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, B={args.batch}, C={C}")
    try:
        from monai.losses import DiceCELoss
    except ImportError:
        DiceCELoss = None
        print("monai not importable: the DiceCELoss row is skipped")
    for size in args.sizes:
        H, W = (int(v) for v in size.split("x"))
        logits, rows = build_rows(args.batch, H, W, device, DiceCELoss)
        times = time_rows(logits, rows, args.threads, args.rounds, args.round_time)
        base = times["F.cross_entropy (weighted)"]
        print(f"\n{size}  ({args.batch}x{C}x{H}x{W}), median of {args.rounds} interleaved rounds")
        print(f"{'':30s} {'ms/iter':>9s} {'ratio':>7s}")
        for name, t in times.items():
            print(f"{name:30s} {t * 1e3:9.2f} {t / base:7.2f}x")


if __name__ == "__main__":
    main()
