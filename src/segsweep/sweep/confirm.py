"""The confirmation stage: after the search, the best configurations and the baselines trained again on fresh seeds.

A search's best trial is partly its luckiest draw (the winner's curse): its value is biased upwards however many
seeds it had. So ``study.confirm.top_k`` configurations with the best search means, plus every ``study.baselines``
entry, are trained again with ``study.confirm.seeds`` **fresh** seeds (``seed_base, seed_base + 1, ...``, never
one of the search's), and the study's verdict (``segsweep.report``) is drawn from these runs only, paired by seed.

They are trials of the same study (same storage, same MLflow parent run), enqueued with ``study.enqueue_trial``:
one trial per (configuration, seed), so that they run side by side as separate jobs like any other trial. Each
carries, in its record (``segsweep.sweep.record``): ``stage`` = ``confirm``; ``seeds`` = ``[seed]`` (the job
trains this seed instead of the search's, never pruned); its label ``confirm_config`` (``top1``, ``top2``, ... or
the baseline's name, ``+``-joined when a baseline is also a top configuration) and ``confirm_kind``;
``confirm_id``, a hash of (params, overrides), and ``confirm_key`` = ``<confirm_id>@<seed>``, so that enqueueing
again skips the keys already in the study and a resumed sweep never enqueues twice; ``overrides``, the Hydra
overrides beyond the search space (a baseline's ``loss=ce``), which the sweeper appends to the job's command line
with ``merge_overrides``; ``source_trials``, the search trials a top configuration was chosen from.

A baseline is ``{name: [overrides]}``; override keys that are search-space parameters become the trial's params,
the others go to ``overrides``; search parameters it does not name take the study's configured defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from segsweep.sweep.options import StudyConfig, study_options
from segsweep.sweep.record import CONFIRM, attrs, record

log = logging.getLogger(__name__)


def is_confirm(t: FrozenTrial | optuna.Trial) -> bool:
    return record(t).stage == CONFIRM


def search_trials(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if not is_confirm(t)]


# Search plots (importances, contour, slice, parallel coordinates) say something only about a search with enough
# complete trials; fewer, or a study without a search, gets none (its confirmation has its own figures).
ENOUGH_FOR_SEARCH_PLOTS = 4


def best_search_trial(study: optuna.Study) -> FrozenTrial | None:
    """The search's best complete trial (single objective); None when no search trial completed. Not
    ``study.best_trial``: a confirmation trial's value is one fresh seed's, and the luckiest of those is no search
    result (a study without a search names its confirmed best configuration instead: segsweep.report)."""
    done = search_trials(study, (TrialState.COMPLETE,))
    if not done:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(done, key=lambda t: t.value)


def confirm_trials(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if is_confirm(t)]


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: Sequence[str], extra: Sequence[str] | None) -> list[str]:
    """``base`` with every override whose key ``extra`` sets removed, then ``extra`` (later wins, no duplicates)."""
    extra = list(extra or [])
    keys = {override_key(o) for o in extra}
    return [o for o in base if override_key(o) not in keys] + extra


def configuration_id(params: Mapping[str, Any], overrides: Sequence[str] = ()) -> str:
    blob = json.dumps({"params": {k: params[k] for k in sorted(params)}, "overrides": sorted(overrides)},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def seed_values(t: FrozenTrial) -> dict[int, float]:
    """A finished trial's value per seed (``seed_values``; a trial from before repeats: its value, seed unknown)."""
    sv = record(t).seed_values
    if sv:
        return {int(k): float(v) for k, v in sv.items()}
    if t.state == TrialState.COMPLETE and t.values:
        return {-1 - t.number: float(t.values[0])}  # a key of its own: never paired with another trial
    return {}


@dataclass
class Configuration:
    """One configuration (params + extra overrides) and the per-seed values of its complete trials."""

    id: str
    params: dict[str, Any]
    overrides: list[str]
    trials: list[FrozenTrial] = field(default_factory=list)
    values: dict[int, float] = field(default_factory=dict)
    label: str = ""
    kind: str = "search"

    @property
    def mean(self) -> float:
        return sum(self.values.values()) / len(self.values) if self.values else float("nan")


def group(trials: Sequence[FrozenTrial]) -> list[Configuration]:
    """Complete trials grouped by configuration (params and overrides), seed values merged (a later trial of the
    same seed wins); in order of first appearance."""
    out: dict[str, Configuration] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE:
            continue
        r = record(t)
        overrides = list(r.overrides)
        cid = r.confirm_id or configuration_id(t.params, overrides)
        c = out.setdefault(cid, Configuration(cid, dict(t.params), overrides, label=r.confirm_config or "",
                                              kind=r.confirm_kind or "search"))
        c.trials.append(t)
        c.values.update(seed_values(t))
    return list(out.values())


@dataclass
class Planned:
    label: str
    kind: str  # top | baseline | top+baseline
    params: dict[str, Any]
    overrides: list[str]
    seeds: list[int]
    source_trials: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return configuration_id(self.params, self.overrides)


def _parse(value: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if str(choice) == value:
                return choice
        raise ValueError(f"{value!r} is not one of {list(dist.choices)}")
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, FloatDistribution):
        return float(value)
    return value


