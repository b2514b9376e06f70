"""Label sets and sources by config alone: a 5-class label set end to end (class weights, per-class IoU names in
MLflow, the study report), three sources with per-source monitors and weights checked against the logged terms,
and the bad inputs of sources and shares, each one line naming the key."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from segsweep.checks import ConfigError
from segsweep.config import register_configs, validate
from segsweep.seeds import run
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
FIVE = ["flat", "construction", "nature", "human", "vehicle"]
# Cityscapes ids (what ToyCity's files hold) -> the five classes; everything else is unlabelled
ID_MAP = {7: "flat", 8: "flat", 11: "construction", 12: "construction", 13: "construction", 17: "construction",
          19: "construction", 20: "construction", 21: "nature", 22: "nature", 23: "nature", 24: "human",
          25: "human", 26: "vehicle", 27: "vehicle", 28: "vehicle", 31: "vehicle", 32: "vehicle", 33: "vehicle"}


def compose_cfg(tmp_path, *overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return compose("config", overrides=["debug=tiny", "model.base_channels=4", "model.depth=2",
                                            f"data.cache_dir={tmp_path}/cache", f"output_dir={tmp_path}/run",
                                            *overrides])


@pytest.fixture
def five_class_conf(tmp_path) -> Path:
    """A config dir (for --config-dir) with data=five: ToyCity read through a 5-class label set of its own."""
    conf = tmp_path / "conf"
    (conf / "data" / "labels").mkdir(parents=True)
    (conf / "data" / "labels" / "five.yaml").write_text(OmegaConf.to_yaml(
        {"classes": FIVE, "colors": [[128, 64, 128], [70, 70, 70], [107, 142, 35], [220, 20, 60], [0, 0, 142]],
         "rare": ["human"]}))
    data = OmegaConf.load(ROOT / "conf" / "data" / "toycity.yaml")
    data.defaults = [{"labels": "five"}, "_self_"]
    data.name = "five"
    for src in data.sources.values():
        src.label_map = {k: v for k, v in ID_MAP.items()}
        src.unknown = "ignore"  # GTA5's licence plates (34)
    (conf / "data" / "five.yaml").write_text(OmegaConf.to_yaml(data))
    (conf / "sweeps").mkdir()
    (conf / "sweeps" / "five_baselines.yaml").write_text("""# @package _global_
defaults:
  - smoke
  - _self_
hydra:
  sweeper:
    study_name: five
    n_trials: 0
    params:
      dataset_mix.synthetic_loss_weight: interval(0.0, 1.0)
      loss.ce_weight: interval(0.2, 1.0)
study:
  confirm: {top_k: 0, seeds: 2}
  baselines:
    plain_ce: [loss=ce, loss.ce_weight=1.0, weighting=none]
    combined: [loss=combined, loss.ce_weight=0.6, weighting=inverse_freq]
