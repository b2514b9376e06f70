"""The study report from a hand-made study with fixed per-seed values (no training): the answer names the best
configuration with numbers computed here by hand, and every table is there, in report.md and report.html."""

import math
import re

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from segsweep.report import blocks, build, main
from segsweep.report.render import Figure, Text

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

SPACE = {"dataset_mix.synthetic_loss_weight": FloatDistribution(0.0, 1.0),
         "loss.ce_weight": FloatDistribution(0.2, 0.9),
         "weighting": CategoricalDistribution(["none", "inverse_freq", "sqrt_inv_freq"])}
T975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t(0.975, 2 dof), closed form


def t2_cdf(t):
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


# the study's label set as segsweep.seeds records it: the report's class order and rare marks come from here
LABELS = {"classes": ["road", "car", "person", "bicycle"], "rare": ["bicycle"]}


def iou(scale, person):
    return {"road": 0.9 * scale, "car": 0.7 * scale, "person": person, "bicycle": person / 2}


# confirmation (fresh seeds 1000..1002): per-seed values
TOP1 = [0.641, 0.652, 0.637]
TOP2 = [0.640, 0.646, 0.640]  # within noise of top1
PLAIN = [0.431, 0.449, 0.440]
REAL = [0.402, 0.431, 0.418]
CONFIRM = {
    "top1": (("top", {"dataset_mix.synthetic_loss_weight": 0.21, "loss.ce_weight": 0.63, "weighting": "sqrt_inv_freq"},
              []), TOP1, 0.48),
    "top2": (("top", {"dataset_mix.synthetic_loss_weight": 0.4, "loss.ce_weight": 0.5, "weighting": "inverse_freq"},
              []), TOP2, 0.40),
    "plain_ce": (("baseline", {"dataset_mix.synthetic_loss_weight": 0.5, "loss.ce_weight": 1.0, "weighting": "none"},
                  ["loss=ce"]), PLAIN, 0.15),
    "real_only": (("baseline", {"dataset_mix.synthetic_loss_weight": 0.5, "loss.ce_weight": 1.0,
                                "weighting": "none"}, ["dataset_mix=real_only", "loss=ce"]), REAL, 0.10),
}


def make_study(storage, name="hand"):
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    search = [({"dataset_mix.synthetic_loss_weight": 0.21, "loss.ce_weight": 0.63, "weighting": "sqrt_inv_freq"},
               [0.66, 0.63]),
              ({"dataset_mix.synthetic_loss_weight": 0.4, "loss.ce_weight": 0.5, "weighting": "inverse_freq"},
               [0.65, 0.63]),
              ({"dataset_mix.synthetic_loss_weight": 0.9, "loss.ce_weight": 0.3, "weighting": "none"}, [0.45, 0.47])]
    for params, values in search:
        study.add_trial(create_trial(params=params, distributions=SPACE, value=float(np.mean(values)),
                                     user_attrs={"stage": "search", "seeds": [0, 1],
                                                 "seed_values": {str(s): v for s, v in enumerate(values)}}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params=search[2][0], distributions=SPACE))
    for label, ((kind, params, overrides), values, person) in CONFIRM.items():
        cid = f"id-{label}"
        for j, v in enumerate(values):
            s = str(1000 + j)
            dists = {**SPACE, "loss.ce_weight": FloatDistribution(0.2, 1.0)}  # an enqueued baseline: out of range
            study.add_trial(create_trial(
                params=params, distributions=dists, value=v,
                user_attrs={"stage": "confirm", "seeds": [1000 + j], "confirm_config": label, "confirm_kind": kind,
                            "labels": LABELS,
                            "confirm_id": cid, "confirm_key": f"{cid}@{s}", "overrides": overrides,
                            "seed_values": {s: v}, "seed_iou": {s: iou(v / 0.64, person + j / 100)},
                            "seed_monitors": {s: {"ce_real": 0.30 + j / 100, "ce_synthetic": 0.42 + j / 100}}}))
    return study


def paired_by_hand(a, b):
    d = np.array(a) - np.array(b)
    md, sd = d.mean(), math.sqrt(((d - d.mean()) ** 2).sum() / 2)
    t = md / (sd / math.sqrt(3))
    return md, T975_2 * sd / math.sqrt(3), 2 * (1 - t2_cdf(abs(t)))


