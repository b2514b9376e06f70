"""Checkpoints and resume: a run interrupted after a checkpoint and started again in the same directory ends
exactly as the uninterrupted run, in the same MLflow run."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from segsweep.config import register_configs
from segsweep.engine.checkpoint import load
from segsweep.seeds import run
from segsweep.tracking.mlflow_writer import open_client
from segsweep.tracking.storage import MetricAccumulator

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "trainer.max_iters=12", "trainer.eval_every=6", "trainer.checkpoint_every=6",
        "model.base_channels=4", "model.depth=2"]


def config(tmp: Path, out: str, *extra: str):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return compose("config", overrides=[*TINY, f"data.cache_dir={tmp}/cache", f"output_dir={tmp}/{out}",
                                           f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", *extra])


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, 1])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, workers):
    w = f"data.num_workers={workers}"
    reference = run(config(tmp_path, "straight", w, "mlflow.enabled=false"))

    add = MetricAccumulator.add

    def interrupt_at_8(self, out, iteration, data_time=0.0):
        if iteration == 8:
            raise KeyboardInterrupt  # as a kill would, two iterations after the checkpoint at 6
        add(self, out, iteration, data_time)

    monkeypatch.setattr(MetricAccumulator, "add", interrupt_at_8)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, "resumed", w))
    ckpt = load(tmp_path / "resumed" / "checkpoint.pt")
    assert ckpt["iteration"] == 6
    monkeypatch.setattr(MetricAccumulator, "add", add)

    resumed = run(config(tmp_path, "resumed", w))  # the same command again, as a requeued job runs it

    assert resumed == reference  # the same final mIoU, to the last bit
    a = torch.load(tmp_path / "straight" / "model_final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "model_final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, again = records(tmp_path / "straight" / "metrics.jsonl"), records(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["iteration"] for r in again] == [r["iteration"] for r in straight]  # nothing logged twice
    for x, y in zip(straight, again):
        assert {k: v for k, v in x.items() if "time" not in k} == pytest.approx(
            {k: v for k, v in y.items() if "time" not in k})
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()  # finished: nothing left to resume

    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    assert mlrun.info.run_id == ckpt["mlflow_run_id"] and mlrun.info.status == "FINISHED"
    assert mlrun.data.metrics["val/mIoU"] == pytest.approx(reference)


def test_checkpoint_every_must_be_a_multiple_of_log_every(tmp_path):
    from segsweep.checks import ConfigError
    from segsweep.config import validate

    with pytest.raises(ConfigError, match="trainer.checkpoint_every"):
        validate(config(tmp_path, "x", "trainer.checkpoint_every=4"))
