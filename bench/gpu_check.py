"""The GPU check: every GPU path of segsweep measured once, printed as ONE JSON object on stdout.

    python bench/gpu_check.py                    # on a CUDA machine, full sizes (a few minutes on one H100/H200)
    python bench/gpu_check.py --only a,b         # some parts only
    python bench/gpu_check.py --smoke            # tiny sizes on any device (the CPU too): every code path runs

Parts (each one's failure is reported in its own entry; the others still run):

(a) ``loss``: the full loss recipe (α·CE + β·Dice, class weights, sample weights, monitors) forward+backward
    against class-weighted ``F.cross_entropy`` at 8×19×512×1024: times, ratio, and the achieved bytes/s (the
    least traffic a softmax loss needs: read the logits forward, read them again and write their gradient
    backward) against the device's copy bandwidth measured in the same run.
(b) ``train_step``: DeepLabV3-ResNet-50 (aux head) at 8×3×512×1024, bf16 autocast, channels_last: segsweep's loop
    (``engine.trainer.train``) eager and compiled, against a bare torchvision-reference-style loop (autocast
    forward, CE + 0.5 aux CE, backward, SGD step, poly lr) and a bare loop with segsweep's criterion, on the same
    model, optimiser and batches (held on the device). Images/s, peak memory, ratios (goal: loop ≤ 1.05× bare).
(c) ``host_sync``: the loop's steps under ``torch.cuda.set_sync_debug_mode("error")`` except its logging and
    evaluation (eager and compiled; the first step, which compiles, is not checked).
(d) ``end_to_end``: ``python train.py model=deeplabv3 trainer=gpu`` for 50 iterations on toycity at 512×1024 (a
    subprocess; the data are generated first, outside the timing).
(e) ``ddp_nccl``: the same on 2 ranks with torchrun (NCCL) when 2 GPUs are present; skipped otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import make_batches  # noqa: E402

import segsweep.engine.trainer as trainer_module  # noqa: E402
from segsweep.config import DatasetMixConfig, LossConfig, OptimConfig, TrainerConfig  # noqa: E402
from segsweep.data.labels import LabelSet  # noqa: E402
from segsweep.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from segsweep.engine.trainer import TrainState, train  # noqa: E402
from segsweep.losses import SegmentationCriterion  # noqa: E402
from segsweep.models import DeepLabV3Config, build_model  # noqa: E402
from segsweep.tracking.storage import MetricAccumulator  # noqa: E402

C = 19
LABELS = LabelSet.of([str(c) for c in range(C)])


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------------------------- (a)

def check_loss(args, device: torch.device) -> dict:
    B, H, W = args.loss_shape
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, C, H, W, generator=g).to(device)
    target = torch.randint(0, C, (B, H, W), generator=g)
    target[torch.rand(B, H, W, generator=g) < 0.1] = 255
    target = target.to(device)
    weight = (torch.rand(C, generator=g) + 0.5).to(device)
    sw = torch.tensor([1.0] * (B - B // 4) + [0.5] * (B // 4), device=device)
    source = torch.tensor([0] * (B - B // 4) + [1] * (B // 4), device=device)  # the source's position
    criterion = SegmentationCriterion(ce_weight=0.6, dice_weight=0.4, class_weight=weight, num_classes=C).to(device)

    def ce():
        x = logits.detach().requires_grad_(True)
        F.cross_entropy(x, target, weight=weight, ignore_index=255).backward()

    def recipe():
        x = logits.detach().requires_grad_(True)
        criterion({"out": x}, target, sw, source).total.backward()

    src = torch.empty_like(logits)
    dst = torch.empty_like(logits)

    def copy():
        dst.copy_(src)

    reps, warm = args.reps, 3
    t_copy = timed(copy, device, warm, reps)
    t_ce = timed(ce, device, warm, reps)
    peak_reset(device)
    t_recipe = timed(recipe, device, warm, reps)
    n = logits.numel() * logits.element_size()
    least = 3 * n + 2 * target.numel() * target.element_size()  # logits read twice, gradient written, labels
    copy_bps = 2 * n / t_copy  # read + write
    return {
        "shape": [B, C, H, W], "ms_ce": round(1000 * t_ce, 3), "ms_recipe": round(1000 * t_recipe, 3),
        "recipe_vs_ce": round(t_recipe / t_ce, 3),
        "least_bytes": least, "recipe_GBps": round(least / t_recipe / 1e9, 1), "ce_GBps": round(least / t_ce / 1e9, 1),
        "copy_GBps": round(copy_bps / 1e9, 1), "recipe_vs_copy_bandwidth": round(least / t_recipe / copy_bps, 3),
        "peak_GiB_recipe": peak_gib(device),
    }


# ----------------------------------------------------------------------------------------------------------- (b)

def build(args, device: torch.device, iters: int, loss: str):
    torch.manual_seed(0)
    # built as train.py builds model=deeplabv3 (the config node through models.build_model)
    from omegaconf import OmegaConf

    node = OmegaConf.structured(DeepLabV3Config(num_classes=C, depth=50, width=args.width, aux_head=True))
    model = build_model(node).to(device)
    model = model.to(memory_format=torch.channels_last)
    weight = (torch.rand(C, generator=torch.Generator().manual_seed(1)) + 0.5).to(device)
    criterion = SegmentationCriterion.from_config(LossConfig(), DatasetMixConfig(), weight, C).to(device)
    opt_cfg = OptimConfig(name="sgd", lr=0.01, warmup_iters=0)  # torchvision's reference: SGD, poly lr
    optimizer = build_optimizer(model, opt_cfg)
    return model, criterion, optimizer, build_scheduler(optimizer, iters, opt_cfg), weight


def bare_loop(args, device, batches, loss: str) -> tuple[float, float | None]:
    """torchvision references/segmentation/train.py's inner loop, on batches already on the device."""
    iters = args.warmup + args.iters
    model, criterion, optimizer, scheduler, weight = build(args, device, iters, loss)
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def tv_criterion(out, target):  # torchvision: CE on "out" + 0.5 CE on "aux" (here with the class weights)
        losses = [F.cross_entropy(out["out"], target, weight=weight, ignore_index=255)]
        losses += [0.5 * F.cross_entropy(a, target, weight=weight, ignore_index=255) for a in out.get("aux", [])]
        return sum(losses)

    peak_reset(device)
    t0 = 0.0
    for i in range(iters):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        b = batches[i % len(batches)]
        image = b["image"].contiguous(memory_format=torch.channels_last)
        with autocast:
            out = model(image)
            if loss == "torchvision":
                total = tv_criterion(out, b["label"])
        if loss != "torchvision":
            total = criterion(out, b["label"], b["loss_weight"], b["source"]).total
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
    sync(device)
    return (time.perf_counter() - t0) / args.iters, peak_gib(device)


