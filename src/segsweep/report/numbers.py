"""The numbers of a study report, computed once from the per-seed values stored in the study.

``build`` reads each configuration's per-seed values, class IoUs and final split monitors from the trials'
records (``segsweep.sweep.record``, written by ``segsweep.seeds``), ranks the configurations, pairs them with the
baselines by seed, and draws the verdict (``segsweep.stats``); ``segsweep.report.render`` lays the result out,
``parent_run_record`` turns it into the study's MLflow tags and metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from segsweep import metrics, stats
from segsweep.sweep import confirm
from segsweep.sweep.record import MIN_EFFECT, record

PRETTY = {"loss.ce_weight": "α = {:.2f}", "loss.dice_weight": "β = {:.2f}",
          "dataset_mix.synthetic_loss_weight": "synthetic weight {:.2f}", "dataset_mix.real_ratio": "real ratio {:.2f}"}
OPTUNA_PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice", "contour",
                "real_vs_synthetic")


def describe(params: dict, overrides: Sequence[str] = ()) -> str:
    parts = list(overrides)
    floats = {k: v for k, v in params.items() if isinstance(v, float)}
    parts += [f"{k}={v}" for k, v in params.items() if k not in floats]
    parts += [PRETTY[k].format(floats[k]) for k in PRETTY if k in floats]
    parts += [f"{k}={v:.3g}" for k, v in floats.items() if k not in PRETTY]
    return ", ".join(parts)


def fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def fmt_ci(s) -> str:
    return "n/a" if math.isnan(s.ci_low) else f"[{s.ci_low:.3f}, {s.ci_high:.3f}]"


@dataclass
class Result:
    """One configuration's results: its per-seed values, class IoUs and final split monitors."""

    label: str
    kind: str
    description: str
    values: dict[int, float]
    iou: dict[int, dict[str, float]]
    monitors: dict[int, dict[str, float]]
    trials: list[int]
    panels: Path | None = None  # a run's validation panels (image | ground truth | prediction), when drawn

    @property
    def summary(self) -> stats.Summary:
        return stats.summarize(list(self.values.values()))


def _result(c: confirm.Configuration, label: str) -> Result:
    iou, monitors = {}, {}
    for t in c.trials:
        for k, v in record(t).seed_iou.items():
            iou[int(k)] = v
        for k, v in record(t).seed_monitors.items():
            monitors[int(k)] = v
    dirs = [record(t).output_dir for t in c.trials]
    panels = next((p for d in dirs if d for p in sorted(Path(d).glob("**/plots/val_panels.png"))), None)
    return Result(label, c.kind, describe(c.params, c.overrides), c.values, iou, monitors,
                  [t.number for t in c.trials], panels)


@dataclass
class StudyReport:
    name: str
    objective: str
    maximize: bool
    counts: dict[str, int]
    search: list[Result]
    confirmed: list[Result]
    comparisons: list[tuple[Result, Result, stats.Paired, float]] = field(default_factory=list)
    best: Result | None = None
    reference: Result | None = None
    before: Result | None = None  # the per-class table's columns: a baseline, and the configuration against it
    after: Result | None = None
    noise: tuple[float, int] = (math.nan, 0)
    search_spread: float = math.nan
    warning: str | None = None
    importances: dict[str, float] = field(default_factory=dict)
    answer: str = ""
    min_effect: float = stats.DEFAULT_MIN_EFFECT  # the smallest difference worth having (study.min_effect)
    classes: list[str] = field(default_factory=list)  # the study's label set, in train-id order
    rare: set[str] = field(default_factory=set)
    evaluated: str = ""  # what the objective's mIoU averages when not every class (data.eval_classes)


def _label_set(trials: list) -> tuple[list[str], set[str], str]:
    """Class names, rare classes and what the objective averages (the evaluated subset) from the trials'
    ``labels`` attr (written by segsweep.seeds); a study from before it: the order of the per-class IoUs."""
    for t in trials:
        if lab := record(t).labels:
            evaluated = lab.get("evaluated", lab["classes"])
            subset = "" if len(evaluated) == len(lab["classes"]) else \
                f"the {len(evaluated)} classes of {lab.get('eval_name', 'data.eval_classes')}"
            return list(lab["classes"]), set(lab.get("rare", [])), subset
    names: dict[str, None] = {}
    for t in trials:
        for iou in record(t).seed_iou.values():
            names.update(dict.fromkeys(iou))
    return list(names), set(), ""


