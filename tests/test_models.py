"""Any model: the output adapter against hand-worked values, the allow list, the class-count check, local weights,
and models segsweep did not write (a user's package, torchvision, segmentation_models_pytorch) trained through
``train.py``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from needs import require

from segsweep.checks import ConfigError
from segsweep.config import register_configs
from segsweep.models import build_model, check_outputs, load_weights
from segsweep.models.outputs import ModelOutputError, main_logits, standardize
from segsweep.seeds import run

ROOT = Path(__file__).resolve().parents[1]
MODELS = 'pip install torch==2.14.1 torchvision==0.29.1 -e ".[models]"'


@pytest.mark.unit
def test_upsampling_is_bilinear_without_aligned_corners():
    # 2x2 -> 4x4, align_corners=False: source coordinate (d + 0.5) / 2 - 0.5, clamped at the borders; worked by
    # hand the columns 0, 1 give weights [0, .25, .75, 1] and the rows 0, 2 give [0, .5, 1.5, 2]
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    rows, cols = [0.0, 0.5, 1.5, 2.0], [0.0, 0.25, 0.75, 1.0]
    expected = torch.tensor([[r + c for c in cols] for r in rows]).view(1, 1, 4, 4)
    torch.testing.assert_close(main_logits(x, (4, 4)), expected)


@pytest.mark.unit
def test_every_output_form_becomes_out_and_aux_at_the_label_size():
    main, aux = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)

    class WithLogits:
        logits = main

    for output, n_aux in ((main, 0), ({"out": main}, 0), ({"out": main, "aux": aux}, 1), ((main, aux, aux), 2),
                          ([main], 0), (WithLogits(), 0)):
        out = standardize(output, (8, 8))
        assert out["out"] is main and len(out["aux"]) == n_aux  # already at the size: not copied
        assert all(a.shape == (2, 3, 8, 8) for a in out["aux"])
    for bad, words in (({"logits_x": main}, r"keys \['logits_x'\]"), ("text", "returned str"),
                       (torch.randn(2, 3, 8), r"shape \(2, 3, 8\)")):
        with pytest.raises(ModelOutputError, match=words):
            standardize(bad, (8, 8))


def node(**kw):
    from omegaconf import OmegaConf

    return OmegaConf.create(kw)


@pytest.mark.unit
def test_targets_outside_the_allow_list_are_refused_with_the_key_to_extend():
    with pytest.raises(ConfigError, match=r"config key 'model._target_': 'os.system' is outside the trusted import "
                                          r"prefixes model.allow=.*add its package there, e.g. 'model.allow=\["):
        build_model(node(_target_="os.system", command="true"))
    with pytest.raises(ConfigError, match="torch.nn.Identity' is outside"):  # a prefix, not a substring
        build_model(node(_target_="torch.nn.Identity", allow=["torch.nn.Iden"]))
    assert isinstance(build_model(node(_target_="torch.nn.Identity", allow=["torch.nn"])), torch.nn.Identity)
    with pytest.raises(ConfigError, match="returned int; expected an nn.Module"):
        build_model(node(_target_="builtins.int", allow=["builtins"]))
    with pytest.raises(ConfigError, match=r"cannot build segsweep.models.UNet: TypeError: .*unexpected keyword"):
        build_model(node(_target_="segsweep.models.UNet", num_classes=3, bogus=1))


@pytest.mark.unit
def test_class_count_and_output_checked_before_training():
    model = build_model(node(_target_="segsweep.models.UNet", num_classes=5, base_channels=4, depth=1))
    with pytest.raises(ConfigError, match="the model's output has 5 channels but data.labels has 19 classes"):
        check_outputs(model, 19)
    assert check_outputs(model, 5) == 0
    assert model.training  # the probe ran in eval mode and put it back
    aux = build_model(node(_target_="segsweep.models.UNet", num_classes=5, base_channels=4, depth=1, aux_head=True))
    assert check_outputs(aux, 5) == 1


@pytest.mark.unit
def test_local_weights_load_whole_or_into_a_submodule_and_misfits_are_named(tmp_path):
    torch.manual_seed(0)
    src = build_model(node(_target_="segsweep.models.UNet", num_classes=3, base_channels=4, depth=1))
    torch.save({"model": src.state_dict(), "iteration": 7}, tmp_path / "model_final.pt")  # segsweep's own file
    torch.save(src.stem.state_dict(), tmp_path / "stem.pt")
    torch.manual_seed(1)
    dst = build_model(node(_target_="segsweep.models.UNet", num_classes=3, base_channels=4, depth=1,
                           weights=str(tmp_path / "model_final.pt")))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    fresh = build_model(node(_target_="segsweep.models.UNet", num_classes=3, base_channels=4, depth=1))
    load_weights(fresh, str(tmp_path / "stem.pt"), into="stem")
    assert torch.equal(fresh.stem[0][0].weight, src.stem[0][0].weight)
    with pytest.raises(ConfigError, match=r"does not fit the model: keys 40 missing \(e.g. \['stem.0.0.weight'.*"
                                          r"12 unexpected \(e.g. \['0.0.weight'"):
        load_weights(fresh, str(tmp_path / "stem.pt"))
    other = build_model(node(_target_="segsweep.models.UNet", num_classes=4, base_channels=4, depth=1))
    with pytest.raises(ConfigError, match=r"of another shape \(e.g. head.weight: \(3, 4, 1, 1\) in the file, "
                                          r"\(4, 4, 1, 1\) in the model\)"):
        load_weights(other, str(tmp_path / "model_final.pt"))
    with pytest.raises(ConfigError, match="config key 'model.weights': file .*nope.pt does not exist"):
        load_weights(other, str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="config key 'model.weights_into': the model has no submodule 'trunk'"):
        load_weights(other, str(tmp_path / "stem.pt"), into="trunk")


USER_PACKAGE = '''
import torch
import torch.nn.functional as F


class HalfResolution(torch.nn.Module):
    """A user's network: logits at half the input resolution, an auxiliary head, returned as a tuple."""

    def __init__(self, n_classes, width=8):
        super().__init__()
        self.body = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(width, n_classes, 1)
        self.aux = torch.nn.Conv2d(width, n_classes, 1)

    def forward(self, x):
        y = F.relu(self.body(x))
        return self.head(y), self.aux(y)