class Periods:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def write(self, step: int, metrics: dict) -> None:
        self.rows.append((step, metrics))

    def close(self) -> None:
        pass


def segsweep_loop(args, device, batches, compile: bool, steps=None, log_every=None):
    iters = steps or args.warmup + args.iters
    model, criterion, optimizer, scheduler, _ = build(args, device, iters, "segsweep")
    cfg = TrainerConfig(max_iters=iters, batch_size=args.batch, log_every=log_every or args.log_every,
                        eval_every=10**9, progress_bar="off", amp=True, channels_last=True, compile=compile,
                        device=str(device))
    rec = Periods()
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    train(TrainState(model, criterion, optimizer, scheduler), iter(batches[i % len(batches)] for i in range(iters)),
          [], cfg, device, [rec], LABELS)
    sync(device)
    wall = time.perf_counter() - t0
    return rec, wall, peak_gib(device)


def check_train_step(args, device: torch.device) -> dict:
    batches = make_batches(2, args.batch, args.crop[0], device) if args.crop[0] == args.crop[1] else \
        _rect_batches(args, device)
    out: dict = {"model": f"DeepLabV3-ResNet-50 (width {args.width}, aux head)", "batch": args.batch,
                 "crop": args.crop, "bf16": True, "channels_last": True}
    tv, tv_mem = bare_loop(args, device, batches, "torchvision")
    bare, bare_mem = bare_loop(args, device, batches, "segsweep")
    out["bare_torchvision_loss"] = {"s_per_step": round(tv, 4), "images_per_s": round(args.batch / tv, 2),
                                    "peak_GiB": tv_mem}
    out["bare_segsweep_loss"] = {"s_per_step": round(bare, 4), "images_per_s": round(args.batch / bare, 2),
                                 "peak_GiB": bare_mem}
    for name, comp in (("segsweep_eager", False), ("segsweep_compiled", True)):
        log(f"(b) {name}")
        rec, wall, mem = segsweep_loop(args, device, batches, comp)
        # per-step time of each logging period after the warm-up ones (train/time is the period's mean step time)
        times = [m["train/time"] for s, m in rec.rows if "train/time" in m and s > args.warmup]
        step = statistics.median(times)
        out[name] = {"s_per_step": round(step, 4), "images_per_s": round(args.batch / step, 2), "peak_GiB": mem,
                     "vs_bare_same_loss": round(step / bare, 3), "vs_bare_torchvision_loss": round(step / tv, 3),
                     "warmup_and_compile_s": round(wall - step * args.iters, 1)}
    out["goal"] = "segsweep_eager.vs_bare_same_loss <= 1.05"
    return out


