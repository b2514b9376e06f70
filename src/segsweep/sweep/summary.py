"""Summary of an Optuna study, written at the end of a sweep (and on resume) and logged to the parent MLflow run:
``trials.csv``, Optuna's own plots (matplotlib backend), real vs synthetic training curves of every trial, and
tags naming the best trial (single objective) or the Pareto front (multi-objective)."""

from __future__ import annotations

import csv
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on headless nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import optuna.visualization.matplotlib as ovm  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from segsweep.data.plan import DOMAINS  # noqa: E402
from segsweep.io import atomic_path, atomic_write  # noqa: E402
from segsweep.sweep.confirm import (  # noqa: E402
    ENOUGH_FOR_SEARCH_PLOTS,
    best_search_trial,
    is_confirm,
    search_trials,
)
from segsweep.sweep.progress import short_config  # noqa: E402
from segsweep.sweep.record import record  # noqa: E402
from segsweep.tracking.plots import save_figure  # noqa: E402

log = logging.getLogger(__name__)
ARTIFACT_PATH = "study"
BEST_TAG = "segsweep.best"


def _metric_names(study: optuna.Study) -> list[str]:
    n = len(study.directions)
    names = study.metric_names
    if names and len(names) == n:
        return list(names)
    return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


CSV_RECORD = ("mlflow_run_id", "output_dir", "fail_reason", "enqueued", "retry_of")  # record fields in trials.csv


def _write_csv(trials: list[FrozenTrial], names: list[str], path: Path) -> Path:
    params = sorted({k for t in trials for k in t.params})
    rows = []
    for t in trials:
        values = t.values if t.values is not None else [None] * len(names)
        dur = t.duration.total_seconds() if t.duration is not None else None
        rows.append({"number": t.number, "state": t.state.name, **dict(zip(names, values)),
                     **{k: t.params.get(k) for k in params}, "duration_s": dur,
                     **{k: getattr(record(t), k) for k in CSV_RECORD}})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["number", "state", *names, *params, "duration_s", *CSV_RECORD])
        w.writeheader()
        w.writerows(rows)
    return path


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, bbox_inches="tight")