def search_space(cfg: DictConfig) -> dict[str, BaseDistribution]:
    """The search space of ``hydra.sweeper.params`` (the sweeper passes its own, command-line choices included)."""
    from segsweep import compat

    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    space, _, _ = compat.search_space([f"{k}={v}" for k, v in params.items()])
    return space


def _default(cfg: DictConfig, key: str) -> Any:
    """The configured value of a search parameter: a config group's chosen option, or the key's value."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    if key in choices:
        return choices[key]
    value = OmegaConf.select(cfg, key)
    if isinstance(value, DictConfig) or value is None:
        raise ValueError(f"config key 'study.baselines': a baseline must set the search parameter {key!r} "
                         "(no configured default found)")
    return value


def _seeds_of(opts: StudyConfig, trainer_seed: int) -> tuple[list[int], list[int]]:
    """(the search's seeds, the confirmation's fresh seeds)."""
    search = [int(s) for s in opts.seeds[: opts.repeats]] if opts.seeds is not None else \
        [trainer_seed + i for i in range(opts.repeats)]
    fresh = [opts.confirm.seed_base + i for i in range(opts.confirm.seeds)]
    clash = sorted(set(fresh) & set(search))
    if clash:
        raise ValueError(f"config key 'study.confirm.seed_base': the confirmation's seeds {fresh} must be fresh, but "
                         f"{clash} are search seeds (study.seeds/trainer.seed); choose another seed_base")
    return search, fresh


def plan_confirmation(study: optuna.Study, cfg: DictConfig, space: Mapping[str, BaseDistribution] | None = None,
                      opts: StudyConfig | None = None) -> list[Planned]:
    """The configurations to confirm: the ``top_k`` best search means (a trial's mean over its seeds; trials of
    one configuration pooled) and the baselines, each with the fresh seeds. Empty when ``top_k`` is 0 and no
    baseline is set. Single-objective studies only (a Pareto study has no "best mean"). ``opts``: ``study.*``
    already typed (``segsweep.config.study_options``), else read from ``cfg``."""
    opts = opts if opts is not None else study_options(cfg)
    top_k, baselines = opts.confirm.top_k, opts.baselines or {}
    if not top_k and not baselines:
        return []
    if len(study.directions) != 1:
        log.warning("confirmation stage skipped: study %r has %d objectives", study.study_name,
                    len(study.directions))
        return []
    space = dict(space) if space is not None else search_space(cfg)
    _, fresh = _seeds_of(opts, int(cfg.trainer.seed))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted((c for c in group(search_trials(study)) if c.values),
                    key=lambda c: (-c.mean if maximize else c.mean, c.trials[0].number))
    plans: dict[str, Planned] = {}
    for i, c in enumerate(ranked[:top_k]):
        p = Planned(f"top{i + 1}", "top", c.params, c.overrides, fresh, [t.number for t in c.trials])
        plans[p.id] = p
    for name, overrides in baselines.items():
        if isinstance(overrides, str) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ValueError(f"config key 'study.baselines.{name}': expected a list of Hydra overrides "
                             f"(key=value), got {overrides!r}")
        params: dict[str, Any] = {}
        extra = []
        for o in overrides:
            key, value = override_key(o), o.split("=", 1)[1]
            if key in space:
                params[key] = _parse(value, space[key])
            else:
                extra.append(o)
        for key in space:
            if key not in params:
                params[key] = _parse(str(_default(cfg, key)), space[key])
        p = Planned(str(name), "baseline", params, extra, fresh)
        if p.id in plans:  # a baseline that is also a top configuration: trained once, both labels
            q = plans[p.id]
            q.label, q.kind = f"{q.label}+{name}", "top+baseline"
        else:
            plans[p.id] = p
    return list(plans.values())


def enqueue_confirmation(study: optuna.Study, cfg: DictConfig, space: Mapping[str, BaseDistribution] | None = None,
                         opts: StudyConfig | None = None) -> int:
    """Enqueue the planned confirmation trials that the study does not hold yet; returns how many were enqueued.

    Safe to call again (a resumed sweep): a (configuration, seed) already in the study, waiting, running or
    finished, is not enqueued again, except when every trial of it was interrupted by a stopped sweep (those are
    enqueued once more, with ``retry_of``)."""
    have: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if (key := record(t).confirm_key) is not None:
            have.setdefault(key, []).append(t)
    n, labels = 0, set()
    for p in plan_confirmation(study, cfg, space, opts):
        for seed in p.seeds:
            key = f"{p.id}@{seed}"
            earlier = have.get(key, [])
            if earlier and not all(t.state == TrialState.FAIL and record(t).interrupted for t in earlier):
                continue
            new = attrs(stage=CONFIRM, seeds=[seed], confirm_config=p.label, confirm_kind=p.kind, confirm_id=p.id,
                        confirm_key=key, overrides=p.overrides, source_trials=p.source_trials)
            if earlier:
                new["retry_of"] = max(t.number for t in earlier)
            study.enqueue_trial(p.params, user_attrs=new, skip_if_exists=False)
            n += 1
            labels.add(p.label)
    if n:
        log.info("confirmation stage: %d trial(s) enqueued (%s)", n, ", ".join(sorted(labels)))
    return n


def pending(study: optuna.Study) -> int:
    """Confirmation trials not finished yet (waiting or running): the sweeper runs until this is 0."""
    return len(confirm_trials(study, states=(TrialState.WAITING, TrialState.RUNNING)))
