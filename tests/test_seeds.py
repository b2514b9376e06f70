"""Repeats with common random numbers: seed s gives every configuration the same start, batches and augmentations;
a trial with several seeds reports per seed, is told their mean and keeps every seed's values."""

import json
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir

import segsweep.run as run_module
from segsweep.config import register_configs, validate
from segsweep.engine.distributed import SINGLE_PROCESS
from segsweep.seeds import run, run_seeds, search_seeds
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "data.crop_size=[48,48]", "trainer.max_iters=8", "trainer.log_every=4", "trainer.eval_every=4",
        "model.base_channels=4", "model.depth=2"]


def config(tmp: Path, out: str, *extra: str):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return compose("config", overrides=[*TINY, f"data.cache_dir={tmp}/cache", f"output_dir={tmp}/{out}",
                                           f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", *extra])


class Captured(Exception):
    pass


def capture_start(monkeypatch, tmp_path, out, *overrides):
    """What run.py hands the training loop for a config: initial weights and the first batches, unaugmented by
    anything but the seed. Training itself is cut before the first step."""
    seen = {}

    def fake_train(state, train_loader, *args, **kwargs):
        seen["weights"] = {k: v.clone() for k, v in state.model.state_dict().items()}
        it = iter(train_loader)
        seen["batches"] = [next(it) for _ in range(3)]
        raise Captured

    monkeypatch.setattr(run_module, "train", fake_train)
    with pytest.raises(Captured):
        run(config(tmp_path, out, "mlflow.enabled=false", *overrides))
    return seen


def test_seed_gives_every_configuration_the_same_start_batches_and_augmentations(tmp_path, monkeypatch):
    a = capture_start(monkeypatch, tmp_path, "a", "trainer.seed=5", "loss=ce", "weighting=none",
                      "dataset_mix.synthetic_loss_weight=0.1")
    b = capture_start(monkeypatch, tmp_path, "b", "trainer.seed=5", "loss=combined", "weighting=sqrt_inv_freq",
                      "dataset_mix.synthetic_loss_weight=0.9", "loss.ce_weight=0.3")
    c = capture_start(monkeypatch, tmp_path, "c", "trainer.seed=6", "loss=ce", "weighting=none",
                      "dataset_mix.synthetic_loss_weight=0.1")
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert not all(torch.equal(a["weights"][k], c["weights"][k]) for k in a["weights"])  # the seed matters
    for x, y, z in zip(a["batches"], b["batches"], c["batches"]):
        assert torch.equal(x["image"], y["image"])  # same samples, same crops, scales and flips
        assert torch.equal(x["label"], y["label"])
        assert torch.equal(x["source"], y["source"])
        assert not torch.equal(x["loss_weight"], y["loss_weight"])  # the configurations do differ
        assert not torch.equal(x["image"], z["image"])
    assert sorted(a["batches"][0]["source"].tolist()) == [0, 0, 0, 1]  # mixed batches (real ratio 0.7 of 4)


@pytest.mark.unit
def test_search_seeds():
    typed = validate(config(Path("/tmp"), "x", "study.repeats=3", "trainer.seed=4"))
    assert search_seeds(typed.study, typed.trainer.seed) == [4, 5, 6]
    typed = validate(config(Path("/tmp"), "x", "study.repeats=2", "study.seeds=[11,7,9]"))
    assert search_seeds(typed.study, typed.trainer.seed) == [11, 7]


def fake_run_one(log):
    """Stands in for run._run: writes metrics.jsonl as the trainer does, reports, completes; value = f(seed)."""

    def run_one(cfg, typed, world, device, trial):
        seed, out = typed.trainer.seed, Path(typed.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        value = 0.5 + seed / 100
        records = [{"iteration": 4, "train/ce_real": 1.0 + seed, "train/ce_synthetic": 2.0 + seed},
                   {"iteration": 4, "val/mIoU": value - 0.1, "val/IoU/road": 0.9},
                   {"iteration": 8, "train/ce_real": 0.5 + seed, "train/ce_synthetic": 0.7 + seed},
                   {"iteration": 8, "val/mIoU": value, "val/IoU/road": 0.95, "val/IoU/person": seed / 10}]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        log.append((seed, str(out), typed.mlflow.run_name, typed.study.parent_run_id))
        if trial is not None:
            mlflow_id = None
            if typed.study.parent_run_id:  # a seed's run, child of the job's run
                client = open_client(typed.mlflow.tracking_uri)
                exp = client.get_experiment_by_name(typed.mlflow.experiment_name)
                mlflow_id = client.create_run(exp.experiment_id, run_name=typed.mlflow.run_name,
                                              tags={"mlflow.parentRunId": typed.study.parent_run_id}).info.run_id
            trial.set_attrs(output_dir=str(out), **({"mlflow_run_id": mlflow_id} if mlflow_id else {}))
            trial.report(4, value - 0.1)
            trial.report(8, value)
            trial.complete([value])
        return value

    return run_one


def study_trial(tmp_path, **user_attrs):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    if user_attrs:
        study.enqueue_trial({}, user_attrs=user_attrs)
    trial = study.ask()
    keys = ["study.name=s", f"study.storage='{storage}'", f"study.trial_id={trial._trial_id}",
            f"study.trial_number={trial.number}", "study.heartbeat_interval=null"]
    return study, trial, keys


def test_trial_with_two_seeds_reports_per_seed_index_and_is_told_the_mean(tmp_path):
    study, trial, keys = study_trial(tmp_path)
    parent = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = parent.create_experiment("segsweep")
    parent_id = parent.create_run(exp, run_name="study").info.run_id
    cfg = config(tmp_path, "trial_0", "study.repeats=2", "study.seeds=[3,8]", *keys,
                 f"study.parent_run_id={parent_id}")
    log = []
    value = run_seeds(cfg, validate(cfg), SINGLE_PROCESS, torch.device("cpu"), fake_run_one(log))

    assert value == pytest.approx((0.53 + 0.58) / 2)
    assert [s for s, *_ in log] == [3, 8]
    assert [Path(d).name for _, d, *_ in log] == ["seed_3", "seed_8"]
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(value)
    # seed j reports at j * max_iters + iteration: the pruner compares seed index with seed index
    assert t.intermediate_values == pytest.approx({4: 0.43, 8: 0.53, 12: 0.48, 16: 0.58})
    ua = t.user_attrs
    assert ua["stage"] == "search" and ua["seeds"] == [3, 8]
    assert ua["seed_values"] == pytest.approx({"3": 0.53, "8": 0.58})
    assert ua["seed_iou"]["8"] == pytest.approx({"road": 0.95, "person": 0.8})
    assert ua["seed_monitors"]["3"] == pytest.approx({"ce_real": 3.5, "ce_synthetic": 3.7})
    # MLflow: the job's run (child of the study's) holds the mean; each seed's run is its child
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    job = client.get_run(ua["mlflow_run_id"])
    assert job.data.tags["mlflow.parentRunId"] == parent_id and job.info.run_name == "trial-0"
    assert job.data.metrics["val/mIoU"] == pytest.approx(value)
    assert job.info.status == "FINISHED"
    by_seed = client.get_metric_history(job.info.run_id, "val/mIoU_by_seed")
    assert sorted((m.step, round(m.value, 6)) for m in by_seed) == [(3, 0.53), (8, 0.58)]
    assert [(name, p) for *_, name, p in log] == [("trial-0-seed-3", job.info.run_id),
                                                  ("trial-0-seed-8", job.info.run_id)]
    seed_runs = {k: client.get_run(r) for k, r in ua["seed_runs"].items()}
    assert {r.info.run_name for r in seed_runs.values()} == {"trial-0-seed-3", "trial-0-seed-8"}
    assert all(r.data.tags["mlflow.parentRunId"] == job.info.run_id for r in seed_runs.values())

    # a requeued job does not train finished seeds again
    (tmp_path / "trial_0" / "seed_8" / "seed_result.json").unlink()
    log.clear()
    cfg_plain = config(tmp_path, "trial_0", "study.repeats=2", "study.seeds=[3,8]", "mlflow.enabled=false")
    again = run_seeds(cfg_plain, validate(cfg_plain), SINGLE_PROCESS, torch.device("cpu"), fake_run_one(log))
    assert [s for s, *_ in log] == [8] and again == pytest.approx(value)


def test_confirmation_trial_trains_its_own_fresh_seed_unpruned(tmp_path):
    study, trial, keys = study_trial(tmp_path, stage="confirm", seeds=[1000], confirm_config="top1")
    cfg = config(tmp_path, "trial_c", "study.repeats=3", "mlflow.enabled=false", *keys)
    log = []
    value = run_seeds(cfg, validate(cfg), SINGLE_PROCESS, torch.device("cpu"), fake_run_one(log))
    assert [s for s, *_ in log] == [1000] and value == pytest.approx(10.5)
    assert Path(log[0][1]).name == "trial_c"  # one seed: the trial's own directory, as before
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert t.intermediate_values == {}  # never reported, so never pruned
    assert t.user_attrs["seed_values"] == {"1000": 10.5} and t.user_attrs["stage"] == "confirm"
