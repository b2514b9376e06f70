"""The on-device accumulator: exact means over a logging period and over data-parallel ranks, monitor means,
non-finite detection, shared stop requests."""

import math

import pytest
import torch
from dist_helpers import run_ranks

from segsweep.losses import LossOutput
from segsweep.tracking.storage import MetricAccumulator

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


def out(ce_num, ce_den, real=(0.0, 0), synthetic=(0.0, 0), total=None, weight=0.5):
    """One step: a single term 'ce' = ce_num / ce_den with factor ``weight`` in the total."""
    t = torch.tensor
    ce = ce_num / ce_den if ce_den else 0.0
    total = weight * ce if total is None else total
    return LossOutput(total=t(total), terms={"ce": t(ce)},
                      monitors={"ce_real": (t(real[0]), t(float(real[1]))),
                                "ce_synthetic": (t(synthetic[0]), t(float(synthetic[1])))},
                      term_parts={"ce": (t(float(ce_num)), t(float(ce_den)))}, weights={"ce": weight})


def test_period_means_pool_samples_not_steps():
    acc = MetricAccumulator(torch.device("cpu"))
    acc.add(out(6.0, 3, real=(3.0, 2), synthetic=(1.0, 1)), 1, data_time=0.1)
    acc.add(out(4.0, 1, real=(1.0, 2)), 2, data_time=0.3)  # no synthetic sample in this step
    m, stop = acc.flush()
    # ce over the 4 samples: (6 + 4) / (3 + 1) = 2.5, not the mean of the step means (2 + 4) / 2 = 3
    assert m["ce"] == pytest.approx(2.5) and m["loss"] == pytest.approx(0.5 * 2.5)
    assert m["ce_real"] == pytest.approx(4.0 / 4)
    assert m["ce_synthetic"] == pytest.approx(1.0)  # 1 sample in 2 steps: 1.0, not 0.5
    assert m["data_time"] == pytest.approx(0.2) and stop is False
    assert acc.flush() == ({}, False)  # reset after a flush


def test_monitor_absent_when_domain_never_seen():
    acc = MetricAccumulator(torch.device("cpu"))
    acc.add(out(1.0, 1, real=(2.0, 4)), 1)
    m, _ = acc.flush()
    assert "ce_synthetic" not in m and m["ce_real"] == pytest.approx(0.5)


def test_non_finite_loss_raises_naming_first_bad_iteration_and_terms():
    acc = MetricAccumulator(torch.device("cpu"))
    acc.add(out(1.0, 1), 11)
    acc.add(out(0.25, 1, total=math.nan), 12)
    acc.add(out(7.0, 1, total=math.inf), 13)
    with pytest.raises(FloatingPointError, match=r"iteration 12: loss=nan, ce=0\.25"):
        acc.flush()


# Two ranks with different numbers of samples per domain; the expected values are written out by hand below.
RANK_STEPS = {
    0: [dict(ce_num=6.0, ce_den=3, real=(3.0, 2), synthetic=(1.0, 1)), dict(ce_num=4.0, ce_den=1, real=(1.0, 2))],
    1: [dict(ce_num=1.0, ce_den=2, real=(0.5, 1), synthetic=(2.0, 3)), dict(ce_num=0.0, ce_den=0)],
}


def _two_rank_flush(rank, size, bad_rank):
    acc = MetricAccumulator(torch.device("cpu"))
    for i, step in enumerate(RANK_STEPS[rank], start=1):
        acc.add(out(**step, total=math.nan if rank == bad_rank and i == 2 else None), i, data_time=0.1 + rank)
    return acc.flush(stop=rank == 1)


def test_two_ranks_reduce_sums_and_counts_exactly(tmp_path):
    results = run_ranks(_two_rank_flush, 2, tmp_path, None)
    assert [s for s, _ in results] == ["ok", "ok"], results
    (m0, stop0), (m1, stop1) = results[0][1], results[1][1]
    assert m0 == m1 and stop0 is stop1 is True  # every rank logs the same values and stops together
    # ce: (6 + 4 + 1 + 0) / (3 + 1 + 2 + 0) = 11 / 6; a mean of the ranks' means would be (2.5 + 0.5) / 2 = 1.5
    assert m0["ce"] == pytest.approx(11 / 6) and m0["loss"] == pytest.approx(0.5 * 11 / 6)
    # real: 4.5 / 5 = 0.9 (not (1 + 0.5) / 2); synthetic: 3 / 4 = 0.75 (not (1 + 2/3) / 2)
    assert m0["ce_real"] == pytest.approx((3.0 + 1.0 + 0.5) / (2 + 2 + 1))
    assert m0["ce_synthetic"] == pytest.approx((1.0 + 2.0) / (1 + 3))
    assert m0["data_time"] == pytest.approx(1.1)  # the slowest rank's


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    results = run_ranks(_two_rank_flush, 2, tmp_path, 1)
    assert [s for s, _ in results] == ["error", "error"], results
    assert all(v[0] == "FloatingPointError" and "iteration 2" in v[1] for _, v in results)
    assert "on another rank" in results[0][1][1] and "loss=nan" in results[1][1][1]
