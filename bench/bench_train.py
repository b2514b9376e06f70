"""Training-step overhead of segsweep's loop against a bare 20-line loop, and logging's share of wall time.

Both loops run the same model, criterion (the full recipe: combined CE + Dice, class weights, sample weights,
monitors), optimiser and the same batches, held in memory so that data loading does not blur the comparison, and
the same numerics: ``--amp`` (bf16 autocast of the forward pass) and ``--channels-last`` (model and input images)
are off by default, as in ``conf/trainer/default.yaml``, and apply to both loops alike. The loops alternate for
``--rounds`` rounds; the medians are compared. Goals: loop ≤ 1.05× bare, logging ≤ 1 %.

``--model smp`` is segmentation_models_pytorch's ``Unet`` (resnet18 encoder, no pretrained weights), which returns
a bare tensor: the bare loop wraps it as ``{"out": logits}`` for the criterion, as a user's loop would; segsweep's
loop puts it through its output adapter (``models.outputs.standardize``).

    python bench/bench_train.py                 # CPU, default UNet on 8×96×96 crops, float32
    python bench/bench_train.py --model smp --rounds 7
    python bench/bench_train.py --amp --channels-last
    python bench/bench_train.py --device cuda --model deeplabv3 --crop 512 --batch 8 --amp --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from segsweep.config import DatasetMixConfig, LossConfig, OptimConfig, TrainerConfig
from segsweep.data.labels import LabelSet
from segsweep.engine.optim import build_optimizer, build_scheduler
from segsweep.engine.trainer import TrainState, train
from segsweep.losses import SegmentationCriterion
from segsweep.models import DeepLabV3, UNet
from segsweep.tracking.mlflow_writer import MlflowWriter
from segsweep.tracking.storage import MetricAccumulator
from segsweep.tracking.writers import ConsoleWriter, JsonlWriter


def make_batches(n: int, batch: int, crop: int, device: torch.device, real_ratio: float = 0.7) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    n_real = round(real_ratio * batch)
    out = []
    for _ in range(n):
        label = torch.randint(0, 19, (batch, crop, crop), generator=g)
        label[:, :4] = 255
        domain = torch.tensor([0] * n_real + [1] * (batch - n_real))
        out.append({"image": torch.randn(batch, 3, crop, crop, generator=g), "label": label, "source": domain,
                    "loss_weight": torch.where(domain == 0, 1.0, 0.5)})
    return [{k: v.to(device) for k, v in b.items()} for b in out]


def make_model(name: str) -> torch.nn.Module:
    if name == "smp":
        import segmentation_models_pytorch as smp

        return smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=19)
    return UNet(19) if name == "unet" else DeepLabV3(19, width=32)


def build(args, device):
    torch.manual_seed(0)
    model = make_model(args.model).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = torch.rand(19, generator=torch.Generator().manual_seed(1)) + 0.5
    criterion = SegmentationCriterion.from_config(LossConfig(), DatasetMixConfig(), weights.to(device))
    opt_cfg = OptimConfig()
    optimizer = build_optimizer(model, opt_cfg)
    return model, criterion, optimizer, build_scheduler(optimizer, args.iters, opt_cfg)


def bare_loop(args, device, batches) -> float:
    model, criterion, optimizer, scheduler = build(args, device)
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    sync(device)
    t0 = time.perf_counter()
    for i in range(args.iters):
        b = batches[i % len(batches)]
        image = b["image"]
        if args.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = model(image)
        if args.model == "smp":  # a bare tensor of logits
            out = {"out": out}
        loss = criterion(out, b["label"], b["loss_weight"], b["source"]).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    sync(device)
    return time.perf_counter() - t0


class Timed:
    """Wraps a writer (or the accumulator's methods) and adds up the seconds spent in it."""

    spent = 0.0

    def __init__(self, inner):
        self.inner = inner

    def write(self, step, metrics):
        t = time.perf_counter()
        self.inner.write(step, metrics)
        Timed.spent += time.perf_counter() - t

    def close(self):
        self.inner.close()


def segsweep_loop(args, device, batches, tmp: Path) -> tuple[float, float]:
    model, criterion, optimizer, scheduler = build(args, device)
    state = TrainState(model, criterion, optimizer, scheduler)
    mlflow = MlflowWriter(f"sqlite:///{tmp}/mlflow.db", "bench")
    writers = [Timed(ConsoleWriter(args.iters)), Timed(JsonlWriter(tmp / "metrics.jsonl")), Timed(mlflow)]
    # amp and channels_last explicitly: TrainerConfig's dataclass defaults (True, True) are not trainer=default's
    cfg = TrainerConfig(max_iters=args.iters, batch_size=args.batch, eval_every=10**9, log_every=args.log_every,
                        progress_bar="off", amp=args.amp, channels_last=args.channels_last, device=str(device))
    # Time the accumulator too: its add() runs every step, its flush() once per logging period.
    add, flush = MetricAccumulator.add, MetricAccumulator.flush

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                Timed.spent += time.perf_counter() - t
        return wrapper

    MetricAccumulator.add, MetricAccumulator.flush = timed(add), timed(flush)
    Timed.spent = 0.0
    val = [{"image": batches[0]["image"][:2].cpu(), "label": batches[0]["label"][:2].cpu()}]
    try:
        sync(device)
        t0 = time.perf_counter()
        # train() evaluates once at the end; on 2 small images that is well under 1 % of the wall time.
        train(state, iter(batches[i % len(batches)] for i in range(args.iters)), val, cfg, device, writers,
              LabelSet.of([str(c) for c in range(19)]))
        sync(device)
        wall = time.perf_counter() - t0
    finally:
        MetricAccumulator.add, MetricAccumulator.flush = add, flush
    t = time.perf_counter()
    mlflow.close()
    return wall, Timed.spent, time.perf_counter() - t


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="unet", choices=["unet", "deeplabv3", "smp"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast of the forward pass, in both loops")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and images, in both loops")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = make_batches(8, args.batch, args.crop, device)
    bare, ours, logging_share, closes = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(args, device, batches)  # warm-up (allocator, kernels)
        for r in range(args.rounds):
            bare.append(bare_loop(args, device, batches))
            wall, spent, close = segsweep_loop(args, device, batches, Path(tmp) / str(r))
            ours.append(wall)
            logging_share.append(spent / wall)
            closes.append(close)
    b, o = statistics.median(bare), statistics.median(ours)
    ratios = [x / y for x, y in zip(ours, bare)]  # each round's loop against the bare loop run just before it

    def stats(xs: list[float]) -> str:
        ms = [1000 * x / args.iters for x in xs]
        return f"min {min(ms):7.2f}  median {statistics.median(ms):7.2f}  max {max(ms):7.2f} ms/iter  " \
               f"spread {100 * (max(ms) - min(ms)) / statistics.median(ms):4.1f} %"

    print(f"device={device} threads={torch.get_num_threads()} model={args.model} amp={args.amp} "
          f"channels_last={args.channels_last} batch={args.batch} crop={args.crop} iters={args.iters} "
          f"log_every={args.log_every} rounds={args.rounds}")
    print(f"bare 20-line loop     : {stats(bare)}")
    print(f"segsweep train()      : {stats(ours)}")
    print(f"ratio of medians      : {o / b:.3f}x  (goal <= 1.05x); per round min {min(ratios):.3f} median "
          f"{statistics.median(ratios):.3f} max {max(ratios):.3f}")
    print(f"logging (accumulator + console + jsonl + MLflow queue) : {100 * statistics.median(logging_share):.2f} % "
          f"of wall time  (goal <= 1 %)")
    print(f"MLflow drain at close (after training, off the step)   : {1000 * statistics.median(closes):.0f} ms")


if __name__ == "__main__":
    main()
