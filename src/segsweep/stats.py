"""Statistics for a study's verdict, from per-seed values: mean, spread, t intervals, paired comparisons, Holm.

Conventions (all two-sided, 95 % by default):

- ``std`` is the sample standard deviation (``ddof=1``); with one value it is NaN, and so is every interval.
- A configuration's interval is the t interval of its mean: ``mean ± t(0.975, n-1) · std / sqrt(n)``.
- Comparisons between configurations are **paired by seed**: with common random numbers seed s gives the same
  initial weights, batch order and augmentations to every configuration, so seed-to-seed luck cancels in the
  difference ``d_s = a_s - b_s``. Only seeds present in both are used.

The paired test is the **paired t-test** (``scipy.stats.ttest_rel``), not the Wilcoxon signed-rank test. With the
3 to 5 seeds a study can afford, Wilcoxon cannot reject at 5 %: its exact two-sided p-value is at least
``2 / 2**n`` (0.25 with 3 seeds, 0.125 with 4, 0.0625 with 5), reached when every difference has the same sign,
so it would call every comparison "not significant" however large and consistent the gain. The t-test uses the
size of the differences, not only their signs; its assumption (roughly normal seed-to-seed differences) is what
one expects of a mean over thousands of validation pixels, and with few seeds its interval is honestly wide.
``paired(..., test="wilcoxon")`` is there for larger seed counts.

Several comparisons (each confirmed configuration against each baseline) are corrected with **Holm**'s
step-down method, which controls the family-wise error rate like Bonferroni and is never less powerful.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Summary:
    """Mean of n per-seed values with its sample std and t interval (NaN where n is too small)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


@dataclass(frozen=True)
class Paired:
    """``a - b`` over the common seeds: mean difference, its std and t interval, and the paired test's p."""

    n: int
    mean_diff: float
    std_diff: float
    ci_low: float
    ci_high: float
    statistic: float
    p: float
    test: str
    seeds: tuple = ()

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def t_quantile(n: int, level: float = 0.95) -> float:
    """The two-sided t critical value for n values (n - 1 degrees of freedom); NaN when n < 2."""
    return float(sps.t.ppf(0.5 + level / 2, n - 1)) if n >= 2 else math.nan


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    h = t_quantile(n, level) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - h, mean + h)


def paired(a: Mapping | Sequence[float], b: Mapping | Sequence[float], test: str = "t",
           level: float = 0.95) -> Paired:
    """Paired comparison of a against b. Mappings are keyed by seed and paired on their common seeds; sequences
    must have the same length and are paired by position. ``test``: ``"t"`` (paired t) or ``"wilcoxon"``."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        seeds = tuple(sorted(set(a) & set(b), key=lambda s: (str(type(s)), s)))
        xa = np.array([a[s] for s in seeds], dtype=float)
        xb = np.array([b[s] for s in seeds], dtype=float)
    else:
        xa, xb = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
        if xa.shape != xb.shape:
            raise ValueError(f"paired values need the same length, got {len(xa)} and {len(xb)}")
        seeds = tuple(range(len(xa)))
    d = xa - xb
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, test, seeds)
    s = summarize(d, level)
    stat, p = math.nan, math.nan
    if n >= 2:
        if test == "t":
            if s.std > 0:
                r = sps.ttest_rel(xa, xb)
                stat, p = float(r.statistic), float(r.pvalue)
            else:  # identical differences: no spread to test against (p 0 when they are not all 0)
                stat, p = (math.copysign(math.inf, s.mean), 0.0) if s.mean != 0 else (math.nan, 1.0)
        elif test == "wilcoxon":
            if np.any(d != 0):
                r = sps.wilcoxon(xa, xb)
                stat, p = float(r.statistic), float(r.pvalue)
            else:
                p = 1.0
        else:
            raise ValueError(f"test must be 't' or 'wilcoxon', got {test!r}")
    return Paired(n, s.mean, s.std, s.ci_low, s.ci_high, stat, p, test, seeds)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down), in the input order; NaN p-values stay NaN and do not count."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(len(p), math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Seed noise: the pooled within-configuration standard deviation over groups of repeats, and its degrees
    of freedom ``Σ (n_i - 1)``; groups of one value contribute nothing. (NaN, 0) without any repeat."""
    ss, dof = 0.0, 0
    for g in groups:
        x = np.asarray(list(g), dtype=float)
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            dof += len(x) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def margin_within_noise(best: Mapping, runner_up: Mapping, noise_std: float, noise_dof: int,
                        level: float = 0.95) -> tuple[bool, str]:
    """Is the best configuration's margin over the runner-up within the seed noise?

    With >= 2 common seeds: yes when the paired interval of the difference contains 0. Otherwise (different
    seeds): yes when the margin is below the t half-width of a difference of two means with the pooled seed noise,
    ``t(dof) · s · sqrt(1/n1 + 1/n2)``. Returns (within, how it was decided)."""
    pr = paired(best, runner_up)
    if pr.n >= 2:
        return bool(pr.ci_low <= 0), f"paired over {pr.n} seeds: 95 % CI [{pr.ci_low:+.4f}, {pr.ci_high:+.4f}]"
    ma, mb = np.mean(list(best.values())), np.mean(list(runner_up.values()))
    if not noise_dof or math.isnan(noise_std):
        return True, "no repeated seeds: the seed noise is unknown"
    h = float(sps.t.ppf(0.5 + level / 2, noise_dof)) * noise_std * math.sqrt(1 / len(best) + 1 / len(runner_up))
    return bool(abs(ma - mb) <= h), f"margin {ma - mb:+.4f} against ±{h:.4f} (pooled seed noise, {noise_dof} dof)"


