"""Fixed cost of one trial (everything but training) against the trial's training time. Goal: ≤ 3 s per trial.

Phases, each timed the way a trial's job runs them (medians of ``--repeats``):
  process         a fresh ``python`` importing what a job imports (torch, hydra, mlflow, optuna, segsweep), exiting:
                  paid per trial by a subprocess launcher (submitit local / SLURM), not by the basic launcher;
  compose         Hydra composes and validates the trial's config;
  data open       the label set, the toycity loaders (data already generated) and the class weights (already
                  cached);
  model           building the model (``models.build_model``) and its output check (one forward pass on zeros);
  MLflow set-up   the child run created, params and two artifacts logged, and the run closed after training;
and, for scale, the default study's trial: 400 iterations at one thread, measured here on 20 iterations.

    python bench/bench_trial_overhead.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = "import torch, hydra, mlflow, optuna, segsweep.run"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    start = median_time(lambda: subprocess.run([sys.executable, "-c", IMPORTS], check=True), args.repeats)
    bare = median_time(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.repeats)

    import torch
    from hydra import compose, initialize_config_dir

    from segsweep.config import register_configs, validate
    from segsweep.data.build import build_train_val, stop_workers
    from segsweep.data.labels import label_set
    from segsweep.engine.optim import build_optimizer
    from segsweep.losses import SegmentationCriterion
    from segsweep.models import build_model, check_outputs, standardize
    from segsweep.run import class_weights_for, monitor_groups
    from segsweep.tracking.mlflow_writer import MlflowWriter, flatten  # noqa: F401
    from segsweep.tracking.run_info import effective_params

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("SEGSWEEP_CACHE", str(Path(tmp) / "cache"))
        register_configs()
        overrides = ["output_dir=" + tmp, f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", "trainer.num_threads=1",
                     "weighting=sqrt_inv_freq", "loss.dice_weight=null", "loss.ce_weight=0.6"]

        def composed():
            with initialize_config_dir(config_dir=str(ROOT / "conf")):
                return validate(compose("config", overrides=overrides))

        cfg = composed()
        labels = label_set(cfg.data.labels, cfg.data.eval_classes)
        tv = build_train_val(cfg.data, cfg.dataset_mix, labels, 8, 0, False)  # generates toycity once (not a
        class_weights_for(cfg, tv, labels)  # per-trial cost) and fills the class-weight cache once
        t_compose = median_time(composed, args.repeats)

        def open_data():
            labels = label_set(cfg.data.labels, cfg.data.eval_classes)
            tv = build_train_val(cfg.data, cfg.dataset_mix, labels, cfg.trainer.batch_size, 0, False)
            weights, _ = class_weights_for(cfg, tv, labels)
            return tv, weights

        def model():
            m = build_model(cfg.model)
            check_outputs(m, labels.num_classes)
            return m

        t_data = median_time(open_data, args.repeats)
        t_model = median_time(model, args.repeats)
        MlflowWriter(cfg.mlflow.tracking_uri, "bench").close()  # create the store once, as the sweeper does
        Path(tmp, "a.txt").write_text("x")

        def mlflow_run():
            w = MlflowWriter(cfg.mlflow.tracking_uri, "bench", tags={"mlflow.parentRunId": "x"})
            w.log_params(effective_params(cfg))
            w.log_artifact(Path(tmp, "a.txt"))
            w.log_artifact(Path(tmp, "a.txt"), "plots")
            w.close()

        t_mlflow = median_time(mlflow_run, args.repeats)

        tv, weights = open_data()
        net = model()
        groups, source_groups = monitor_groups(tv.plan)
        crit = SegmentationCriterion.from_config(cfg.loss, cfg.dataset_mix, weights, labels.num_classes, groups,
                                                 source_groups)
        opt = build_optimizer(net, cfg.optim)
        batches = iter(tv.train_loader)

        def step():
            b = next(batches)
            out = standardize(net(b["image"]), b["label"].shape[-2:])
            loss = crit(out, b["label"], b["loss_weight"], b["source"]).total
            opt.zero_grad()
            loss.backward()
            opt.step()

        try:
            step()
            t_step = median_time(step, 20)
        finally:
            stop_workers(tv.train_loader, tv.val_loader)

    fixed_in_process = t_compose + t_data + t_model + t_mlflow
    fixed_subprocess = fixed_in_process + start
    train_time = 400 * t_step
    print(f"torch threads=1  repeats={args.repeats}  (data generated and class weights cached beforehand)")
    print(f"process (start, imports, exit)    : {1000 * start:7.0f} ms   (bare python: {1000 * bare:.0f} ms)")
    print(f"compose + validate                : {1000 * t_compose:7.0f} ms")
    print(f"data open + class weights (cached): {1000 * t_data:7.0f} ms")
    print(f"model (build + output check)      : {1000 * t_model:7.0f} ms")
    print(f"MLflow child run set-up + close   : {1000 * t_mlflow:7.0f} ms")
    print(f"fixed cost, in-process launcher   : {fixed_in_process:7.2f} s   (goal <= 3 s)")
    print(f"fixed cost, subprocess launcher   : {fixed_subprocess:7.2f} s   (goal <= 3 s)")
    print(f"training, default study trial     : {train_time:7.1f} s   (400 iterations x {1000 * t_step:.0f} ms)")
    print(f"fixed / training                  : {fixed_in_process / train_time:7.1%} in-process, "
          f"{fixed_subprocess / train_time:.1%} subprocess")


if __name__ == "__main__":
    main()