def _rect_batches(args, device):
    g = torch.Generator().manual_seed(0)
    h, w = args.crop
    out = []
    for _ in range(2):
        label = torch.randint(0, C, (args.batch, h, w), generator=g)
        label[:, :4] = 255
        n_real = round(0.7 * args.batch)
        source = torch.tensor([0] * n_real + [1] * (args.batch - n_real))
        out.append({"image": torch.randn(args.batch, 3, h, w, generator=g), "label": label, "source": source,
                    "loss_weight": torch.where(source == 0, 1.0, 0.5)})
    return [{k: v.to(device) for k, v in b.items()} for b in out]


# ----------------------------------------------------------------------------------------------------------- (c)

@contextlib.contextmanager
def sync_mode(mode: str | int, device: torch.device):
    if device.type != "cuda":
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def check_host_sync(args, device: torch.device) -> dict:
    """Steps 2.. run with sync debug mode "error" (a synchronising call raises); flush and evaluate may sync."""
    batches = _rect_batches(args, device)
    out: dict = {"cuda_sync_debug_mode": device.type == "cuda"}
    flush, evaluate = MetricAccumulator.flush, trainer_module.evaluate

    def allowed(fn):
        def wrapper(*a, **k):
            with sync_mode(0, device):
                return fn(*a, **k)
        return wrapper

    MetricAccumulator.flush, trainer_module.evaluate = allowed(flush), allowed(evaluate)
    try:
        for name, comp in (("eager", False), ("compiled", True)):
            steps, log_every = 2 * args.log_every, args.log_every

            def stream(steps=steps):
                for i in range(steps):
                    # the loop asks for a batch at the start of each step: from step 2 on, syncs raise
                    if device.type == "cuda":
                        torch.cuda.set_sync_debug_mode("error" if i >= 1 else 0)
                    yield batches[i % len(batches)]

            iters = steps
            model, criterion, optimizer, scheduler, _ = build(args, device, iters, "segsweep")
            cfg = TrainerConfig(max_iters=iters, batch_size=args.batch, log_every=log_every, eval_every=iters,
                                progress_bar="off", amp=True, channels_last=True, compile=comp, device=str(device))
            val = [{"image": batches[0]["image"][:2], "label": batches[0]["label"][:2]}]
            try:
                train(TrainState(model, criterion, optimizer, scheduler), stream(), val, cfg, device, [Periods()],
                      LABELS)
                out[name] = {"steps_checked": steps - 1, "syncs_outside_logging": 0}
            except RuntimeError as e:  # sync debug mode "error" raises RuntimeError at the synchronising call
                out[name] = {"error": str(e)[:500], "where": traceback.format_exc(limit=-6)[-2000:]}
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
    finally:
        MetricAccumulator.flush, trainer_module.evaluate = flush, evaluate
    return out


# ------------------------------------------------------------------------------------------------------- (d), (e)

def train_cmd(args, run_dir: Path, cache: Path, ranks: int) -> list[str]:
    h, w = args.e2e_size
    prefix = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={ranks}"]
    over = [
        "model=deeplabv3", "trainer=gpu", f"trainer.max_iters={args.e2e_iters}",
        f"trainer.eval_every={args.e2e_iters}", "trainer.log_every=10", "trainer.checkpoint_every=0",
        "trainer.progress_bar=off", f"data.toycity.height={h}", f"data.toycity.width={w}",
        f"data.toycity.n_real_train={args.e2e_images}", "data.toycity.n_real_val=8",
        f"data.toycity.n_synthetic={args.e2e_images}", f"data.crop_size=[{h},{min(w, 2 * h)}]",
        f"data.num_workers={args.workers}", f"data.cache_dir={cache}", f"hydra.run.dir={run_dir}",
        f"mlflow.tracking_uri=sqlite:///{run_dir.parent}/mlflow-{run_dir.name}.db",
    ]
    if args.smoke:
        over += [f"trainer.batch_size={args.batch}", f"model.width={args.width}", "trainer.log_every=2",
                 f"trainer.device={args.device}"]
    return [*prefix, str(ROOT / "train.py"), *over]


