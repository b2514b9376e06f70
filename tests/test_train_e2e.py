"""A few training iterations through Hydra's compose API and through ``python train.py`` in a subprocess,
with outputs, data cache and MLflow store in temporary directories."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from segsweep.config import register_configs
from segsweep.seeds import run
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny"]  # a tiny toycity and a few iterations: seconds on a CPU
TINY_UNET = ["model.base_channels=4", "model.depth=2"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_composed(tmp_path: Path, cache_dir: Path, *overrides: str) -> tuple[float, Path, str]:
    register_configs()
    out = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        model = [] if any(o.startswith("model=") for o in overrides) else TINY_UNET
        cfg = compose("config", overrides=[*TINY, *model, f"data.cache_dir={cache_dir}", f"output_dir={out}",
                                           f"mlflow.tracking_uri={uri}", *overrides])
    return run(cfg), out, uri


def test_compose_run_logs_split_monitors_and_returns_miou(tmp_path, cache_dir):
    value, out, uri = run_composed(tmp_path, cache_dir, "loss=combined", "weighting=sqrt_inv_freq")
    assert 0.0 <= value <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert [r["iteration"] for r in train] == [3, 6]
    for key in ("train/ce", "train/dice", "train/ce_real", "train/ce_synthetic", "train/dice_real",
                "train/dice_synthetic", "train/lr"):
        assert key in train[-1], key
    # The logged loss is the optimised one: alpha * ce + beta * dice (no aux head here).
    last = train[-1]
    assert last["train/loss"] == pytest.approx(0.6 * last["train/ce"] + 0.4 * last["train/dice"], rel=1e-5)
    evals = [r for r in records if "val/mIoU" in r]
    assert [r["iteration"] for r in evals] == [3, 6] and evals[-1]["val/mIoU"] == pytest.approx(value)
    for name in ("class_weights.txt", "config_resolved.yaml", "model_final.pt", "plots/training_curves.png",
                 "plots/iou_per_class.png", "plots/confusion.png"):
        assert (out / name).is_file(), name
    assert "traffic light" in (out / "class_weights.txt").read_text()

    client = open_client(uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["loss.ce_weight"] == "0.6" and mlrun.data.params["weighting.method"] == "sqrt_inv_freq"
    history = client.get_metric_history(mlrun.info.run_id, "train/ce_synthetic")
    assert [m.step for m in history] == [3, 6]
    assert mlrun.data.metrics["val/mIoU"] == pytest.approx(value)
    assert any(k.startswith("val/IoU/") for k in mlrun.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"config_resolved.yaml", "class_weights.txt", "metrics.jsonl", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(mlrun.info.run_id, "plots")}
    assert "plots/training_curves.png" in plots


def test_aux_head_terms_real_only_and_synthetic_weight_zero(tmp_path, cache_dir):
    _, out, _ = run_composed(tmp_path, cache_dir, "model.aux_head=true", "dataset_mix=real_only", "loss=ce",
                             "weighting=median_freq", "mlflow.enabled=false")
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in line][-1]
    assert last["train/loss"] == pytest.approx(last["train/ce"] + 0.4 * last["train/ce_0"], rel=1e-5)
    assert "train/ce_real" in last and "train/ce_synthetic" not in last  # no synthetic sample: monitor absent

    _, out, _ = run_composed(tmp_path / "b", cache_dir, "dataset_mix.synthetic_loss_weight=0", "loss=dice",
                             "mlflow.enabled=false")
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in line][-1]
    assert "train/dice_synthetic" in last  # weight 0 still has its (unweighted) monitor


def test_cli_subprocess_records_run_in_mlflow(tmp_path, cache_dir):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "SEGSWEEP_CACHE": str(cache_dir)}
    cmd = [sys.executable, str(ROOT / "train.py"), "loss=combined", "weighting=sqrt_inv_freq", *TINY, *TINY_UNET,
           f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp_path}/out"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "out" / "train.log").read_text()
    # the console line: the loss, its terms, and each domain's unweighted ce/dice monitors
    assert re.search(r"\] \[6/6\] eta 0:00 loss \d\.\d{3} ce \d\.\d{3} dice \d\.\d{3} real \d\.\d{3}/\d\.\d{3} "
                     r"syn \d\.\d{3}/\d\.\d{3} lr ", log), log
    assert "final: val/mIoU" in log
    client = open_client(uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    assert mlrun.info.status == "FINISHED"
    for key in ("train/loss", "train/ce", "train/dice", "train/ce_real", "train/ce_synthetic", "train/dice_real",
                "train/dice_synthetic", "train/lr", "val/mIoU"):
        assert key in mlrun.data.metrics, key


def test_cli_bad_value_stops_before_training_with_the_key(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "dataset_mix.real_ratio=1.7",
                           f"hydra.run.dir={tmp_path}/out", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "config key 'dataset_mix.real_ratio': expected a number in [0, 1], got 1.7" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr  # one clear line, not a stack trace
    assert not (tmp_path / "m.db").exists()  # nothing was started


@pytest.mark.parametrize("overrides", [
    ["weighting=none"], ["weighting=inverse_freq"], ["weighting=effective_num"], ["weighting=enet"],
    ["weighting=median_freq", "weighting.source=real", "weighting.fraction=0.5"],
    ["dataset_mix=synthetic_only", "weighting.source=synthetic"],
    ["dataset_mix.reduction=weight_normalized", "loss.dice_pooling=batch", "loss.squared_denominator=true"],
    ["optim=sgd", "optim.schedule=cosine"],
    ["model=deeplabv3", "model.width=4", "model.depth=50"],
], ids=lambda o: " ".join(o))
def test_every_option_trains(tmp_path, cache_dir, overrides):
    value, out, _ = run_composed(tmp_path, cache_dir, "trainer.max_iters=2", "trainer.log_every=1",
                                 "mlflow.enabled=false", *overrides)
    assert 0.0 <= value <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 2 and all(v > 0 for v in losses)


def test_cityscapes_gta5_config_reads_the_real_layouts(tmp_path, cache_dir):
    """data=cityscapes_gta5 pointed at generated data in the Cityscapes and GTA5 layouts."""
    from segsweep.config import ToyCityConfig
    from segsweep.data.toycity import ensure_toycity

    toy = ToyCityConfig(height=64, width=128, n_real_train=12, n_real_val=4, n_synthetic=12)
    roots = ensure_toycity(cache_dir, toy)
    cityscapes, gta5 = roots["cityscapes"], roots["gta5"]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[
            "data=cityscapes_gta5", f"data.real_root={cityscapes}", f"data.synthetic_root={gta5}",
            f"data.cache_dir={cache_dir}", "data.resize=[32,64]", "data.crop_size=[32,32]", "data.num_workers=0",
            "trainer.max_iters=2", "trainer.batch_size=4", "trainer.log_every=1", "trainer.progress_bar=off",
            "model.base_channels=4", "model.depth=2", "mlflow.enabled=false", f"output_dir={tmp_path}/run"])
    assert 0.0 <= run(cfg) <= 1.0


def test_slurm_job_id_is_recorded_on_the_run(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-7")
    _, _, uri = run_composed(tmp_path, cache_dir, "trainer.max_iters=1", "trainer.log_every=1")
    client = open_client(uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    assert mlrun.data.tags["segsweep.slurm_job_id"] == "4240_2"  # the array job and task, as sacct names it
    assert mlrun.data.tags["segsweep.slurm_node"] == "gpu-node-7"


def test_launcher_presets_extend_the_plugin_configs(monkeypatch):
    monkeypatch.setenv("SLURM_PARTITION", "gpu")
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        slurm = compose("config", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True).hydra.launcher
        local = compose("config", overrides=["hydra/launcher=local_parallel"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and local._target_.endswith("LocalLauncher")
    assert (slurm.partition, slurm.account, slurm.gpus_per_node, slurm.max_num_timeout) == ("gpu", None, 1, 3)
    assert slurm.submitit_folder.endswith("/.submitit/%j") and local.timeout_min == 120
