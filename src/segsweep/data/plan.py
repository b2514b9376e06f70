"""Where each data source goes in the batches: its share of every batch and its loss weight, from ``data.sources``
and ``dataset_mix`` (checked: every error names its config key)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from segsweep.checks import check

if TYPE_CHECKING:
    from segsweep.config import DataConfig, DatasetMixConfig, SourceConfig

Domain = Literal["real", "synthetic"]
DOMAINS: tuple[str, ...] = get_args(Domain)  # every source is one or the other; the split monitors exist for both


@dataclass(frozen=True)
class PlannedSource:
    """A data source with its resolved place in the batches."""

    name: str
    position: int  # in data.sources: its sample stream's seed, whatever else is trained
    domain: str
    share: float  # fraction of every training batch (0: not trained on)
    loss_weight: float
    config: SourceConfig


def plan_sources(data: DataConfig, mix: DatasetMixConfig) -> list[PlannedSource]:
    """Every data source's share of the batches and loss weight. Explicit ``dataset_mix.sources.<name>.share``
    values must be given for every source and sum to 1; otherwise each domain's share (real_ratio, 1 - real_ratio)
    is split equally among its sources. A null loss weight is its domain's (real/synthetic_loss_weight)."""
    unknown = [n for n in mix.sources if n not in data.sources]
    check(not unknown, "dataset_mix.sources", f"names from data.sources {list(data.sources)}", unknown)
    explicit = {n: m.share for n, m in mix.sources.items() if m.share is not None}
    if explicit:
        missing = [n for n in data.sources if n not in explicit]
        check(not missing, "dataset_mix.sources", "a share for every source once one has a share; missing "
              f"{missing}", explicit)
        total = sum(explicit.values())
        check(abs(total - 1) < 1e-6, "dataset_mix.sources.*.share", f"shares of {list(data.sources)} that sum "
              "to 1", total)
        shares = dict(explicit)
    else:
        domain_share = {"real": mix.real_ratio, "synthetic": 1 - mix.real_ratio}
        members = {d: [n for n, s in data.sources.items() if s.domain == d] for d in DOMAINS}
        for d in DOMAINS:
            other = "synthetic_only" if d == "real" else "real_only"
            check(domain_share[d] == 0 or members[d], "dataset_mix.real_ratio",
                  f"{1.0 if d == 'synthetic' else 0.0} (e.g. dataset_mix={other}): data.sources has no {d} "
                  "source", mix.real_ratio)
        shares = {n: domain_share[s.domain] / len(members[s.domain]) for n, s in data.sources.items()}
    default_weight = {"real": mix.real_loss_weight, "synthetic": mix.synthetic_loss_weight}
    out = []
    for k, (n, s) in enumerate(data.sources.items()):
        m = mix.sources.get(n)
        w = m.loss_weight if m is not None and m.loss_weight is not None else default_weight[s.domain]
        out.append(PlannedSource(n, k, s.domain, float(shares[n]), float(w), s))
    return out


def batch_counts(shares: list[float], batch_size: int) -> list[int]:
    """Samples of each source in every batch: the cumulative shares times the batch size, each rounded half *up*,
    then differenced, so the counts always sum to the batch. With two sources the first gets ``share * B``
    rounded half up (2.5 -> 3, 3.5 -> 4; not Python's banker's ``round``); a tiny tolerance absorbs float error
    (0.35 * 10 = 3.4999999999999996 counts as 3.5)."""
    edges, acc = [0], 0.0
    for s in shares:
        acc += s
        edges.append(min(batch_size, math.floor(acc * batch_size + 0.5 + 1e-9)))
    return [b - a for a, b in zip(edges, edges[1:])]


def counted_sources(selection: Any, plan: list[PlannedSource]) -> list[PlannedSource]:
    """The trained sources whose labels the class weights count: ``all``/``both``, a domain, or source names."""
    trained = [p for p in plan if p.share > 0]
    if isinstance(selection, str) and selection in ("all", "both"):
        return trained
    if isinstance(selection, str) and selection in DOMAINS and selection not in {p.name for p in plan}:
        return [p for p in trained if p.domain == selection]
    names = [selection] if isinstance(selection, str) else list(selection or [])
    bad = [n for n in names if n not in {p.name for p in plan}]
    check(bool(names) and not bad, "weighting.source", "all, a domain (real, synthetic) or names from "
          f"data.sources {[p.name for p in plan]}", selection if not bad else bad)
    return [p for p in trained if p.name in names]
