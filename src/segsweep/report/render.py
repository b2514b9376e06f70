"""The study report laid out: typed blocks (headings, text, tables, figures) from the numbers of
``segsweep.report.numbers``, rendered as Markdown and as one self-contained HTML page (figures inline)."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from segsweep import stats  # noqa: E402
from segsweep.io import atomic_write  # noqa: E402
from segsweep.report.numbers import (  # noqa: E402
    OPTUNA_PLOTS,
    StudyReport,
    build,
    class_means,
    fmt_ci,
    fmt_p,
)


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str  # **bold** spans allowed


@dataclass
class Alert:
    text: str


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str
    png: bytes


Block = Heading | Text | Alert | Table | Figure


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


def _fig_classes(r: StudyReport) -> bytes | None:
    if r.before is None or r.after is None or not r.after.iou:
        return None
    a, b = class_means(r.before, r.classes), class_means(r.after, r.classes)
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


def blocks(r: StudyReport, summary_dir: Path | None = None) -> list[Block]:
    out: list[Block] = [Heading(2, f"Study {r.name}"), Text(f"**{r.answer}**")]
    if r.evaluated:
        out.append(Text(f"{r.objective} averages {r.evaluated} (data.eval_classes); per-class IoUs cover all "
                         f"{len(r.classes)}."))
    c = r.counts
    out.append(Text(f"Search: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, {c.get('fail', 0)} failed "
                     f"trials; confirmation: {c.get('confirm', 0)} complete trials. Intervals are two-sided 95 % t "
                     "intervals; comparisons are paired by seed (common random numbers) with the paired t-test, "
                     "Holm-corrected over all comparisons (with 3–5 seeds Wilcoxon's signed-rank test cannot reach "
                     "p < 0.05). Every number is computed from the per-seed values stored in the study."))
    if r.warning:
        out.append(Alert(r.warning))
    head = ["rank", "configuration", "n seeds", "mean", "std", "95 % CI"]

    def ranked(rows):
        return [[str(i + 1), f"**{x.label}** {x.description}" if x.label != x.description else x.label,
                 str(x.summary.n), f"{x.summary.mean:.4f}",
                 "n/a" if math.isnan(x.summary.std) else f"{x.summary.std:.4f}", fmt_ci(x.summary)]
                for i, x in enumerate(rows)]

    if r.confirmed:
        out += [Heading(3, "Confirmed configurations (fresh seeds), ranked by mean"), Table(head, ranked(r.confirmed))]
    if r.search:
        out += [Heading(3, "Search configurations, ranked by mean (top 15)"), Table(head, ranked(r.search[:15]))]
    if (png := _fig_ranked(r)) is not None:
        out.append(Figure("ranked", png))
    if r.comparisons:
        rows = [[x.label, b.label, str(p.n), f"{p.mean_diff:+.4f}",
                 "n/a" if math.isnan(p.ci_low) else f"[{p.ci_low:+.4f}, {p.ci_high:+.4f}]", fmt_p(p.p), fmt_p(q),
                 stats.verdict(p, r.min_effect).describe()] for x, b, p, q in r.comparisons]
        out += [Heading(3, "Paired differences to the baselines"),
                Text(f"A gain matters when it is at least the study's minimum effect, {r.min_effect:.3g} "
                      f"{r.objective} (study.min_effect): *better* when the whole 95 % interval lies above it, "
                      "*equivalent* when two one-sided tests (TOST, 5 % each) put the difference inside ± it, "
                      "*undecided* otherwise, with the seeds that would likely decide from the observed spread."),
                Table(["configuration", "baseline", "n pairs", "mean difference", "95 % CI", "p (paired t)",
                           "p (Holm)", "verdict"], rows)]
        if (png := _fig_diffs(r)) is not None:
            out.append(Figure("differences", png))
    if r.before is not None and r.after is not None and r.after.iou:
        a, b = class_means(r.before, r.classes), class_means(r.after, r.classes)
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
        out += [Heading(3, f"Per-class IoU: {r.before.label} → {r.after.label}"),
                Text(f"Before: {r.before.label} ({r.before.description}); after: {r.after.label} "
                      f"({r.after.description}); means over each one's seeds."),
                Table(["class", f"before ({r.before.label})", f"after ({r.after.label})", "Δ"], rows)]
        if (png := _fig_classes(r)) is not None:
            out.append(Figure("classes", png))
        for c in (r.after, r.before):  # what the models see: the best configuration's and the reference's
            if c is not None and c.panels is not None and c.panels.is_file():
                out += [Text(f"Validation images of {c.label}: image | ground truth | prediction."),
                        Figure("panels_" + re.sub(r"\W+", "_", c.label), c.panels.read_bytes())]
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
        out += [Heading(3, "Real vs synthetic at the end of training"),
                Text("Last logged unweighted training loss of the real and of the synthetic samples (split "
                      "monitors), mean over seeds; a large gap means the synthetic domain is fitted differently."),
                Table(["configuration", "term", "real", "synthetic", "gap (synthetic − real)"], gap_rows)]
    s, dof = r.noise
    ratio = s / r.search_spread if r.search_spread and not math.isnan(s) and not math.isnan(r.search_spread) \
        else math.nan
    out += [Heading(3, "Seed noise and the spread of the search"),
            Table(["quantity", "value"],
             [["seed noise: pooled std of repeats of one configuration", "n/a" if math.isnan(s) else
               f"{s:.4f} ({dof} degrees of freedom)"],
              ["search spread: std of the configurations' means", "n/a" if math.isnan(r.search_spread) else
               f"{r.search_spread:.4f} ({len(r.search)} configurations)"],
              ["seed noise / search spread", "n/a" if math.isnan(ratio) else f"{ratio:.2f}"]])]
    if not math.isnan(ratio) and ratio > 0.5:
        out.append(Alert("The seed noise is more than half the spread of the search: much of the search's "
                            "ranking is luck. Trust only the confirmed, paired comparisons."))
    if r.importances:
        out += [Heading(3, "Parameter importances (search trials)"),
                Table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in r.importances.items()])]
    for name in OPTUNA_PLOTS:
        path = summary_dir / f"{name}.png" if summary_dir else None
        if path is not None and path.exists():
            out.append(Figure(name, path.read_bytes()))
    return out


def _cells(row) -> str:
    return "| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |"


def to_markdown(bs: list[Block], images: dict[int, str]) -> str:
    """Markdown; ``images``: the file name of each figure, by its index in ``bs``."""
    lines: list[str] = []
    for i, b in enumerate(bs):
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            lines += [b.text, ""]
        elif isinstance(b, Alert):
            lines += [f"> **Warning:** {b.text}", ""]
        elif isinstance(b, Table):
            lines += [_cells(b.head), _cells(["---"] * len(b.head)), *(_cells(r) for r in b.rows), ""]
        elif isinstance(b, Figure):
            lines += [f"![{b.name}]({images[i]})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(bs: list[Block], title: str) -> str:
    body = []
    for b in bs:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Alert):
            body.append(f'<p class="warn"><b>Warning:</b> {_inline(b.text)}</p>')
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.head)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode()
            body.append(f'<figure><img alt="{html.escape(b.name)}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px}"
             "th{background:#eee}.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:6px}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


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
    bs: list[Block] = [Heading(1, "Study report: " + ", ".join(r.name for r in reports))]
    if len(reports) > 1:
        bs.append(Table(["study", "answer"], [[r.name, r.answer] for r in reports]))
    for r in reports:
        bs += blocks(r, summary_dir if len(reports) == 1 else None)
    images, paths = {}, []
    for i, b in enumerate(bs):
        if isinstance(b, Figure):
            name = f"report_{i:02d}_{b.name}.png"
            paths.append(atomic_write(out_dir / name, b.png))
            images[i] = name
    paths.insert(0, atomic_write(out_dir / "report.html", to_html(bs, bs[0].text)))
    paths.insert(0, atomic_write(out_dir / "report.md", to_markdown(bs, images)))
    if client is not None and parent_run_id:  # the html holds the figures; the md's PNGs stay on disk
        for p in paths[:2]:
            client.log_artifact(parent_run_id, str(p), artifact_path="study")
    return paths
