"""Step time of the real training loop for each combination of ``trainer.amp`` / ``channels_last`` / ``compile``.

The loop (``segsweep.engine.trainer.train``) runs the model, the full loss recipe and AdamW on the same in-memory
batches for every combination; combinations alternate for ``--rounds`` rounds and each one's step time is the
minimum over its logging periods (the first period, with warm-up and compilation, left out), which is robust
to other load on the machine. Ratios are against float32 / contiguous / eager measured in the same run.

    python bench/bench_trainer_options.py                       # CPU, default UNet, 8×96×96 (trainer=default)
    python bench/bench_trainer_options.py --compile --threads 1
    python bench/bench_trainer_options.py --device cuda --model deeplabv3 --crop 512 --batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_train import make_batches, sync

from segsweep.config import DatasetMixConfig, LossConfig, OptimConfig, TrainerConfig
from segsweep.engine.optim import build_optimizer, build_scheduler
from segsweep.engine.trainer import TrainState, train
from segsweep.losses import SegmentationCriterion
from segsweep.models import DeepLabV3, UNet


class PeriodTimes:
    def __init__(self) -> None:
        self.times: list[float] = []

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if "train/time" in metrics:
            self.times.append(metrics["train/time"])

    def close(self) -> None:
        pass


def run(args, device: torch.device, batches: list[dict], amp: bool, channels_last: bool, compile: bool):
    torch.manual_seed(0)
    model = (UNet(19) if args.model == "unet" else DeepLabV3(19)).to(device)
    criterion = SegmentationCriterion.from_config(LossConfig(), DatasetMixConfig(),
                                                  (torch.rand(19) + 0.5).to(device), 19)
    opt_cfg = OptimConfig()
    optimizer = build_optimizer(model, opt_cfg)
    state = TrainState(model, criterion, optimizer, build_scheduler(optimizer, args.iters, opt_cfg))
    cfg = TrainerConfig(max_iters=args.iters, batch_size=args.batch, log_every=args.log_every, eval_every=10**9,
                        progress_bar="off", amp=amp, channels_last=channels_last, compile=compile)
    timer = PeriodTimes()
    sync(device)
    t0 = time.perf_counter()
    train(state, iter(batches[i % len(batches)] for i in range(args.iters)), [], cfg, device, [timer],
          [str(c) for c in range(19)])
    sync(device)
    return timer.times[1:], time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", choices=["unet", "deeplabv3"], default="unet")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--iters", type=int, default=30, help="iterations per combination and round")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also the compiled combinations")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    combos = [(False, False, False), (True, False, False), (False, True, False), (True, True, False)]
    if args.compile:
        combos += [(False, False, True), (True, True, True)]
    batches = make_batches(4, args.batch, args.crop, device)
    periods: dict[tuple, list[float]] = {c: [] for c in combos}
    first_wall: dict[tuple, float] = {}
    for _ in range(args.rounds):
        for c in combos:
            times, wall = run(args, device, batches, *c)
            periods[c] += times
            first_wall.setdefault(c, wall - args.iters * min(times))  # warm-up (and compile) of a fresh process
    base = min(periods[combos[0]])
    rows = {}
    for c in combos:
        name = "+".join(n for n, on in zip(("bf16", "channels_last", "compile"), c) if on) or "fp32"
        best = min(periods[c])
        rows[name] = {"step_ms_min": round(1000 * best, 1), "step_ms_median": round(1000 * statistics.median(
            periods[c]), 1), "vs_fp32": round(best / base, 3), "first_run_overhead_s": round(first_wall[c], 1)}
    print(json.dumps({"device": str(device), "model": args.model, "batch": args.batch, "crop": args.crop,
                      "threads": torch.get_num_threads(), "rounds": args.rounds, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
