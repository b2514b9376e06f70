"""The on-device accumulator: means over a logging period, exact monitor means, non-finite detection."""

import math

import pytest
import torch

from segsweep.losses import LossOutput
from segsweep.tracking.storage import MetricAccumulator


def out(total, ce, real=(0.0, 0), synthetic=(0.0, 0)):
    t = torch.tensor
    return LossOutput(total=t(total), terms={"ce": t(ce)},
                      monitors={"ce_real": (t(real[0]), t(float(real[1]))),
                                "ce_synthetic": (t(synthetic[0]), t(float(synthetic[1])))})


def test_period_means_and_monitor_means_over_samples():
    acc = MetricAccumulator(torch.device("cpu"))
    acc.add(out(1.0, 2.0, real=(3.0, 2), synthetic=(1.0, 1)), 1, data_time=0.1)
    acc.add(out(3.0, 4.0, real=(1.0, 2)), 2, data_time=0.3)  # no synthetic sample in this step
    m = acc.flush()
    assert m["loss"] == pytest.approx(2.0) and m["ce"] == pytest.approx(3.0)
    # real: 4 samples whose losses sum to 4 -> 1.0 (a mean of step means would give (1.5 + 0.5) / 2 = 1.0 too,
    # so the synthetic monitor is the telling one: 1 sample in 2 steps -> 1.0, not 0.5)
    assert m["ce_real"] == pytest.approx(1.0)
    assert m["ce_synthetic"] == pytest.approx(1.0)
    assert m["data_time"] == pytest.approx(0.2)
    assert acc.flush() == {}  # reset after a flush


def test_monitor_absent_when_domain_never_seen():
    acc = MetricAccumulator(torch.device("cpu"))
    acc.add(out(1.0, 1.0, real=(2.0, 4)), 1)
    m = acc.flush()
    assert "ce_synthetic" not in m and m["ce_real"] == pytest.approx(0.5)


def test_non_finite_loss_raises_naming_first_bad_iteration_and_terms():
    acc = MetricAccumulator(torch.device("cpu"))
    acc.add(out(1.0, 1.0), 11)
    acc.add(out(math.nan, 0.25), 12)
    acc.add(out(math.inf, 7.0), 13)
    with pytest.raises(FloatingPointError, match=r"iteration 12: loss=nan, ce=0\.25"):
        acc.flush()