""")
    return conf


def test_a_five_class_label_set_speaks_its_names_in_the_run_mlflow_and_report(tmp_path, five_class_conf):
    env = {**os.environ, "SEGSWEEP_CACHE": str(tmp_path / "cache")}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "--config-dir", str(five_class_conf),
                           "sweeps=five_baselines", "data=five", f"hydra.sweep.dir={tmp_path}/multirun",
                           f"mlflow.tracking_uri={uri}"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    # the class-weight table of a run: the five names, counted from the remapped labels
    tables = sorted((tmp_path / "multirun").rglob("class_weights.txt"))
    assert tables
    table = tables[0].read_text()
    rows = [line.split()[0] for line in table.splitlines()[1:] if line and not line.startswith("total")]
    assert rows == FIVE
    assert "road" not in table and "traffic" not in table
    # MLflow: per-class IoU under the five names, nothing of the Cityscapes table
    client = open_client(uri)
    exp = client.get_experiment_by_name("segsweep")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "val/mIoU" in r.data.metrics]
    assert runs
    names = {k[len("val/IoU/"):] for r in runs for k in r.data.metrics if k.startswith("val/IoU/")}
    assert names and names <= set(FIVE) and {"flat", "construction"} <= names
    # a study without a search names no "best search trial": its confirmed best configuration, with its interval
    (parent,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("segsweep.role") == "study"]
    assert "best_trial" not in parent.data.tags and parent.data.tags["best_config"] in ("plain_ce", "combined")
    best = parent.data.tags["best_config"]
    assert parent.data.tags["best_config_mean"] == f"{parent.data.metrics[f'confirm/{best}/mean']:.4f}"
    assert {"confirm/plain_ce/mean", "confirm/plain_ce/ci_low", "confirm/combined/std",
            "confirm/combined/diff_vs_plain_ce"} <= set(parent.data.metrics)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    # the study report: per-class table in the label set's order, its rare class marked
    study = optuna.load_study(study_name="five", storage=f"sqlite:///{tmp_path}/multirun/optuna.db")
    assert all(t.user_attrs["labels"]["classes"] == FIVE for t in study.trials)
    md = (tmp_path / "multirun" / "study_summary" / "report.md").read_text()
    per_class = md.split("### Per-class IoU")[1].split("###")[0]
    listed = re.findall(r"^\| (flat|construction|nature|human|vehicle)( \(rare\))? \|", per_class, re.M)
    assert [n for n, _ in listed] == [n for n in FIVE if n in names]
    assert ("human", " (rare)") in listed or "human" not in names


def test_three_sources_weighted_and_monitored_each(tmp_path):
    cfg = compose_cfg(tmp_path, "data=toycity_synthia", "data.toycity.n_synthia=12", "trainer.batch_size=8",
                      "trainer.max_iters=2", "trainer.log_every=1", "mlflow.enabled=false",
                      "dataset_mix.sources.synthia.loss_weight=0.2", "loss=ce", "loss.ce_weight=1.0",
                      "loss.dice_weight=0.0")
    run(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/ce" in r]
    assert len(steps) == 2
    for r in steps:
        # a batch of 8 at real_ratio 0.7: 6 real, then the synthetic 0.3 split equally, 1 gta5 + 1 synthia
        # (cumulative half-up rounding: 5.6 -> 6, 6.8 -> 7, 8)
        real, gta5, synthia = r["train/ce_real"], r["train/ce_gta5"], r["train/ce_synthia"]
        assert r["train/ce_synthetic"] == pytest.approx((gta5 + synthia) / 2, rel=1e-5)  # the domain: both
        # the optimised CE: (1/N) sum_i w_i L_i with w = 1.0 (real), 0.5 (gta5: the synthetic default), 0.2
        assert r["train/ce"] == pytest.approx((6 * real * 1.0 + gta5 * 0.5 + synthia * 0.2) / 8, rel=1e-5)
        assert "train/ce_real" in r and r["train/loss"] == pytest.approx(r["train/ce"], rel=1e-6)


@pytest.mark.parametrize("overrides,words", [
    (["dataset_mix.sources.real.share=0.5", "dataset_mix.sources.synthetic.share=0.4"],
     r"config key 'dataset_mix.sources.\*.share': expected shares of \['real', 'synthetic'\] that sum to 1, got 0.9"),
    (["dataset_mix.sources.real.share=1.0"],
     r"'dataset_mix.sources': expected a share for every source once one has a share; missing \['synthetic'\]"),
    (["dataset_mix.sources.gta.loss_weight=0.3"],
     r"'dataset_mix.sources': expected names from data.sources \['real', 'synthetic'\], got \['gta'\]"),
    (["weighting.source=[real,sim]"],
     r"config key 'weighting.source': expected all, a domain \(real, synthetic\) or names from data.sources "
     r"\['real', 'synthetic'\], got \['sim'\]"),
    (["dataset_mix=real_only", "weighting.source=synthetic"], "config key 'weighting.source'"),
    (["trainer.batch_size=8", "dataset_mix.real_ratio=0.95"], "dataset_mix.sources.synthetic.share"),
    (["data=own", "data.val_source=nope"], "data.val_source"),
    (["data.eval_classes=synthia99"], "data.eval_classes"),
    (["data.labels.rare=[road,unicorn]"], r"data.labels.rare': expected names from data.labels.classes, "
                                          r"got \['unicorn'\]"),
    (["data.sources.real.domain=synthetic"], "data.sources.real.domain"),
])
def test_bad_sources_and_shares_name_the_key(tmp_path, overrides, words):
    if "data=own" in overrides:
        overrides = [o for o in overrides if o != "data=own"]
    with pytest.raises(ConfigError, match=words):
        validate(compose_cfg(tmp_path, *overrides))


def test_shares_and_weights_per_source_resolve_from_the_domains_or_explicitly(tmp_path):
    from segsweep.data.plan import batch_counts, plan_sources

    with pytest.raises(ConfigError, match=r"'dataset_mix.sources.gta5.share': expected a share that gives the "
                                          r"source at least one sample in a batch of trainer.batch_size=4, got 0.15"):
        validate(compose_cfg(tmp_path, "data=toycity_synthia"))  # 4 * 0.85 = 3.4 -> 3: gta5 would get none
    typed = validate(compose_cfg(tmp_path, "data=toycity_synthia", "dataset_mix.synthetic_loss_weight=0.4",
                                 "trainer.batch_size=8"))
    plan = plan_sources(typed.data, typed.dataset_mix)
    assert [(p.name, p.domain, p.share, p.loss_weight) for p in plan] == [
        ("real", "real", 0.7, 1.0), ("gta5", "synthetic", pytest.approx(0.15), 0.4),
        ("synthia", "synthetic", pytest.approx(0.15), 0.4)]
    assert batch_counts([p.share for p in plan], 8) == [6, 1, 1] and batch_counts([0.5, 0.5], 5) == [3, 2]
    typed = validate(compose_cfg(tmp_path, "data=toycity_synthia", "dataset_mix.sources.real.share=0.5",
                                 "dataset_mix.sources.gta5.share=0.5", "dataset_mix.sources.synthia.share=0",
                                 "dataset_mix.sources.gta5.loss_weight=0.9"))
    plan = plan_sources(typed.data, typed.dataset_mix)
    assert [(p.name, p.share, p.loss_weight) for p in plan] == [("real", 0.5, 1.0), ("gta5", 0.5, 0.9),
                                                                 ("synthia", 0.0, 0.5)]


def test_a_study_searches_each_synthetic_sources_weight_with_an_smp_model(tmp_path):
    """sweeps=three_sources on the generated three layouts (tiny): each source's weight is a searched parameter,
    every trial logs each source's monitors, and the evaluation runs over the SYNTHIA-16 subset."""
    from needs import require

    require("segmentation_models_pytorch", 'pip install torch==2.14.1 torchvision==0.29.1 -e ".[models]"')
    env = {**os.environ, "SEGSWEEP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=three_sources", "data=toycity_synthia", "debug=tiny",
         "data.toycity.n_synthia=12", "trainer.batch_size=8", "hydra/launcher=basic", "hydra.sweeper.n_jobs=1",
         "hydra.sweeper.n_trials=2", "study.confirm.top_k=0", "study.baselines=null", "mlflow.plots=false",
         "model.encoder_name=resnet18", f"hydra.sweep.dir={tmp_path}/multirun",
         f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    study = optuna.load_study(study_name="three_sources", storage=f"sqlite:///{tmp_path}/multirun/optuna.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    for t in trials:
        assert {"dataset_mix.sources.gta5.loss_weight", "dataset_mix.sources.synthia.loss_weight"} <= set(t.params)
        metrics = [json.loads(line) for line in (Path(t.user_attrs["output_dir"]) / "metrics.jsonl").read_text()
                   .splitlines()]
        last = [r for r in metrics if "train/loss" in r][-1]
        assert {"train/ce_gta5", "train/ce_synthia", "train/dice_synthia", "train/ce_real"} <= set(last)
        cfg = OmegaConf.load(Path(t.user_attrs["output_dir"]) / "config_resolved.yaml")
        assert cfg.data.eval_classes == "synthia16"
        assert cfg.model._target_ == "segmentation_models_pytorch.create_model"
        searched = t.params["dataset_mix.sources.gta5.loss_weight"]
        assert cfg.dataset_mix.sources.gta5.loss_weight == pytest.approx(searched)
