"""Data-parallel training with 2 CPU processes (torchrun, gloo): rank 0 alone logs and writes, and what it logs
equals a computation in one process on the same samples (both ranks' batches pooled by sums and counts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from segsweep.config import register_configs, validate
from segsweep.data.build import build_train_val
from segsweep.data.labels import label_set
from segsweep.engine.evaluate import evaluate
from segsweep.engine.optim import build_optimizer, build_scheduler
from segsweep.losses import SegmentationCriterion
from segsweep.models import build_model
from segsweep.run import class_weights_for, seed_everything
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "data.toycity.n_real_val=5", "data.val_batch_size=2", "trainer.max_iters=2",
        "trainer.batch_size=3", "trainer.log_every=1", "trainer.eval_every=2", "trainer.num_threads=1",
        "model.base_channels=4", "model.depth=2", "dataset_mix.real_ratio=0.34",
        "dataset_mix.synthetic_loss_weight=0.3"]


def reference(tmp: Path) -> tuple[dict[int, dict[str, float]], float]:
    """Two steps of what 2 ranks do, in this process: rank r's batch of step s is batch 2(s-1)+r of the single
    sequence; DDP's gradient is the mean of the ranks' gradients; rank 0's BatchNorm statistics are kept;
    logged means pool the ranks' sums and counts (written out here in float64)."""
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[*TINY, f"data.cache_dir={tmp}/cache", "output_dir=unused"])
    typed = validate(cfg)
    torch.set_num_threads(1)
    seed_everything(typed.trainer.seed)
    labels = label_set(typed.data.labels)
    model = build_model(typed.model)
    tv = build_train_val(typed.data, typed.dataset_mix, labels, typed.trainer.batch_size, typed.trainer.seed,
                         pin_memory=False)
    train_loader, val_loader = tv.train_loader, tv.val_loader
    class_weight, _ = class_weights_for(typed, tv, labels)
    criterion = SegmentationCriterion.from_config(typed.loss, typed.dataset_mix, class_weight)
    optimizer = build_optimizer(model, typed.optim)
    scheduler = build_scheduler(optimizer, typed.trainer.max_iters, typed.optim)
    batches = iter(train_loader)
    logged = {}
    for step in (1, 2):
        optimizer.zero_grad()
        outs = []
        for rank in (0, 1):
            batch = next(batches)
            kept = [b.clone() for b in model.buffers()]
            out = criterion(model(batch["image"]), batch["label"], batch["loss_weight"], batch["source"])
            (out.total / 2).backward()  # DDP averages the ranks' gradients
            if rank == 1:  # rank 1's running statistics never reach rank 0's model
                for b, k in zip(model.buffers(), kept):
                    b.copy_(k)
            outs.append(out)
        optimizer.step()
        scheduler.step()
        m = {"train/lr": optimizer.param_groups[0]["lr"]}  # logged after the step, as the loop does
        for k in outs[0].terms:
            num = sum(float(o.term_parts[k][0]) for o in outs)
            den = sum(float(o.term_parts[k][1]) for o in outs)
            m[f"train/{k}"] = num / den
        m["train/loss"] = sum(outs[0].weights[k] * m[f"train/{k}"] for k in outs[0].terms)
        for k in outs[0].monitors:
            s = sum(float(o.monitors[k][0]) for o in outs)
            c = sum(float(o.monitors[k][1]) for o in outs)
            if c:
                m[f"train/{k}"] = s / c
        logged[step] = m
    return logged, evaluate(model, val_loader, labels.num_classes, torch.device("cpu")).miou


def test_two_ranks_log_what_one_process_computes_on_the_same_samples(tmp_path):
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *TINY, f"data.cache_dir={tmp_path}/cache", f"hydra.run.dir={run_dir}",
           f"mlflow.tracking_uri={uri}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["iteration"]: r for r in records if "train/loss" in r}
    assert sorted(train) == [1, 2]  # written once, by rank 0
    expected, miou = reference(tmp_path)
    for step in (1, 2):
        assert set(expected[step]) <= set(train[step])
        for k, v in expected[step].items():
            assert train[step][k] == pytest.approx(v, rel=2e-4, abs=1e-6), (step, k)
    # the ranks evaluate halves of the validation set (5 images: 3 and 2); their confusion matrices add up
    (val,) = [r for r in records if "val/mIoU" in r]
    assert val["val/mIoU"] == pytest.approx(miou, abs=2e-3)

    client = open_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])  # one run: rank 0's
    assert run.info.status == "FINISHED" and run.data.tags["segsweep.world_size"] == "2"
    assert run.data.metrics["train/ce_real"] == pytest.approx(expected[2]["train/ce_real"], rel=2e-4)
    assert (run_dir / "model_final.pt").exists()
