"""Config composition and validation: every bad value stops with a message naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

from segsweep.checks import ConfigError
from segsweep.config import register_configs, validate

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def composed(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF):
        return compose("config", overrides=[*overrides, "output_dir=/tmp/unused"])


def test_defaults_compose_and_validate():
    cfg = validate(composed())
    assert (cfg.loss.name, cfg.loss.ce_weight, cfg.loss.dice_weight) == ("combined", 0.6, 0.4)
    assert cfg.weighting.method == "sqrt_inv_freq"
    assert (cfg.dataset_mix.real_ratio, cfg.dataset_mix.real_loss_weight, cfg.dataset_mix.synthetic_loss_weight) == (
        0.7, 1.0, 0.5)
    assert cfg.model["_target_"] == "segsweep.models.UNet"
    assert cfg.mlflow.tracking_uri.startswith("sqlite:///") and cfg.mlflow.tracking_uri.endswith("/mlflow.db")
    assert cfg.objective == "val/mIoU"


@pytest.mark.parametrize("group,options", [
    ("loss", ["ce", "dice", "combined"]),
    ("weighting", ["none", "inverse_freq", "sqrt_inv_freq", "effective_num", "median_freq", "enet"]),
    ("dataset_mix", ["mixed", "real_only", "synthetic_only"]),
    ("model", ["unet", "deeplabv3"]),
    ("data", ["toycity", "cityscapes_gta5"]),
    ("optim", ["adamw", "sgd"]),
    ("trainer", ["default", "gpu"]),
])
def test_every_option_of_every_group_validates(group, options):
    for option in options:
        cfg = validate(composed(f"{group}={option}"))
        node = getattr(cfg, group)
        if group in ("loss", "dataset_mix", "data"):
            assert node.name == option
        if group == "weighting":
            assert node.method == option


@pytest.mark.parametrize("override,key", [
    ("loss.ce_weight=-0.1", "loss.ce_weight"),
    ("loss.smooth=nan", "loss.smooth"),
    ("weighting.beta=1.0", "weighting.beta"),
    ("weighting.fraction=0", "weighting.fraction"),
    ("dataset_mix.real_ratio=1.5", "dataset_mix.real_ratio"),
    ("dataset_mix.synthetic_loss_weight=-1", "dataset_mix.synthetic_loss_weight"),
    ("trainer.max_iters=0", "trainer.max_iters"),
    ("trainer.device=tpu", "trainer.device"),
    ("optim.lr=0", "optim.lr"),
    ("data.crop_size=[8]", "data.crop_size"),
    ("data.scale_range=[2.0,1.0]", "data.scale_range"),
    ("objective=val/loss", "objective"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate(composed(override))


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="loss.dice_weight"):
        validate(composed("loss=ce", "loss.dice_weight=0.3"))
    with pytest.raises(ConfigError, match="dataset_mix.real_ratio"):
        validate(composed("dataset_mix=real_only", "dataset_mix.real_ratio=0.5"))
    with pytest.raises(ConfigError, match="weighting.source"):
        validate(composed("dataset_mix=synthetic_only", "weighting.source=real"))
    with pytest.raises(ConfigError, match="data.sources.cityscapes.root"):
        validate(composed("data=cityscapes_gta5", "data.real_root=null"))


def test_synthetic_weight_zero_is_legal():
    assert validate(composed("dataset_mix.synthetic_loss_weight=0")).dataset_mix.synthetic_loss_weight == 0


@pytest.mark.parametrize("override,words", [
    ("loss.focal=1", "loss.focal"),  # unknown key
    ("loss.ce_weight=abc", "loss.ce_weight"),  # wrong type
    ("weighting.method=bogus", "weighting.method"),  # not one of the methods
    ("model.nope=1", "model.nope"),  # unknown model key (per-model schema)
    ("dataset_mix.reduction=sum", "dataset_mix.reduction"),
])
def test_unknown_keys_and_wrong_types_stop_composition(override, words):
    with pytest.raises(ConfigCompositionException, match=words.replace(".", r"\.")):
        composed(override)


def test_unknown_group_option_lists_nothing_silently():
    with pytest.raises(MissingConfigException, match="weighting/bogus"):
        composed("weighting=bogus")


@pytest.mark.parametrize("preset,cls,attrs", [
    ("none", "NopPruner", {}),
    ("median", "MedianPruner", {"_n_startup_trials": 4, "_n_warmup_steps": 50}),
    ("successive_halving", "SuccessiveHalvingPruner", {"_min_resource": 50, "_reduction_factor": 3}),
    ("hyperband", "HyperbandPruner", {"_min_resource": 50, "_max_resource": "auto", "_reduction_factor": 3}),
    ("threshold", "ThresholdPruner", {"_lower": 0.3, "_n_warmup_steps": 0}),
])
def test_pruner_presets_follow_the_evaluation_cadence(preset, cls, attrs):
    from segsweep.sweep.trial import build_pruner

    extra = ["study.pruner.lower=0.3"] if preset == "threshold" else []
    pruner = build_pruner(validate(composed(f"pruner={preset}", "trainer.eval_every=50", *extra)).study.pruner)
    assert type(pruner).__name__ == cls
    assert {k: getattr(pruner, k) for k in attrs} == attrs


def test_named_studies_pick_their_pruner():
    from segsweep.sweep.trial import build_pruner

    for study, cls in (("default", "MedianPruner"), ("smoke", "NopPruner"), ("baselines", "NopPruner")):
        assert type(build_pruner(validate(composed(f"sweeps={study}")).study.pruner)).__name__ == cls
    # the command line's preset wins over the study's
    assert type(build_pruner(validate(composed("sweeps=default", "pruner=hyperband")).study.pruner)).__name__ == \
        "HyperbandPruner"