def _rank(configs: list[Result], maximize: bool) -> list[Result]:
    return sorted(configs, key=lambda c: (-c.summary.mean if maximize else c.summary.mean, c.trials[0]))


def build(study: optuna.Study, min_effect: float | None = None) -> StudyReport:
    """Everything the report says about one single-objective study, from its stored per-seed values;
    ``min_effect``: the study's own (a study attr written by the sweeper) unless given."""
    if len(study.directions) > 1:
        r = StudyReport(study.study_name, "objectives", True, {}, [], [])
        r.answer = (f"Study {study.study_name!r} has {len(study.directions)} objectives: its answer is the Pareto "
                    "front (pareto_front.png on the study's MLflow run), not one best configuration.")
        return r
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    names = study.metric_names
    objective = names[0] if names else metrics.MIOU
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in confirm.search_trials(study)) for s in TrialState}
    search = _rank([_result(c, f"trial {c.trials[0].number}") for c in confirm.group(confirm.search_trials(study))
                    if c.values], maximize)
    confirmed = _rank([_result(c, c.label) for c in confirm.group(confirm.confirm_trials(study))], maximize)
    counts["confirm"] = sum(t.state == TrialState.COMPLETE for t in trials if confirm.is_confirm(t))
    r = StudyReport(study.study_name, objective, maximize, counts, search, confirmed)
    r.classes, r.rare, r.evaluated = _label_set(trials)
    r.min_effect = float(min_effect if min_effect is not None else
                         study.user_attrs.get(MIN_EFFECT, stats.DEFAULT_MIN_EFFECT))
    pool = confirmed or search
    if not pool:
        r.answer = f"No complete trial yet in study {study.study_name!r}: nothing to report."
        return r
    # in the study's order (study.baselines, enqueued in that order): the first is the reference
    baselines = sorted((c for c in confirmed if "baseline" in c.kind), key=lambda c: min(c.trials))
    for c in confirmed:  # each configuration against each baseline (a pair of baselines once)
        for b in baselines:
            if b is c or ("baseline" in c.kind and baselines.index(b) >= baselines.index(c)):
                continue
            r.comparisons.append((c, b, stats.paired(c.values, b.values), math.nan))
    adjusted = stats.holm([p.p for _, _, p, _ in r.comparisons])
    r.comparisons = [(c, b, p, q) for (c, b, p, _), q in zip(r.comparisons, adjusted)]
    r.best = pool[0]
    r.reference = next((b for b in baselines if b is not r.best), None)
    r.before, r.after = r.reference, r.best
    if r.reference is None and "top" not in r.best.kind:  # the only baseline won: what the best searched one changes
        r.before, r.after = r.best, next((c for c in confirmed if "top" in c.kind), None)
    r.noise = stats.pooled_std([list(c.values.values()) for c in confirmed + search])
    means = [c.summary.mean for c in search]
    r.search_spread = stats.summarize(means).std if len(means) >= 2 else math.nan
    if len(pool) >= 2:
        within, how = stats.margin_within_noise(pool[0].values, pool[1].values, *r.noise)
        margin = pool[0].summary.mean - pool[1].summary.mean
        if within:
            r.warning = (f"The best configuration ({pool[0].label}) leads the runner-up ({pool[1].label}) by "
                         f"{margin:+.4f}, which is within the seed noise ({how}). Do not call it the winner: "
                         "train more seeds, or treat the two as equivalent.")
    r.importances = _importances(study, maximize)
    r.answer = _answer(r)
    return r