def run_train(args, tmp: Path, name: str, ranks: int) -> dict:
    run_dir, cache = tmp / name, tmp / "cache"
    cmd = train_cmd(args, run_dir, cache, ranks)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    # the data first (generation is not what is measured): a 1-iteration run on the CPU writes them
    gen = train_cmd(args, tmp / f"{name}-gen", cache, 1)
    gen = [a for a in gen if not a.startswith(("trainer.max_iters", "trainer.eval_every", "trainer.device",
                                               "trainer.log_every", "model=", "model."))]
    gen += ["trainer.max_iters=1", "trainer.eval_every=1", "trainer.log_every=1", "trainer.device=cpu",
            "model.base_channels=4", "model.depth=1", "mlflow.enabled=false", "data.num_workers=0",
            "trainer.batch_size=2", "data.crop_size=[32,32]"]
    t0 = time.perf_counter()
    subprocess.run(gen, cwd=tmp, env=env, capture_output=True, text=True, timeout=args.timeout)
    generated = time.perf_counter() - t0
    log(f"({name}) data ready in {generated:.0f} s; training")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    out: dict = {"command": " ".join(cmd[cmd.index(str(ROOT / "train.py")):]), "ranks": ranks,
                 "returncode": proc.returncode, "wall_s": round(wall, 1), "data_generation_s": round(generated, 1)}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        train_rows = [r for r in rows if "train/loss" in r]
        val = [r for r in rows if "val/mIoU" in r]
        if train_rows:
            last = train_rows[-1]
            out.update({"iterations": last.get("iteration"), "last_train_loss": last.get("train/loss"),
                        "s_per_step_last_period": last.get("train/time"),
                        "data_s_per_step_last_period": last.get("train/data_time")})
        if val:
            out["val_mIoU"] = val[-1]["val/mIoU"]
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr[-3000:]
    return out


def check_end_to_end(args, device, tmp: Path) -> dict:
    return run_train(args, tmp, "e2e", 1)


def check_ddp(args, device, tmp: Path) -> dict:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        return {"skipped": f"needs 2 CUDA devices, found {n}"}
    return run_train(args, tmp, "ddp", 2)


# -----------------------------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check that every part runs (any device)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--only", default="a,b,c,d,e", help="comma-separated parts")
    p.add_argument("--iters", type=int, default=None, help="(b) timed iterations per loop")
    p.add_argument("--timeout", type=int, default=900, help="seconds per train.py subprocess")
    args = p.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if args.smoke:
        args.loss_shape, args.batch, args.crop, args.width = (2, 32, 64), 2, [64, 64], 8
        args.warmup, args.iters, args.log_every, args.reps = 2, args.iters or 2, 2, 3
        args.e2e_size, args.e2e_iters, args.e2e_images, args.workers = (64, 128), 4, 4, 0
    else:
        args.loss_shape, args.batch, args.crop, args.width = (8, 512, 1024), 8, [512, 1024], 64
        args.warmup, args.iters, args.log_every, args.reps = 10, args.iters or 30, 10, 20
        args.e2e_size, args.e2e_iters, args.e2e_images, args.workers = (512, 1024), 50, 48, 8
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__, "smoke": args.smoke,
    }
    parts = {"a": ("loss", check_loss), "b": ("train_step", check_train_step), "c": ("host_sync", check_host_sync),
             "d": ("end_to_end", check_end_to_end), "e": ("ddp_nccl", check_ddp)}
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for key in [k.strip() for k in args.only.split(",") if k.strip()]:
            name, fn = parts[key]
            log(f"({key}) {name}")
            t0 = time.perf_counter()
            try:
                res = fn(args, device, Path(tmp)) if key in "de" else fn(args, device)
            except Exception as e:  # one part's failure is reported, the others still run
                res = {"error": f"{type(e).__name__}: {e}"[:1000], "traceback": traceback.format_exc()[-3000:]}
            res["part_s"] = round(time.perf_counter() - t0, 1)
            if "error" in res or res.get("returncode", 0) != 0 or any(
                    isinstance(v, dict) and "error" in v for v in res.values()):
                failed.append(name)
            result[name] = res
    result["failed"] = failed
    print(json.dumps(result, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