# Practical significance: is a difference large enough to matter? A study declares the smallest difference worth
# having (study.min_effect, in the objective's units); each paired comparison then lands in one of four cases.
BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
# 0.01 mIoU (one point): segmentation papers claim gains of a point or more and report seed-to-seed standard
# deviations of a few tenths of a point on Cityscapes, so a smaller gain is not one a researcher would act on.
DEFAULT_MIN_EFFECT = 0.01


@dataclass(frozen=True)
class Verdict:
    """Where a paired difference stands against the margin ``m`` (two-sided 95 % t interval [lo, hi]):

    - ``better``: lo > +m (better by at least the margin); ``worse``: hi < -m;
    - ``equivalent``: the two one-sided tests (TOST) reject |diff| >= m at 5 % each, i.e. the 90 % interval lies
      inside (-m, +m);
    - ``undecided``: anything else; ``seeds`` is how many paired seeds would likely decide it if the mean and the
      spread of the differences stayed as observed (None: more than 100, or a mean on the margin itself).
    """

    kind: str
    margin: float
    tost_p: float  # max of the two one-sided p-values (equivalence when < 0.05)
    seeds: int | None

    def describe(self) -> str:
        m = f"{self.margin:.3g}"
        if self.kind == BETTER:
            return f"better by at least the minimum effect {m}"
        if self.kind == WORSE:
            return f"worse by at least the minimum effect {m}"
        if self.kind == EQUIVALENT:
            return f"equivalent within ±{m} (TOST p = {self.tost_p:.3f})"
        more = f"~{self.seeds} seeds would likely decide" if self.seeds else "more seeds than practical to decide"
        return f"undecided at the minimum effect {m} ({more})"


def tost_p(p: Paired, margin: float) -> float:
    """TOST p-value for equivalence within ±margin: max of P(T > (d + m) / se) and P(T < (d - m) / se)."""
    if p.n < 2 or not p.std_diff > 0:
        return 0.0 if p.n >= 2 and abs(p.mean_diff) < margin else 1.0
    se = p.std_diff / math.sqrt(p.n)
    lower = float(sps.t.sf((p.mean_diff + margin) / se, p.n - 1))
    upper = float(sps.t.cdf((p.mean_diff - margin) / se, p.n - 1))
    return max(lower, upper)


def seeds_to_decide(mean: float, std: float, margin: float, max_seeds: int = 100) -> int | None:
    """The fewest paired seeds n whose interval, with this mean and spread of differences, would clear the margin:
    t(0.975, n-1) s / sqrt(n) < |mean| - m (better/worse), or t(0.95, n-1) s / sqrt(n) < m - |mean|
    (equivalent)."""
    gap = abs(abs(mean) - margin)
    if not (std > 0) or gap == 0:
        return None
    level = 0.95 if abs(mean) > margin else 0.90
    for n in range(2, max_seeds + 1):
        if t_quantile(n, level) * std / math.sqrt(n) < gap:
            return n
    return None


def verdict(p: Paired, margin: float) -> Verdict:
    """The practical verdict of a paired comparison against the minimum effect ``margin`` (>= 0)."""
    tp = tost_p(p, margin)
    if p.n >= 2 and p.ci_low > margin:
        kind = BETTER
    elif p.n >= 2 and p.ci_high < -margin:
        kind = WORSE
    elif p.n >= 2 and tp < 0.05:
        kind = EQUIVALENT
    else:
        kind = UNDECIDED
    seeds = seeds_to_decide(p.mean_diff, p.std_diff, margin) if kind == UNDECIDED and p.n >= 2 else None
    return Verdict(kind, margin, tp, seeds)
