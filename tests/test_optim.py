import math

import pytest
import torch

from segsweep.config import OptimConfig
from segsweep.engine.optim import build_optimizer, build_scheduler, lr_factor

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


def test_warmup_then_poly_by_hand():
    cfg = OptimConfig(lr=1.0, warmup_iters=10, warmup_factor=0.1, schedule="poly", poly_power=0.9)
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(5, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.5**0.9)  # half-way through the decay
    assert lr_factor(110, 110, cfg) == pytest.approx(0.0)


def test_cosine_and_constant():
    cos = OptimConfig(warmup_iters=0, schedule="cosine")
    assert lr_factor(50, 100, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(37, 100, OptimConfig(warmup_iters=0, schedule="constant")) == 1.0


def test_scheduler_drives_optimizer_and_no_decay_on_biases():
    model = torch.nn.Conv2d(3, 4, 3)
    cfg = OptimConfig(name="sgd", lr=0.5, warmup_iters=2, warmup_factor=0.5, schedule="constant")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, 10, cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (0.5 + 0.5 * 0.5))
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[1]["params"][0] is model.bias