def test_answer_and_tables_from_stored_values(tmp_path):
    study = make_study(f"sqlite:///{tmp_path}/optuna.db")
    r = build(study)
    assert r.best.label == "top1" and r.reference.label == "plain_ce"
    mean = sum(TOP1) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in TOP1) / 2)
    half = T975_2 * sd / math.sqrt(3)
    md, h, p = paired_by_hand(TOP1, PLAIN)
    lo = md - h
    # Holm over the 5 comparisons (top1, top2 vs 2 baselines; real_only vs plain_ce): m * p for the smallest ...
    ps = sorted([paired_by_hand(x, y)[2] for x, y in ((TOP1, PLAIN), (TOP1, REAL), (TOP2, PLAIN), (TOP2, REAL),
                                                       (REAL, PLAIN))])
    holm, running = {}, 0.0
    for k, q in enumerate(ps):
        running = max(running, min(1.0, (5 - k) * q))
        holm[q] = running
    q = holm[p]
    assert len(r.comparisons) == 5
    expected = (f"best: weighting=sqrt_inv_freq, α = 0.63, synthetic weight 0.21 (top1) — val/mIoU {mean:.3f} "
                f"± {half:.3f} (95 % CI, 3 seeds), {md:+.3f} over plain_ce (paired t over 3 seeds, "
                f"Holm-corrected p = {q:.3f}): better by at least the minimum effect 0.01 [confirmed on fresh "
                "seeds].")
    # differences of about +0.2 with a CI far above the default minimum effect 0.01: "better"
    assert r.min_effect == 0.01 and lo > 0.01
    assert r.answer == expected
    # the same gain against larger margins: CI [lo, hi] straddles 0.2 (undecided), lies inside ±0.25 (equivalent)
    assert lo < 0.2 < md + h and "undecided at the minimum effect 0.2 (" in build(study, min_effect=0.2).answer
    assert "equivalent within ±0.25" in build(study, min_effect=0.25).answer
    assert r.warning and "top2" in r.warning  # top1's lead over top2 is within the seed noise