def build(n_classes, width=8):
    return HalfResolution(n_classes, width)
'''


@pytest.fixture
def user_package(tmp_path):
    pkg = tmp_path / "pkgs" / "labnets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(USER_PACKAGE)
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "labnet.yaml").write_text("_target_: labnets.build\nn_classes: ${num_classes:}\nwidth: 8\n"
                                      "allow: [segsweep.models, labnets]\n")
    return tmp_path


def train_py(tmp_path, *args, env_extra=None):
    env = {**os.environ, "SEGSWEEP_CACHE": str(tmp_path / "cache"), **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "debug=tiny", "mlflow.enabled=false",
                           f"hydra.run.dir={tmp_path}/run", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_users_model_from_their_own_package_trains_through_train_py(user_package):
    env = {"PYTHONPATH": str(user_package / "pkgs")}
    done = train_py(user_package, "--config-dir", str(user_package / "conf"), "model=labnet", env_extra=env)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (user_package / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "train/loss" in r][-1]
    # the tuple's second element fed the auxiliary terms; logits at half resolution were upsampled to the labels
    assert {"train/ce_0", "train/dice_0", "train/ce_0_real"} <= set(last)
    assert last["train/loss"] == pytest.approx(0.6 * last["train/ce"] + 0.4 * last["train/dice"]
                                               + 0.4 * (0.6 * last["train/ce_0"] + 0.4 * last["train/dice_0"]),
                                               rel=1e-5)
    assert any("val/mIoU" in r for r in records)
    # the same target without its package in model.allow: one line naming the key, exit 1, nothing trained
    refused = train_py(user_package, "--config-dir", str(user_package / "conf"), "model=labnet",
                       "model.allow=[segsweep.models]", env_extra=env)
    assert refused.returncode == 1
    lines = [ln for ln in (refused.stdout + refused.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.allow" in lines[0] and "labnets.build" in lines[0], lines
    # a model whose head does not match the label set: both numbers, before training
    wrong = train_py(user_package, "--config-dir", str(user_package / "conf"), "model=labnet", "model.n_classes=7",
                     env_extra=env)
    lines = [ln for ln in (wrong.stdout + wrong.stderr).splitlines() if ln.strip()]
    assert wrong.returncode == 1 and len(lines) == 1 and "has 7 channels but data.labels has 19 classes" in lines[0]


def run_model(tmp_path, *overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=["debug=tiny", "trainer.max_iters=2", "trainer.log_every=1",
                                           "trainer.eval_every=2", f"data.cache_dir={tmp_path}/cache",
                                           f"output_dir={tmp_path}/run", "mlflow.enabled=false", *overrides])
    value = run(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return value, records


@pytest.mark.parametrize("preset,aux", [("torchvision_lraspp", False), ("torchvision_deeplabv3", True)])
def test_torchvision_presets_train(tmp_path, preset, aux):
    require("torchvision", MODELS)
    value, records = run_model(tmp_path, f"model={preset}")
    assert 0.0 <= value <= 1.0
    last = [r for r in records if "train/loss" in r][-1]
    assert ("train/ce_0" in last) == aux and "train/dice_synthetic" in last


def test_segmentation_models_pytorch_preset_trains_with_a_timm_encoder(tmp_path):
    require("segmentation_models_pytorch", MODELS)
    value, records = run_model(tmp_path, "model=smp", "model.arch=FPN", "model.encoder_name=tu-resnet18")
    assert 0.0 <= value <= 1.0 and any("val/IoU/road" in r for r in records)


@pytest.mark.unit
def test_an_imagenet_timm_encoder_copied_to_disk_loads_into_an_smp_model(tmp_path):
    """The cluster recipe (examples/three_sources): timm's features_only trunk saved with torch.save, loaded into
    the smp model's encoder.model through model.weights / model.weights_into; nothing downloaded."""
    timm = require("timm", MODELS)
    torch.manual_seed(3)
    trunk = timm.create_model("resnet18", pretrained=False, features_only=True)
    torch.save(trunk.state_dict(), tmp_path / "resnet18.pt")
    model = build_model(node(_target_="segmentation_models_pytorch.create_model", arch="Unet",
                             encoder_name="tu-resnet18", encoder_weights=None, classes=5,
                             weights=str(tmp_path / "resnet18.pt"), weights_into="encoder.model"))
    assert torch.equal(model.encoder.model.conv1.weight, trunk.conv1.weight)
    with pytest.raises(ConfigError, match="does not fit the model: keys .* missing"):
        build_model(node(_target_="segmentation_models_pytorch.create_model", arch="Unet",
                         encoder_name="tu-resnet18", encoder_weights=None, classes=5,
                         weights=str(tmp_path / "resnet18.pt")))  # the whole model: decoder keys missing