def _answer(r: StudyReport) -> str:
    b, s = r.best, r.best.summary
    where = "confirmed on fresh seeds" if r.confirmed else "search only, not confirmed on fresh seeds"
    ci = f" ± {s.half_width:.3f} (95 % CI, {s.n} seeds)" if s.n >= 2 else f" ({s.n} seed, no interval)"
    text = f"best: {b.description or b.label}" + (f" ({b.label})" if r.confirmed else "")
    text += f" — {r.objective} {s.mean:.3f}{ci}"
    if r.reference is not None:
        pair = next(((p, q) for c, bb, p, q in r.comparisons if {c.label, bb.label} == {b.label, r.reference.label}),
                    None)
        p = stats.paired(b.values, r.reference.values)
        q = pair[1] if pair else p.p
        text += (f", {p.mean_diff:+.3f} over {r.reference.label} (paired t over {p.n} seeds, "
                 f"Holm-corrected p = {fmt_p(q)}): {stats.verdict(p, r.min_effect).describe()}")
    elif r.after is not None and r.after is not b:  # the baseline itself is best
        pair = next((q for c, bb, _, q in r.comparisons if c is r.after and bb is b), math.nan)
        p = stats.paired(r.after.values, b.values)
        text += (f"; no searched configuration beats it (the best, {r.after.label}: {p.mean_diff:+.3f}, paired t "
                 f"over {p.n} seeds, Holm-corrected p = {fmt_p(pair)}: {stats.verdict(p, r.min_effect).describe()})")
    return text + f" [{where}]."


def _importances(study: optuna.Study, maximize: bool) -> dict[str, float]:
    done = confirm.search_trials(study, states=(TrialState.COMPLETE,))
    varied = {k for k in {k for t in done for k in t.params} if len({repr(t.params.get(k)) for t in done}) > 1}
    if len(done) < confirm.ENOUGH_FOR_SEARCH_PLOTS or not varied:
        return {}
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(done)
    sign = -1.0 if maximize else 1.0  # Optuna's default evaluator ranks low targets as good (see summary.py)
    try:
        with warnings.catch_warnings():  # its "low target values" note: the sign above takes care of that
            warnings.filterwarnings("ignore", ".*importances of params to achieve low", UserWarning)
            return optuna.importance.get_param_importances(copy, target=lambda t: sign * t.values[0])
    except Exception:  # too few or degenerate trials
        return {}


def parent_run_record(r: StudyReport) -> tuple[dict[str, str], dict[str, float]]:
    """What the study's MLflow parent run says of its answer: tags naming the confirmed best configuration, and
    metrics to chart and compare across studies: per confirmed configuration its mean, std and 95 % CI bounds,
    and each paired difference to the reference with its interval (keys ``confirm/<label>/...``)."""
    tags, metrics = {}, {}
    if r.confirmed:
        b = r.confirmed[0]
        s = b.summary
        tags = {"best_config": b.label, "best_config_description": b.description[:5000],
                "best_config_mean": f"{s.mean:.4f}", "best_config_ci": fmt_ci(s)}
    for c in r.confirmed:
        s = c.summary
        metrics.update({f"confirm/{c.label}/mean": s.mean, f"confirm/{c.label}/std": s.std,
                        f"confirm/{c.label}/ci_low": s.ci_low, f"confirm/{c.label}/ci_high": s.ci_high})
    for c, b, p, _ in r.comparisons:  # every configuration against every baseline
        metrics.update({f"confirm/{c.label}/diff_vs_{b.label}": p.mean_diff,
                        f"confirm/{c.label}/diff_vs_{b.label}_ci_low": p.ci_low,
                        f"confirm/{c.label}/diff_vs_{b.label}_ci_high": p.ci_high})
    if r.search:
        metrics["search/best_mean"] = r.search[0].summary.mean
    return tags, {k: v for k, v in metrics.items() if not math.isnan(v)}


def class_means(c: Result, classes: list[str]) -> dict[str, float]:
    """Each class's IoU, mean over the configuration's seeds (classes no seed measured are left out)."""
    out = {}
    for name in classes:
        v = [iou[name] for iou in c.iou.values() if name in iou]
        if v:
            out[name] = sum(v) / len(v)
    return out