def test_cli_writes_markdown_and_self_contained_html(tmp_path):
    sweep = tmp_path / "multirun" / "hand"
    sweep.mkdir(parents=True)
    make_study(f"sqlite:///{sweep}/optuna.db")
    assert main([str(sweep)]) == 0
    md = (sweep / "study_summary" / "report.md").read_text()
    first = next(line for line in md.splitlines() if line.startswith("**best:"))
    assert "(top1)" in first and "over plain_ce" in first
    for heading in ("Confirmed configurations (fresh seeds), ranked by mean", "Search configurations, ranked by mean",
                    "Paired differences to the baselines", "Per-class IoU: plain_ce → top1",
                    "Real vs synthetic at the end of training", "Seed noise and the spread of the search"):
        assert f"### {heading}" in md, heading
    assert "> **Warning:**" in md
    # ranked: top1 first among the confirmed, with its interval
    ranked = md.split("### Confirmed configurations")[1].split("###")[0]
    rows = [line for line in ranked.splitlines() if re.match(r"\| \d", line)]
    assert [row.split("**")[1] for row in rows] == ["top1", "top2", "plain_ce", "real_only"]
    # per-class table in the seed document's form, rare classes marked, mIoU before -> after
    table = md.split("### Per-class IoU")[1].split("###")[0]
    person_plain = np.mean([0.15, 0.16, 0.17]) * 100
    person_top = np.mean([0.48, 0.49, 0.50]) * 100
    assert f"| person | {person_plain:.1f} % | {person_top:.1f} % | {person_top - person_plain:+.1f} %p |" in table
    assert "| bicycle (rare) |" in table and "| road |" in table and "**Mean IoU (classes above)**" in table
    va, vb = np.mean(PLAIN) * 100, np.mean(TOP1) * 100
    assert f"| **val/mIoU (objective)** | {va:.1f} % | {vb:.1f} % | {vb - va:+.1f} %p |" in table
    gap = md.split("### Real vs synthetic")[1].split("###")[0]
    assert "| top1 | ce | 0.3100 | 0.4300 | +0.1200 |" in gap
    # seed noise: pooled over every configuration's repeats, by hand
    groups = [TOP1, TOP2, PLAIN, REAL, [0.66, 0.63], [0.65, 0.63], [0.45, 0.47]]
    ss = sum(((np.array(g) - np.mean(g)) ** 2).sum() for g in groups)
    assert f"{math.sqrt(ss / 11):.4f} (11 degrees of freedom)" in md
    html = (sweep / "study_summary" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and 'src="report_' not in html
    assert "<b>best: weighting=sqrt_inv_freq" in html and "<table>" in html
    assert all((sweep / "study_summary" / img).exists() for img in re.findall(r"\]\((report_[^)]+\.png)\)", md))


def test_two_studies_side_by_side_from_a_storage_url(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/shared.db"
    make_study(storage, "first")
    second = optuna.create_study(study_name="second", storage=storage, direction="maximize")
    second.add_trial(create_trial(params={"weighting": "none"}, distributions={"weighting": SPACE["weighting"]},
                                  value=0.5, user_attrs={"seed_values": {"0": 0.5}}))
    out = tmp_path / "out"
    assert main(["--storage", storage, "--study", "first", "--study", "second", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# Study report: first, second")
    assert "## Study first" in md and "## Study second" in md
    assert "| second | best: weighting=none — val/mIoU 0.500 (1 seed, no interval) [search only" in md
    assert "best:" in capsys.readouterr().out


def test_empty_study_says_so(tmp_path):
    study = optuna.create_study(study_name="empty", storage=f"sqlite:///{tmp_path}/o.db")
    assert "No complete trial" in build(study).answer


@pytest.mark.parametrize("n", [1])
def test_search_only_study_is_marked_unconfirmed(tmp_path, n):
    study = optuna.create_study(direction="maximize")
    for w, vals in (("none", [0.5, 0.52]), ("inverse_freq", [0.6, 0.58])):
        study.add_trial(create_trial(params={"weighting": w}, distributions={"weighting": SPACE["weighting"]},
                                     value=float(np.mean(vals)),
                                     user_attrs={"seed_values": {str(s): v for s, v in enumerate(vals)}}))
    r = build(study)
    assert r.best.description == "weighting=inverse_freq" and "search only" in r.answer
    assert r.comparisons == []


def test_baselines_only_study_answers_against_the_first_listed_baseline(tmp_path):
    # sweeps=baselines: every configuration is a baseline; the first listed (plain CE) is the reference even
    # though it ranks last, and each baseline is compared with those listed before it
    study = optuna.create_study(study_name="b", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize")
    listed = {"plain_ce": PLAIN, "weighted_ce": TOP2, "combined": TOP1}
    dists = {**SPACE, "loss.ce_weight": FloatDistribution(0.2, 1.0)}
    for i, (label, values) in enumerate(listed.items()):
        params = {"dataset_mix.synthetic_loss_weight": 0.5, "loss.ce_weight": 1.0 - i / 10, "weighting": "none"}
        for j, v in enumerate(values):
            s = str(1000 + j)
            study.add_trial(create_trial(params=params, distributions=dists, value=v, user_attrs={
                "stage": "confirm", "seeds": [1000 + j], "confirm_config": label, "confirm_kind": "baseline",
                "confirm_id": label, "confirm_key": f"{label}@{s}", "seed_values": {s: v},
                "seed_iou": {s: iou(v / 0.64, 0.2)}}))
    r = build(study)
    assert (r.best.label, r.reference.label, r.before.label, r.after.label) == (
        "combined", "plain_ce", "plain_ce", "combined")
    assert {(c.label, b.label) for c, b, _, _ in r.comparisons} == {
        ("weighted_ce", "plain_ce"), ("combined", "plain_ce"), ("combined", "weighted_ce")}
    md = paired_by_hand(TOP1, PLAIN)[0]
    assert f"{md:+.3f} over plain_ce (paired t over 3 seeds" in r.answer, r.answer


def test_validation_panels_of_the_best_and_the_reference_are_shown(tmp_path):
    """The report shows what the models see: the panels a run drew (plots/val_panels.png) for the best
    configuration and the reference baseline, found through the trials' output_dir."""
    from PIL import Image

    trials = make_study(f"sqlite:///{tmp_path}/optuna.db").trials
    for t in trials:
        if t.user_attrs.get("confirm_config") in ("top1", "plain_ce") and t.user_attrs["seeds"] == [1000]:
            out = tmp_path / t.user_attrs["confirm_config"] / "plots"
            out.mkdir(parents=True)
            Image.new("RGB", (12, 4), (10, 20, 30)).save(out / "val_panels.png")
            t.user_attrs = {**t.user_attrs, "output_dir": str(out.parent)}
    study = optuna.create_study(study_name="hand", direction="maximize")
    study.add_trials(trials)
    bs = blocks(build(study))
    images = {b.name: b.png for b in bs if isinstance(b, Figure)}
    assert set(images) >= {"panels_top1", "panels_plain_ce"}
    assert images["panels_top1"] == (tmp_path / "top1" / "plots" / "val_panels.png").read_bytes()


def test_the_report_says_which_classes_the_objective_averages(tmp_path):
    trials = make_study(f"sqlite:///{tmp_path}/optuna.db").trials
    for t in trials:
        if "labels" in t.user_attrs:
            t.user_attrs = {**t.user_attrs, "labels": {**LABELS, "evaluated": ["road", "car", "person"],
                                                       "eval_name": "three"}}
    study = optuna.create_study(study_name="hand", direction="maximize")
    study.add_trials(trials)
    md = "\n".join(b.text for b in blocks(build(study)) if isinstance(b, Text))
    assert "val/mIoU averages the 3 classes of three (data.eval_classes); per-class IoUs cover all 4." in md
    assert "averages" not in "\n".join(b.text for b in blocks(build(make_study(f"sqlite:///{tmp_path}/b.db", "b")))
                                       if isinstance(b, Text))
