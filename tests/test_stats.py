"""segsweep.stats against computations written out here with numpy (closed forms, printed tables), not scipy."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from segsweep import stats

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

# Student t critical values t(0.975, dof): dof 2 in closed form, (2p - 1) / sqrt(2p(1 - p)); dof 4 from tables
T975 = {2: 0.95 / math.sqrt(2 * 0.975 * 0.025), 4: 2.7764451051977987}


def t_cdf(t: float, dof: int) -> float:
    """Closed-form Student t CDFs for 2 and 4 degrees of freedom."""
    if dof == 2:
        return 0.5 + t / (2 * math.sqrt(2 + t * t))
    if dof == 4:
        x = t * t / 4
        return 0.5 + 3 / 8 * (t / math.sqrt(1 + x)) * (1 - t * t / (12 * (1 + x)))
    raise ValueError(dof)


def test_t_cdf_reference_is_right():  # the reference itself: its CDF at the table's quantiles is 0.975
    for dof, q in T975.items():
        assert t_cdf(q, dof) == pytest.approx(0.975, abs=1e-12)
        assert t_cdf(-q, dof) == pytest.approx(0.025, abs=1e-12)
        assert stats.t_quantile(dof + 1) == pytest.approx(q, rel=1e-12)


A5 = [0.641, 0.633, 0.648, 0.637, 0.645]  # per-seed val mIoU of a configuration, seeds 0..4
B5 = [0.430, 0.441, 0.425, 0.438, 0.436]  # plain CE on the same seeds


def test_summary_mean_std_interval_by_hand():
    x = np.array(A5)
    n = len(x)
    mean = x.sum() / n
    std = math.sqrt(((x - mean) ** 2).sum() / (n - 1))
    h = T975[4] * std / math.sqrt(n)
    s = stats.summarize(A5)
    assert s.n == 5
    assert s.mean == pytest.approx(0.6408, abs=1e-12)
    assert s.mean == pytest.approx(mean, rel=1e-12)
    assert s.std == pytest.approx(std, rel=1e-12)
    assert (s.ci_low, s.ci_high) == (pytest.approx(mean - h, rel=1e-12), pytest.approx(mean + h, rel=1e-12))
    assert s.half_width == pytest.approx(h, rel=1e-12)
    three = stats.summarize([0.5, 0.52, 0.57])
    m3 = (0.5 + 0.52 + 0.57) / 3
    sd3 = math.sqrt(((0.5 - m3) ** 2 + (0.52 - m3) ** 2 + (0.57 - m3) ** 2) / 2)
    assert three.half_width == pytest.approx(T975[2] * sd3 / math.sqrt(3), rel=1e-12)


def test_summary_of_one_and_none():
    one = stats.summarize([0.7])
    assert one.mean == 0.7 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert stats.summarize([]).n == 0


def test_paired_t_by_hand():
    d = np.array(A5) - np.array(B5)
    n = len(d)
    md = d.sum() / n
    sd = math.sqrt(((d - md) ** 2).sum() / (n - 1))
    t = md / (sd / math.sqrt(n))
    p = 2 * (1 - t_cdf(abs(t), n - 1))
    h = T975[4] * sd / math.sqrt(n)
    r = stats.paired(A5, B5)
    assert r.test == "t" and r.n == 5
    assert r.mean_diff == pytest.approx(md, rel=1e-12)
    assert r.std_diff == pytest.approx(sd, rel=1e-12)
    assert r.statistic == pytest.approx(t, rel=1e-9)
    assert r.p == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert (r.ci_low, r.ci_high) == (pytest.approx(md - h, rel=1e-12), pytest.approx(md + h, rel=1e-12))


def test_paired_by_seed_uses_common_seeds_only():
    a = {0: 0.61, 1: 0.58, 2: 0.64, 7: 0.99}  # seed 7 has no partner
    b = {2: 0.55, 0: 0.57, 1: 0.56, 9: 0.10}
    d = np.array([0.61 - 0.57, 0.58 - 0.56, 0.64 - 0.55])
    md = d.mean()
    sd = math.sqrt(((d - md) ** 2).sum() / 2)
    t = md / (sd / math.sqrt(3))
    r = stats.paired(a, b)
    assert r.n == 3 and r.seeds == (0, 1, 2)
    assert r.mean_diff == pytest.approx(md, rel=1e-12)
    assert r.p == pytest.approx(2 * (1 - t_cdf(t, 2)), rel=1e-6)
    # pairing matters: an unpaired reading of the same values would give another difference
    assert r.mean_diff != pytest.approx(np.mean(list(a.values())) - np.mean(list(b.values())))


def test_wilcoxon_cannot_reach_5_percent_with_five_seeds():
    """Every difference positive: the exact two-sided signed-rank p is 2 / 2**5, the smallest possible."""
    r = stats.paired(A5, B5, test="wilcoxon")
    assert r.p == pytest.approx(2 / 2**5, rel=1e-9)
    assert stats.paired(A5, B5).p < 0.001  # the t-test sees the consistent 0.2 gain


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(1*0.04, 0.06)=0.06
    adj = stats.holm(p)
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    assert math.isnan(adj[4])
    assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


def test_pooled_noise_and_margin():
    g1, g2, g3 = [0.60, 0.62, 0.64], [0.50, 0.53], [0.7]
    ss = sum((v - 0.62) ** 2 for v in g1) + sum((v - 0.515) ** 2 for v in g2)
    s, dof = stats.pooled_std([g1, g2, g3])
    assert dof == 3 and s == pytest.approx(math.sqrt(ss / 3), rel=1e-12)
    # paired seeds, consistent margin: outside the noise; an inconsistent one: within
    assert stats.margin_within_noise(dict(enumerate(A5)), dict(enumerate(B5)), s, dof)[0] is False
    noisy = {0: 0.64, 1: 0.62, 2: 0.65}
    assert stats.margin_within_noise(noisy, {0: 0.62, 1: 0.64, 2: 0.64}, s, dof)[0] is True
    # different seeds: margin 0.01 against t(3) * s * sqrt(1/3 + 1/3) (t(0.975, 3) = 3.182446305284263)
    h = 3.182446305284263 * s * math.sqrt(2 / 3)
    within, _ = stats.margin_within_noise({0: 0.63, 1: 0.63, 2: 0.63}, {5: 0.62, 6: 0.62, 7: 0.62}, s, dof)
    assert within is (0.01 <= h)


# --- practical significance: better / equivalent / undecided against a minimum effect ---------------------------
# t quantiles written out (scipy.stats.t.ppf): 2 dof 0.975 -> 4.302652729911275, 0.95 -> 2.919985580355516


def test_better_by_at_least_the_margin():
    a, b = [0.50, 0.52, 0.51], [0.47, 0.48, 0.475]  # differences 0.03, 0.04, 0.035: mean 0.035, sd 0.005
    p = stats.paired(a, b)
    h = 4.302652729911275 * 0.005 / math.sqrt(3)
    assert (p.ci_low, p.ci_high) == pytest.approx((0.035 - h, 0.035 + h), rel=1e-9)
    v = stats.verdict(p, 0.01)
    assert v.kind == stats.BETTER and 0.035 - h > 0.01 and v.seeds is None
    assert stats.verdict(stats.paired(b, a), 0.01).kind == stats.WORSE


def test_equivalent_inside_the_margin_by_tost_checked_against_scipy():
    a, b = [0.500, 0.510, 0.505], [0.500, 0.508, 0.506]  # differences 0, 0.002, -0.001
    p = stats.paired(a, b)
    v = stats.verdict(p, 0.01)
    d = [0.0, 0.002, -0.001]
    lower = sps.ttest_1samp(d, -0.01, alternative="greater").pvalue  # H0: diff <= -m
    upper = sps.ttest_1samp(d, 0.01, alternative="less").pvalue  # H0: diff >= +m
    assert v.tost_p == pytest.approx(max(lower, upper), rel=1e-9)
    assert v.kind == stats.EQUIVALENT and v.tost_p < 0.05
    # TOST at 5 % each is the 90 % interval inside (-m, m): by hand with t(0.95, 2)
    mean, sd = sum(d) / 3, stats.summarize(d).std
    h90 = 2.919985580355516 * sd / math.sqrt(3)
    assert -0.01 < mean - h90 and mean + h90 < 0.01


def test_straddling_the_margin_is_undecided_with_the_seeds_that_would_decide():
    # differences 0.012, 0.020, 0.016: mean 0.016, sd 0.004; 95 % CI [0.00606, 0.02594] straddles 0.01
    a, b = [0.612, 0.620, 0.616], [0.6, 0.6, 0.6]
    p = stats.paired(a, b)
    v = stats.verdict(p, 0.01)
    assert v.kind == stats.UNDECIDED and p.ci_low < 0.01 < p.ci_high and p.ci_low > 0  # significant, not decided
    # by hand: the smallest n with t(0.975, n-1) * 0.004 / sqrt(n) < 0.016 - 0.01 = 0.006
    n = next(n for n in range(2, 101) if sps.t.ppf(0.975, n - 1) * 0.004 / math.sqrt(n) < 0.006)
    assert v.seeds == n == 5
    assert "~5 seeds" in v.describe()
    # the embedded example's combined_sqrt - weighted_ce, measured three times (docs/studies.md: +0.0054
    # [-0.0224, +0.0332], +0.0137 [+0.0080, +0.0194], +0.0142 [-0.0169, +0.0453]): each straddles the 0.01 margin,
    # so each verdict is "undecided", whatever the p-values said
    for mean, lo, hi in ((0.0054, -0.0224, 0.0332), (0.0137, 0.0080, 0.0194), (0.0142, -0.0169, 0.0453)):
        sd = (hi - lo) / 2 / 4.302652729911275 * math.sqrt(3)
        measured = stats.Paired(3, mean, sd, lo, hi, math.nan, math.nan, "t")
        assert stats.verdict(measured, 0.01).kind == stats.UNDECIDED
