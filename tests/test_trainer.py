"""The loop itself: a non-finite loss stops training with the iteration and every term's value."""

import pytest
import torch

from segsweep.config import OptimConfig, TrainerConfig
from segsweep.data.labels import LabelSet
from segsweep.engine.optim import build_optimizer, build_scheduler
from segsweep.engine.trainer import TrainState, train
from segsweep.losses import SegmentationCriterion

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


class BlowsUp(torch.nn.Module):
    """Finite logits until ``at`` forward calls, NaN from then on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 1)
        self.calls, self.at = 0, at

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        return {"out": y * float("nan") if self.calls >= self.at else y}


def batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield {"image": torch.randn(4, 3, 8, 8, generator=g), "label": torch.randint(0, 5, (4, 8, 8), generator=g),
               "source": torch.tensor([0, 0, 1, 1]), "loss_weight": torch.tensor([1.0, 1.0, 0.5, 0.5])}


def test_non_finite_loss_stops_with_iteration_and_terms():
    model = BlowsUp(at=7)
    crit = SegmentationCriterion(ce_weight=0.6, dice_weight=0.4)
    opt = build_optimizer(model, OptimConfig())
    state = TrainState(model, crit, opt, build_scheduler(opt, 20, OptimConfig()))
    cfg = TrainerConfig(max_iters=20, log_every=5, eval_every=100, progress_bar="off")
    written = []

    class Recorder:
        def write(self, step, metrics):
            written.append(step)

        def close(self):
            pass

    with pytest.raises(FloatingPointError, match=r"iteration 7: loss=nan, ce=nan, dice=nan"):
        train(state, batches(), [], cfg, torch.device("cpu"), [Recorder()], LabelSet.of([str(c) for c in range(5)]))
    assert written == [5]  # the first period was logged; the bad one raised at its logging step (10)
    assert state.iteration == 10