def _optuna_plots(study: optuna.Study, complete: list[FrozenTrial], names: list[str], out_dir: Path) -> list[Path]:
    """Optuna's plots of the search trials only (confirmation trials re-run chosen points on fresh seeds: they
    are no samples of the search space): the optimisation history from one complete search trial on, the plots
    of the space (importances, parallel coordinates, slice, contour) from ENOUGH_FOR_SEARCH_PLOTS."""
    complete = [t for t in complete if not is_confirm(t)]
    if not complete:
        log.info("study summary: no complete search trial, Optuna plots skipped")
        return []
    search = optuna.create_study(directions=study.directions)
    search.add_trials(search_trials(study, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    study = search
    kw: dict = {}
    if len(names) > 1:  # single-target plots show the first objective
        kw = {"target": lambda t: t.values[0], "target_name": names[0]}
    varied = [k for k in sorted({k for t in complete for k in t.params})
              if len({repr(t.params.get(k)) for t in complete}) > 1]
    plots: dict[str, Callable] = {"optimization_history": lambda: ovm.plot_optimization_history(study, **kw)}
    if len(complete) >= ENOUGH_FOR_SEARCH_PLOTS and varied:
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        # Optuna's default evaluator (PED-ANOVA) ranks low target values as good: the sign makes high ones so
        plots["param_importances"] = lambda: ovm.plot_param_importances(
            study, target=lambda t: sign * t.values[0], target_name=names[0])
        plots["parallel_coordinate"] = lambda: ovm.plot_parallel_coordinate(study, **kw)
        plots["slice"] = lambda: ovm.plot_slice(study, **kw)
        if len(varied) >= 2:
            plots["contour"] = lambda: ovm.plot_contour(study, params=varied, **kw)
    if len(names) > 1:
        plots["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=names)
    skipped = sorted({"param_importances", "parallel_coordinate", "slice", "contour"} - set(plots))
    if skipped:
        log.info("study summary: %s skipped (need >= %d complete search trials and varied params)",
                 ", ".join(skipped), ENOUGH_FOR_SEARCH_PLOTS)
    paths = []
    for name, make in plots.items():
        plt.close("all")
        try:
            # Optuna calls plt.style.use("ggplot"): rc_context keeps that from leaking into later figures
            with plt.rc_context(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)  # one-trial axes
                warnings.filterwarnings("ignore", ".*importances of params to achieve low", UserWarning)  # see sign
                ax = make()
                paths.append(_save(np.ravel(ax)[0].get_figure(), out_dir / f"{name}.png"))
        except Exception as e:  # a plot Optuna refuses must not fail the sweep
            log.warning("study summary: %s plot skipped: %s", name, e)
        finally:
            plt.close("all")
    return paths


def _real_vs_synthetic(client: MlflowClient, trials: list[FrozenTrial], names: list[str],
                       terms: tuple[str, ...], path: Path) -> Path | None:
    curves: dict[str, list] = {term: [] for term in terms}  # term -> [(trial, real, synthetic)]
    for t in trials:
        run_id = record(t).mlflow_run_id
        if not run_id:
            continue
        for term in terms:
            try:
                real, syn = ([(m.step, m.value) for m in sorted(client.get_metric_history(run_id, f"train/{term}_{d}"),
                                                                key=lambda m: m.step)]
                             for d in DOMAINS)
            except Exception as e:  # run deleted or in another store: note it, go on
                log.warning("study summary: no metric history for trial %d (%s): %s", t.number, run_id, e)
                break
            if real or syn:
                curves[term].append((t, real, syn))
    terms = tuple(term for term in terms if curves[term])
    if not terms:
        log.info("study summary: no train/<term>_real|_synthetic history, real_vs_synthetic.png skipped")
        return None
    fig, axes = plt.subplots(1, len(terms), figsize=(6 * len(terms), 4.5), squeeze=False)
    numbers = sorted({t.number for term in terms for t, _, _ in curves[term]})
    cmap = plt.get_cmap("tab10" if len(numbers) <= 10 else "tab20")
    colour = {n: cmap(i % cmap.N) for i, n in enumerate(numbers)}
    for ax, term in zip(axes[0], terms):
        for t, real, syn in curves[term]:
            status = ", ".join(_fmt(v) for v in t.values) if t.state == TrialState.COMPLETE else t.state.name
            label = f"trial {t.number}: {short_config(t)} ({status})"
            if real:
                ax.plot(*zip(*real), "-", color=colour[t.number], label=label)
            if syn:
                ax.plot(*zip(*syn), "--", color=colour[t.number], label=None if real else label)
        ax.set_title(f"{term}: real (solid) vs synthetic (dashed), unweighted")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"train/{term}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(title=f"trial ({', '.join(names)})", fontsize="small", ncol=1 + len(numbers) // 12)
    return _save(fig, path)


def write_study_summary(study: optuna.Study, client: MlflowClient, parent_run_id: str, out_dir: Path,
                        monitor_terms: tuple[str, ...] = ("ce", "dice"), stop_reason: str | None = None,
                        plots: bool = True) -> list[Path]:
    """Write ``trials.csv`` and the plots into ``out_dir``, log them under ``study/`` of the parent run, tag the
    parent with the best trial (or Pareto front), counts and ``stop_reason`` (also in ``stop_reason.txt``: why
    the study stopped asking), tag every complete child ``segsweep.best``;
    return the written paths. Safe to call again on a resumed study: files and tags are overwritten."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    names = _metric_names(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]

    paths = [_write_csv(trials, names, out_dir / "trials.csv")]
    if stop_reason:
        atomic_write(out_dir / "stop_reason.txt", stop_reason + "\n")
        paths.append(out_dir / "stop_reason.txt")
    if plots:  # mlflow.plots=false: no Optuna plots, no curves (the tables, tags and report stay)
        paths += _optuna_plots(study, complete, names, out_dir)
        rvs = _real_vs_synthetic(client, trials, names, monitor_terms, out_dir / "real_vs_synthetic.png")
        paths += [rvs] if rvs else []

    for p in paths:
        client.log_artifact(parent_run_id, str(p), artifact_path=ARTIFACT_PATH)

    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    retried = {record(t).retry_of for t in trials}
    tags = {"n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
            "n_fail": counts[TrialState.FAIL], "n_retried": sum(t.number in retried for t in trials),
            "n_enqueued": sum(record(t).enqueued for t in trials)}
    if stop_reason:
        tags["stop_reason"] = stop_reason
    best: list[FrozenTrial] = []
    if complete and len(names) == 1:
        # the search's best trial only when a search ran; a confirmation-only study is named by its confirmed
        # best configuration (its mean and interval: tags and metrics written with the report below)
        best = [b] if (b := best_search_trial(study)) is not None else []
        if b is not None:
            tags.update(best_trial=b.number, best_value=b.value, best_run_id=record(b).mlflow_run_id or "",
                        best_params=", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items())[:5000])
            client.log_metric(parent_run_id, "search/best_value", float(b.value))
    elif complete:
        best = sorted(study.best_trials, key=lambda t: t.number)
        tags.update(n_pareto=len(best), pareto_trials=",".join(str(t.number) for t in best)[:5000])
    for k, v in tags.items():
        client.set_tag(parent_run_id, k, str(v))

    best_numbers = {t.number for t in best}
    for t in complete:  # true on the best (or every Pareto) trial, false on the others: a resume moves it
        run_id = record(t).mlflow_run_id
        if run_id:
            try:
                client.set_tag(run_id, BEST_TAG, str(t.number in best_numbers).lower())
            except Exception as e:
                log.warning("study summary: cannot tag trial %d run %s: %s", t.number, run_id, e)
    try:  # the study's verdict (segsweep.report): report.md and report.html here and on the parent run
        from segsweep.report import build, parent_run_record, write_report

        report = build(study)  # once: its tags and metrics here, its files below
        if len(names) == 1:
            answer_tags, metrics = parent_run_record(report)
            for k, v in answer_tags.items():
                client.set_tag(parent_run_id, k, v)
            if metrics:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        write_report([study], out_dir, out_dir, client, parent_run_id, reports=[report])
    except Exception as e:  # a report must never fail the study
        log.warning("study report skipped: %s", e)
    return paths
