"""Study summary: trials.csv, Optuna plots, real vs synthetic curves, artifacts and tags on a real MLflow store."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
from PIL import Image

from segsweep.sweep.summary import write_study_summary
from segsweep.tracking.mlflow_writer import open_client

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Some regimes for parameter:UserWarning")]  # few trials

W, CE, WEIGHTING = "dataset_mix.synthetic_loss_weight", "loss.ce_weight", "weighting"
PARAMS = [  # (params, values) of the COMPLETE trials, in order; trial 1 is the best single-objective one
    ({W: 0.2, CE: 0.5, WEIGHTING: "none"}, (0.40, 0.30)),
    ({W: 0.5, CE: 0.7, WEIGHTING: "sqrt_inv_freq"}, (0.55, 0.20)),
    ({W: 0.8, CE: 0.3, WEIGHTING: "inverse_freq"}, (0.48, 0.35)),
    ({W: 0.35, CE: 0.45, WEIGHTING: "none"}, (0.45, 0.25)),  # the 4th: enough for the plots of the space
]
STEPS = (10, 20, 30)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return open_client(f"sqlite:///{root}/mlflow.db"), root


def _experiment(store, name):
    client, root = store
    exp = client.create_experiment(name, artifact_location=(root / name).as_uri())
    return client, exp, client.create_run(exp).info.run_id


def _child(client, exp, parent, steps, shift=0.0):
    run_id = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    for i, term in enumerate(("ce", "dice")):
        for d, off in (("real", 0.0), ("synthetic", 0.2)):
            for s in steps:
                client.log_metric(run_id, f"train/{term}_{d}", 1.0 + i + off + shift - s / 100, step=s)
    return run_id


def _suggest(trial, params):
    trial.suggest_float(W, 0.0, 1.0)
    trial.suggest_float(CE, 0.0, 1.0)
    trial.suggest_categorical(WEIGHTING, ["none", "inverse_freq", "sqrt_inv_freq"])


def _study(client, exp, parent, n_complete=4, multi=False, extra_states=True):
    """COMPLETE trials from PARAMS, then one PRUNED, one FAIL and one RUNNING trial; returns study, run ids."""
    study = optuna.create_study(directions=["maximize"] * (2 if multi else 1))
    study.set_metric_names(["val/mIoU", "val/mIoU_rare"] if multi else ["val/mIoU"])
    runs = {}

    def ask(params, steps):
        study.enqueue_trial(params)
        trial = study.ask()
        _suggest(trial, params)
        if steps:
            runs[trial.number] = _child(client, exp, parent, steps, shift=0.05 * trial.number)
            trial.set_user_attr("mlflow_run_id", runs[trial.number])
        trial.set_user_attr("trainer.max_iters", 30)  # a fixed override: harmless
        return trial

    for params, values in PARAMS[:n_complete]:
        study.tell(ask(params, STEPS), list(values) if multi else values[0])
    if extra_states:
        pruned = ask({W: 0.9, CE: 0.1, WEIGHTING: "none"}, STEPS[:2])
        if not multi:  # Trial.report is single-objective only
            pruned.report(0.1, 10)
            pruned.report(0.15, 20)
        study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
        failed = ask({W: 0.1, CE: 0.9, WEIGHTING: "inverse_freq"}, STEPS[:1])
        failed.set_user_attr("fail_reason", "CUDA out of memory")
        study.tell(failed, state=optuna.trial.TrialState.FAIL)
        ask({W: 0.3, CE: 0.6, WEIGHTING: "none"}, ())  # still RUNNING, no MLflow run yet
    return study, runs


def _valid_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
        im.verify()


def test_single_objective_summary(store, tmp_path):
    client, exp, parent = _experiment(store, "single")
    study, runs = _study(client, exp, parent)
    paths = write_study_summary(study, client, parent, tmp_path / "summary")

    names = {p.name for p in paths}
    assert names == {"trials.csv", "optimization_history.png", "param_importances.png", "parallel_coordinate.png",
                     "slice.png", "contour.png", "real_vs_synthetic.png"}
    for p in paths:
        assert p.parent == tmp_path / "summary"
        if p.suffix == ".png":
            _valid_png(p)

    with open(tmp_path / "summary" / "trials.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:3] == ["number", "state", "val/mIoU"]
    assert {W, CE, WEIGHTING, "duration_s", "mlflow_run_id", "fail_reason"} <= set(reader.fieldnames)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4", "5", "6"]
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4 + ["PRUNED", "FAIL", "RUNNING"]
    for r, (params, values) in zip(rows, PARAMS):
        assert float(r["val/mIoU"]) == pytest.approx(values[0])
        assert float(r[W]) == pytest.approx(params[W]) and float(r[CE]) == pytest.approx(params[CE])
        assert r[WEIGHTING] == params[WEIGHTING]
        assert r["mlflow_run_id"] == runs[int(r["number"])] and float(r["duration_s"]) >= 0
    assert float(rows[4]["val/mIoU"]) == 0.15 and rows[4][WEIGHTING] == "none"  # pruned: last reported value
    assert rows[5]["val/mIoU"] == "" and rows[6]["val/mIoU"] == ""
    assert rows[5]["fail_reason"] == "CUDA out of memory" and rows[5]["mlflow_run_id"] == runs[5]
    assert rows[6]["mlflow_run_id"] == "" and rows[6]["duration_s"] == ""

    logged = {Path(a.path).name for a in client.list_artifacts(parent, "study")}
    assert logged == names | {"report.md", "report.html"}  # the study report (segsweep.report), beside the summary
    assert "**best: " in (tmp_path / "summary" / "report.md").read_text()
    assert "### Parameter importances (search trials)" in (tmp_path / "summary" / "report.md").read_text()
    tags = client.get_run(parent).data.tags
    assert tags["best_trial"] == "1" and float(tags["best_value"]) == pytest.approx(0.55)
    assert tags["best_run_id"] == runs[1]
    assert f"{W}=0.5" in tags["best_params"] and "weighting=sqrt_inv_freq" in tags["best_params"]
    assert (tags["n_complete"], tags["n_pruned"], tags["n_fail"]) == ("4", "1", "1")
    assert "n_pareto" not in tags
    assert client.get_run(runs[1]).data.tags["segsweep.best"] == "true"
    assert client.get_run(runs[0]).data.tags["segsweep.best"] == "false"
    assert "segsweep.best" not in client.get_run(runs[4]).data.tags  # only complete children are tagged

    # a resumed study with a new best moves the tags
    trial = study.ask({W: optuna.distributions.FloatDistribution(0.0, 1.0)})
    trial.set_user_attr("mlflow_run_id", new := _child(client, exp, parent, STEPS))
    study.tell(trial, 0.9)
    write_study_summary(study, client, parent, tmp_path / "summary")
    tags = client.get_run(parent).data.tags
    assert tags["best_trial"] == str(trial.number) and tags["best_run_id"] == new and tags["n_complete"] == "5"
    assert client.get_run(new).data.tags["segsweep.best"] == "true"
    assert client.get_run(runs[1]).data.tags["segsweep.best"] == "false"

    # a confirmation trial (one fresh seed) with a higher value is not the search's best
    lucky = study.ask({W: optuna.distributions.FloatDistribution(0.0, 1.0)})
    lucky.set_user_attr("stage", "confirm")
    study.tell(lucky, 0.95)
    write_study_summary(study, client, parent, tmp_path / "summary")
    assert client.get_run(parent).data.tags["best_trial"] == str(trial.number)


@pytest.mark.parametrize("n_complete", [0, 1, 3])
def test_few_complete_trials(store, tmp_path, n_complete):
    client, exp, parent = _experiment(store, f"few{n_complete}")
    study, runs = _study(client, exp, parent, n_complete=n_complete)
    paths = write_study_summary(study, client, parent, tmp_path)
    names = {p.name for p in paths}
    assert "trials.csv" in names and "real_vs_synthetic.png" in names  # pruned/failed trials still have curves
    # fewer than 4 complete search trials: no plots of the search space, the history from one trial on
    assert not names & {"param_importances.png", "contour.png", "slice.png", "parallel_coordinate.png"}
    assert ("optimization_history.png" in names) == (n_complete >= 1)
    for p in paths:
        if p.suffix == ".png":
            _valid_png(p)
    tags = client.get_run(parent).data.tags
    assert tags["n_complete"] == str(n_complete)
    assert ("best_trial" in tags) == (n_complete >= 1)


def test_empty_study_without_mlflow_runs(store, tmp_path):
    client, exp, parent = _experiment(store, "empty")
    study, _ = _study(client, exp, parent, n_complete=0, extra_states=False)
    paths = write_study_summary(study, client, parent, tmp_path)
    assert [p.name for p in paths] == ["trials.csv"]
    assert (tmp_path / "trials.csv").read_text().splitlines() == ["number,state,val/mIoU,duration_s,mlflow_run_id,"
                                                                 "output_dir,fail_reason,enqueued,retry_of"]


def test_multi_objective_summary(store, tmp_path):
    client, exp, parent = _experiment(store, "multi")
    study, runs = _study(client, exp, parent, multi=True)
    paths = write_study_summary(study, client, parent, tmp_path)
    names = {p.name for p in paths}
    assert {"pareto_front.png", "optimization_history.png", "real_vs_synthetic.png"} <= names
    _valid_png(tmp_path / "pareto_front.png")
    with open(tmp_path / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["val/mIoU_rare"]) == pytest.approx(PARAMS[1][1][1])
    # Pareto front of (0.40, 0.30), (0.55, 0.20), (0.48, 0.35) when maximising both: trials 1 and 2
    tags = client.get_run(parent).data.tags
    assert tags["n_pareto"] == "2" and tags["pareto_trials"] == "1,2"
    assert "best_trial" not in tags
    assert {Path(a.path).name for a in client.list_artifacts(parent, "study")} == names | {"report.md", "report.html"}
    assert "Pareto front" in (tmp_path / "report.md").read_text()
    assert [client.get_run(runs[i]).data.tags["segsweep.best"] for i in range(3)] == ["false", "true", "true"]


def test_a_study_without_a_search_gets_no_search_plots_and_names_its_confirmed_best(store, tmp_path):
    """Nine confirmation trials of three fixed configurations: importances, contour, slice of 3 points would be
    noise; the record names the confirmed best configuration, not a lucky seed's trial."""
    client, exp, parent = _experiment(store, "confirm-only")
    study = optuna.create_study(directions=["maximize"])
    study.set_metric_names(["val/mIoU"])
    values = {"plain": [0.40, 0.42, 0.41], "weighted": [0.47, 0.45, 0.49], "combined": [0.50, 0.48, 0.49]}
    for label, (ce, w) in (("plain", (1.0, "none")), ("weighted", (1.0, "sqrt_inv_freq")),
                           ("combined", (0.6, "sqrt_inv_freq"))):
        for j, v in enumerate(values[label]):
            study.enqueue_trial({W: 0.5, CE: ce, WEIGHTING: w}, user_attrs={
                "stage": "confirm", "seeds": [1000 + j], "confirm_config": label, "confirm_kind": "baseline",
                "confirm_id": label, "confirm_key": f"{label}@{1000 + j}", "seed_values": {str(1000 + j): v}})
            trial = study.ask()
            _suggest(trial, None)
            trial.set_user_attr("mlflow_run_id", _child(client, exp, parent, STEPS))
            study.tell(trial, v)
    paths = write_study_summary(study, client, parent, tmp_path)
    names = {p.name for p in paths}
    assert not names & {"optimization_history.png", "param_importances.png", "contour.png", "slice.png",
                        "parallel_coordinate.png"}
    tags = client.get_run(parent).data.tags
    assert "best_trial" not in tags and tags["best_config"] == "combined"  # mean 0.49, the best; no search trial
    report = (tmp_path / "report.md").read_text()
    assert "Parameter importances" not in report and "Search configurations" not in report
