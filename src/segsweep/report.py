"""The study report: the answer with its interval and paired test, recomputed from the stored per-seed values.

    python -m segsweep.report multirun/<study> [multirun/<other> ...] [--out DIR]
    python -m segsweep.report --storage sqlite:///multirun/default/optuna.db --study default [--study other]

writes ``report.md`` and a self-contained ``report.html`` (figures embedded as base64 PNG) into ``--out`` (default:
``<sweep dir>/study_summary/`` for one study directory, beside the sweep's summary, ``./report/`` otherwise). The
sweep writes the same files there (``segsweep.sweep.summary``) and logs them as ``study/report.*`` on the parent
run. Every number comes from the trials' user attrs written by ``segsweep.seeds`` (``seed_values``, ``seed_iou``,
``seed_monitors``) through ``segsweep.stats``, so anyone with the storage can recompute it. The verdict is drawn
from the confirmation trials (fresh seeds, ``segsweep.sweep.confirm``) when the study has them, else from the
search (and says so).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from segsweep import stats  # noqa: E402
from segsweep.seeds import final_monitors  # noqa: E402
from segsweep.sweep import confirm  # noqa: E402

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
class Config:
    """One configuration of the report: its per-seed values, class IoUs and final split monitors."""

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


def _config(c: confirm.Configuration, label: str) -> Config:
    iou, monitors = {}, {}
    for t in c.trials:
        for k, v in (t.user_attrs.get("seed_iou") or {}).items():
            iou[int(k)] = v
        mon = t.user_attrs.get("seed_monitors") or {}
        if not mon and t.user_attrs.get("output_dir"):  # a trial from before seed_monitors: its metrics.jsonl
            m = final_monitors(Path(t.user_attrs["output_dir"]) / "metrics.jsonl")
            mon = {str(s): m for s in (t.user_attrs.get("seeds") or [])} if m else {}
        for k, v in mon.items():
            monitors[int(k)] = v
    panels = next((p for t in c.trials if t.user_attrs.get("output_dir")
                   for p in sorted(Path(t.user_attrs["output_dir"]).glob("**/plots/val_panels.png"))), None)
    return Config(label, c.kind, describe(c.params, c.overrides), c.values, iou, monitors,
                  [t.number for t in c.trials], panels)


@dataclass
class StudyReport:
    name: str
    objective: str
    maximize: bool
    counts: dict[str, int]
    search: list[Config]
    confirmed: list[Config]
    comparisons: list[tuple[Config, Config, stats.Paired, float]] = field(default_factory=list)
    best: Config | None = None
    reference: Config | None = None
    before: Config | None = None  # the per-class table's columns: a baseline, and the configuration against it
    after: Config | None = None
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
        if lab := t.user_attrs.get("labels"):
            evaluated = lab.get("evaluated", lab["classes"])
            subset = "" if len(evaluated) == len(lab["classes"]) else \
                f"the {len(evaluated)} classes of {lab.get('eval_name', 'data.eval_classes')}"
            return list(lab["classes"]), set(lab.get("rare", [])), subset
    names: dict[str, None] = {}
    for t in trials:
        for iou in (t.user_attrs.get("seed_iou") or {}).values():
            names.update(dict.fromkeys(iou))
    return list(names), set(), ""


def _rank(configs: list[Config], maximize: bool) -> list[Config]:
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
    objective = study.user_attrs.get("objective") or (names[0] if names else "val/mIoU")
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in confirm.search_trials(study)) for s in TrialState}
    search = _rank([_config(c, f"trial {c.trials[0].number}") for c in confirm.group(confirm.search_trials(study))
                    if c.values], maximize)
    confirmed = _rank([_config(c, c.label) for c in confirm.group(confirm.confirm_trials(study))], maximize)
    counts["confirm"] = sum(t.state == TrialState.COMPLETE for t in trials if confirm.is_confirm(t))
    r = StudyReport(study.study_name, objective, maximize, counts, search, confirmed)
    r.classes, r.rare, r.evaluated = _label_set(trials)
    r.min_effect = float(min_effect if min_effect is not None else
                         study.user_attrs.get("min_effect", stats.DEFAULT_MIN_EFFECT))
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


# ---------------------------------------------------------------- rendering: a list of blocks, in md and html


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _fig_ranked(r: StudyReport) -> bytes | None:
    rows = r.confirmed or r.search[:15]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for i, c in enumerate(reversed(rows)):
        s = c.summary
        ax.plot(list(c.values.values()), [i] * len(c.values), "o", color="0.6", ms=4)
        if s.n >= 2:
            ax.errorbar(s.mean, i, xerr=s.half_width, fmt="D", color="C0", capsize=4)
        else:
            ax.plot(s.mean, i, "D", color="C0")
    ax.set_yticks(range(len(rows)), [c.label for c in reversed(rows)])
    ax.set_xlabel(f"{r.objective}: seeds (grey), mean and 95 % CI")
    ax.set_title("confirmed configurations (fresh seeds)" if r.confirmed else "search configurations")
    ax.grid(alpha=0.3)
    return _png(fig)


def _fig_diffs(r: StudyReport) -> bytes | None:
    if not r.comparisons:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(r.comparisons) + 1.2))
    for i, (_, _, p, _) in enumerate(r.comparisons):
        ax.errorbar(p.mean_diff, i, xerr=0 if math.isnan(p.half_width) else p.half_width, fmt="o", capsize=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(r.comparisons)), [f"{c.label} − {b.label}" for c, b, _, _ in r.comparisons])
    ax.set_xlabel(f"paired difference in {r.objective} (95 % CI)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _class_means(c: Config, classes: list[str]) -> dict[str, float]:
    out = {}
    for name in classes:
        v = [iou[name] for iou in c.iou.values() if name in iou]
        if v:
            out[name] = sum(v) / len(v)
    return out


def _fig_classes(r: StudyReport) -> bytes | None:
    if r.before is None or r.after is None or not r.after.iou:
        return None
    a, b = _class_means(r.before, r.classes), _class_means(r.after, r.classes)
    names = [n for n in r.classes if n in a or n in b]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [a.get(n, 0) for n in names], 0.4, label=r.before.label)
    ax.bar([i + 0.2 for i in x], [b.get(n, 0) for n in names], 0.4, label=r.after.label)
    ax.set_xticks(list(x), [n + (" *" if n in r.rare else "") for n in names], rotation=60, ha="right")
    ax.set_ylabel("val IoU (mean over seeds)")
    ax.set_title("per-class IoU (* rare classes)")
    ax.legend()
    return _png(fig)


def blocks(r: StudyReport, summary_dir: Path | None = None) -> list[tuple]:
    out: list[tuple] = [("h2", f"Study {r.name}"), ("p", f"**{r.answer}**")]
    if r.evaluated:
        out.append(("p", f"{r.objective} averages {r.evaluated} (data.eval_classes); per-class IoUs cover all "
                         f"{len(r.classes)}."))
    c = r.counts
    out.append(("p", f"Search: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed "
                     f"trials; confirmation: {c.get('confirm', 0)} complete trials. Intervals are two-sided 95 % t "
                     "intervals; comparisons are paired by seed (common random numbers) with the paired t-test, "
                     "Holm-corrected over all comparisons (with 3–5 seeds Wilcoxon's signed-rank test cannot reach "
                     "p < 0.05). Every number is computed from the per-seed values stored in the study."))
    if r.warning:
        out.append(("warn", r.warning))
    head = ["rank", "configuration", "n seeds", "mean", "std", "95 % CI"]

    def ranked(rows):
        return [[str(i + 1), f"**{x.label}** {x.description}" if x.label != x.description else x.label,
                 str(x.summary.n), f"{x.summary.mean:.4f}",
                 "n/a" if math.isnan(x.summary.std) else f"{x.summary.std:.4f}", fmt_ci(x.summary)]
                for i, x in enumerate(rows)]

    if r.confirmed:
        out += [("h3", "Confirmed configurations (fresh seeds), ranked by mean"), ("table", head, ranked(r.confirmed))]
    if r.search:
        out += [("h3", "Search configurations, ranked by mean (top 15)"), ("table", head, ranked(r.search[:15]))]
    if (png := _fig_ranked(r)) is not None:
        out.append(("img", "ranked", png))
    if r.comparisons:
        rows = [[x.label, b.label, str(p.n), f"{p.mean_diff:+.4f}",
                 "n/a" if math.isnan(p.ci_low) else f"[{p.ci_low:+.4f}, {p.ci_high:+.4f}]", fmt_p(p.p), fmt_p(q),
                 stats.verdict(p, r.min_effect).describe()] for x, b, p, q in r.comparisons]
        out += [("h3", "Paired differences to the baselines"),
                ("p", f"A gain matters when it is at least the study's minimum effect, {r.min_effect:.3g} "
                      f"{r.objective} (study.min_effect): *better* when the whole 95 % interval lies above it, "
                      "*equivalent* when two one-sided tests (TOST, 5 % each) put the difference inside ± it, "
                      "*undecided* otherwise, with the seeds that would likely decide from the observed spread."),
                ("table", ["configuration", "baseline", "n pairs", "mean difference", "95 % CI", "p (paired t)",
                           "p (Holm)", "verdict"], rows)]
        if (png := _fig_diffs(r)) is not None:
            out.append(("img", "differences", png))
    if r.before is not None and r.after is not None and r.after.iou:
        a, b = _class_means(r.before, r.classes), _class_means(r.after, r.classes)
        rows = []
        for n in r.classes:
            if n in a or n in b:
                d = (b.get(n, math.nan) - a.get(n, math.nan)) * 100
                rows.append([n + (" (rare)" if n in r.rare else ""), f"{a.get(n, math.nan) * 100:.1f} %",
                             f"{b.get(n, math.nan) * 100:.1f} %", f"{d:+.1f} %p"])
        for key, names in (("Mean IoU (classes above)", r.classes), ("Mean IoU, rare classes", sorted(r.rare))):
            ma = [a[n] for n in names if n in a and n in b]
            mb = [b[n] for n in names if n in a and n in b]
            if ma:
                va, vb = sum(ma) / len(ma) * 100, sum(mb) / len(mb) * 100
                rows.append([f"**{key}**", f"{va:.1f} %", f"{vb:.1f} %", f"{vb - va:+.1f} %p"])
        va, vb = r.before.summary.mean * 100, r.after.summary.mean * 100
        rows.append([f"**{r.objective} (objective)**", f"{va:.1f} %", f"{vb:.1f} %", f"{vb - va:+.1f} %p"])
        out += [("h3", f"Per-class IoU: {r.before.label} → {r.after.label}"),
                ("p", f"Before: {r.before.label} ({r.before.description}); after: {r.after.label} "
                      f"({r.after.description}); means over each one's seeds."),
                ("table", ["class", f"before ({r.before.label})", f"after ({r.after.label})", "Δ"], rows)]
        if (png := _fig_classes(r)) is not None:
            out.append(("img", "classes", png))
        for c in (r.after, r.before):  # what the models see: the best configuration's and the reference's
            if c is not None and c.panels is not None and c.panels.is_file():
                out += [("p", f"Validation images of {c.label}: image | ground truth | prediction."),
                        ("img", "panels_" + re.sub(r"\W+", "_", c.label), c.panels.read_bytes())]
    gap_rows = []
    for x in r.confirmed or r.search[:1]:
        terms = sorted({k.rsplit("_", 1)[0] for m in x.monitors.values() for k in m})
        for term in terms:
            real = [m[f"{term}_real"] for m in x.monitors.values() if f"{term}_real" in m]
            syn = [m[f"{term}_synthetic"] for m in x.monitors.values() if f"{term}_synthetic" in m]
            if real or syn:
                mr = sum(real) / len(real) if real else math.nan
                ms = sum(syn) / len(syn) if syn else math.nan
                gap_rows.append([x.label, term, *("n/a" if math.isnan(v) else f"{v:.4f}" for v in (mr, ms)),
                                 "n/a" if math.isnan(ms - mr) else f"{ms - mr:+.4f}"])  # n/a: no such samples
    if gap_rows:
        out += [("h3", "Real vs synthetic at the end of training"),
                ("p", "Last logged unweighted training loss of the real and of the synthetic samples (split "
                      "monitors), mean over seeds; a large gap means the synthetic domain is fitted differently."),
                ("table", ["configuration", "term", "real", "synthetic", "gap (synthetic − real)"], gap_rows)]
    s, dof = r.noise
    ratio = s / r.search_spread if r.search_spread and not math.isnan(s) and not math.isnan(r.search_spread) \
        else math.nan
    out += [("h3", "Seed noise and the spread of the search"),
            ("table", ["quantity", "value"],
             [["seed noise: pooled std of repeats of one configuration", "n/a" if math.isnan(s) else
               f"{s:.4f} ({dof} degrees of freedom)"],
              ["search spread: std of the configurations' means", "n/a" if math.isnan(r.search_spread) else
               f"{r.search_spread:.4f} ({len(r.search)} configurations)"],
              ["seed noise / search spread", "n/a" if math.isnan(ratio) else f"{ratio:.2f}"]])]
    if not math.isnan(ratio) and ratio > 0.5:
        out.append(("warn", "The seed noise is more than half the spread of the search: much of the search's "
                            "ranking is luck. Trust only the confirmed, paired comparisons."))
    if r.importances:
        out += [("h3", "Parameter importances (search trials)"),
                ("table", ["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in r.importances.items()])]
    for name in OPTUNA_PLOTS:
        path = summary_dir / f"{name}.png" if summary_dir else None
        if path is not None and path.exists():
            out.append(("img", name, path.read_bytes()))
    return out


def _cells(row) -> str:
    return "| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |"


def to_markdown(bs: list[tuple], images: dict[int, str]) -> str:
    lines = []
    for i, b in enumerate(bs):
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "warn":
            lines += [f"> **Warning:** {b[1]}", ""]
        elif kind == "table":
            lines += [_cells(b[1]), _cells(["---"] * len(b[1])), *(_cells(r) for r in b[2]), ""]
        elif kind == "img":
            lines += [f"![{b[1]}]({images[i]})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(bs: list[tuple], title: str) -> str:
    body = []
    for b in bs:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "warn":
            body.append(f'<p class="warn"><b>Warning:</b> {_inline(b[1])}</p>')
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(b[2]).decode()
            body.append(f'<figure><img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px}"
             "th{background:#eee}.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:6px}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _atomic(path: Path, data: str | bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)
    return path


def record(r: StudyReport) -> tuple[dict[str, str], dict[str, float]]:
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


def write_report(studies: Sequence[optuna.Study], out_dir: Path, summary_dir: Path | None = None,
                 client=None, parent_run_id: str | None = None, min_effect: float | None = None,
                 reports: Sequence[StudyReport] | None = None) -> list[Path]:
    """Write ``report.md``, ``report.html`` (and the md's PNGs) into ``out_dir``; with ``client`` and
    ``parent_run_id`` also log report.md and report.html under ``study/`` of the study's MLflow parent run.
    ``reports``: the studies' already built reports (else built here). Returns the paths, report.md and
    report.html first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = list(reports) if reports is not None else [build(s, min_effect) for s in studies]
    bs: list[tuple] = [("h1", "Study report: " + ", ".join(r.name for r in reports))]
    if len(reports) > 1:
        bs.append(("table", ["study", "answer"], [[r.name, r.answer] for r in reports]))
    for r in reports:
        bs += blocks(r, summary_dir if len(reports) == 1 else None)
    images, paths = {}, []
    for i, b in enumerate(bs):
        if b[0] == "img":
            name = f"report_{i:02d}_{b[1]}.png"
            paths.append(_atomic(out_dir / name, b[2]))
            images[i] = name
    paths.insert(0, _atomic(out_dir / "report.html", to_html(bs, bs[0][1])))
    paths.insert(0, _atomic(out_dir / "report.md", to_markdown(bs, images)))
    if client is not None and parent_run_id:  # the html holds the figures; the md's PNGs stay on disk
        for p in paths[:2]:
            client.log_artifact(parent_run_id, str(p), artifact_path="study")
    return paths


def _from_dir(path: Path) -> optuna.Study:
    db = path / "optuna.db"
    if not db.exists():
        raise SystemExit(f"{db} does not exist: give a sweep directory (multirun/<study>) or --storage/--study")
    storage = f"sqlite:///{db.resolve()}"
    names = optuna.study.get_all_study_names(storage)
    name = path.name if path.name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise SystemExit(f"{db} holds the studies {names}: name one with --storage {storage} --study NAME")
    return optuna.load_study(study_name=name, storage=storage)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m segsweep.report", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path, help="sweep directories (multirun/<study>)")
    ap.add_argument("--storage", help="an Optuna storage URL")
    ap.add_argument("--study", action="append", default=[], help="a study in --storage (repeatable)")
    ap.add_argument("--out", type=Path, help="where report.md and report.html go")
    ap.add_argument("--min-effect", type=float, help="the smallest difference worth having (default: the study's "
                    "study.min_effect)")
    a = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = [_from_dir(d) for d in a.dirs]
    if a.study and not a.storage:
        ap.error("--study needs --storage")
    studies += [optuna.load_study(study_name=n, storage=a.storage) for n in a.study]
    if not studies:
        ap.error("give a sweep directory or --storage URL --study NAME")
    one_dir = len(studies) == 1 and len(a.dirs) == 1
    out = a.out or (a.dirs[0] / "study_summary" if one_dir else Path("report"))
    summary = a.dirs[0] / "study_summary" if one_dir else None
    reports = [build(s, a.min_effect) for s in studies]
    paths = write_report(studies, out, summary, reports=reports)
    print("\n".join(r.answer for r in reports))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
