"""The verdict through the CLI: a study with 2 seeds per trial and a confirmation stage (top 1 + the plain-CE
baseline on 2 fresh seeds), interrupted with Ctrl-C during its confirmation stage and resumed by the same
command; its report names the best configuration and holds every table."""

import os
import re
import signal
import subprocess

import pytest
from optuna.trial import TrialState
from polling import STUDY_OPENED, logged, wait_for
from test_sweep import command, runs, study, sweep

EXTRA = ("hydra/launcher=basic", "hydra.sweeper.n_trials=2", "trainer.max_iters=12", "trainer.eval_every=6",
         "study.repeats=2", "study.seeds=[0,1]", "study.confirm.top_k=1", "study.confirm.seeds=2",
         "study.baselines={plain_ce:['loss=ce','loss.ce_weight=1.0']}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_repeats_confirmation_resumed_mid_stage_and_the_report(tmp_path, cache_dir):
    out = open(tmp_path / "sweep.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(command(tmp_path, *EXTRA), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "SEGSWEEP_CACHE": str(cache_dir)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def confirmation_training():
            if not logged(tmp_path / "sweep.log", STUDY_OPENED):  # the study is not created yet: do not open it
                return False
            return any(t.user_attrs.get("stage") == "confirm" and t.state == TrialState.RUNNING
                       and "mlflow_run_id" in t.user_attrs for t in study(tmp_path).trials)
        wait_for(confirmation_training, proc, "a confirmation trial started training", timeout=300,
                 log=tmp_path / "sweep.log")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    log = (tmp_path / "sweep.log").read_text()  # Ctrl-C: one line saying how to go on, no traceback
    assert proc.returncode == 130 and "Traceback" not in log
    assert "study interrupted (Ctrl-C); the same command resumes it" in log
    before = study(tmp_path).trials
    assert sum(t.state == TrialState.COMPLETE for t in before if t.user_attrs.get("stage") == "confirm") < 4

    resumed = sweep(tmp_path, cache_dir, *EXTRA)  # the same command resumes inside the confirmation stage
    console = resumed.stdout + resumed.stderr

    trials = study(tmp_path).trials
    search = [t for t in trials if t.user_attrs.get("stage") != "confirm"]
    confirm = [t for t in trials if t.user_attrs.get("stage") == "confirm"]
    assert [t.state for t in search] == [TrialState.COMPLETE] * 2
    for t in search:  # repeats: both search seeds, the trial's value their mean
        values = {int(k): v for k, v in t.user_attrs["seed_values"].items()}
        assert sorted(values) == [0, 1] and t.value == sum(values.values()) / 2
    best = max(search, key=lambda t: t.value)
    # every (configuration, fresh seed) complete exactly once; the interrupted one failed and was retried
    done = [t for t in confirm if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["confirm_key"] for t in done) == sorted({t.user_attrs["confirm_key"] for t in confirm})
    assert sorted((t.user_attrs["confirm_config"], t.user_attrs["seeds"][0]) for t in done) == [
        ("plain_ce", 1000), ("plain_ce", 1001), ("top1", 1000), ("top1", 1001)]
    assert {tuple(t.params.items()) for t in done if t.user_attrs["confirm_config"] == "top1"} == {
        tuple(best.params.items())}
    interrupted = [t for t in confirm if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["interrupted"] is True
    (retry,) = [t for t in confirm if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert retry.user_attrs["confirm_key"] == interrupted[0].user_attrs["confirm_key"]
    for t in done:  # the fresh seed was trained (its value recorded), the baseline's overrides applied
        assert list(t.user_attrs["seed_values"]) == [str(t.user_attrs["seeds"][0])]
    _, parent, children = runs(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(best.number)  # the search's best, not a lucky confirmation seed
    by_id = {r.info.run_id: r for r in children}
    for t in done:
        params = by_id[t.user_attrs["mlflow_run_id"]].data.params
        if t.user_attrs["confirm_config"] == "plain_ce":  # loss=ce beyond the search space, ce_weight in it
            assert float(params["loss.ce_weight"]) == 1.0 and float(params["loss.dice_weight"]) == 0.0
        else:
            assert float(params["loss.ce_weight"]) == best.params["loss.ce_weight"]

    # what the console said: a line per launch and per finished trial (its stage, value, configuration), the
    # study line with counts and the confirmed best so far; no launcher override dumps, no third-party noise
    for t in done:
        label = f"{t.user_attrs['confirm_config']} seed {t.user_attrs['seeds'][0]}"
        if t.number > interrupted[0].number:  # trained by the resumed sweeper
            assert f"trial {t.number} launched (confirm): {label}" in console, console[-3000:]
            assert f"trial {t.number} (confirm) {t.value:.4f} val/mIoU in " in console
    assert re.search(r"study smoke confirmation \d/4 done \d running \d queued \| best (top1|plain_ce) "
                     r"0\.\d{4} \(\d seeds\) \| \d+:\d\d", console), console[-3000:]
    assert "#0 : " not in console and "Fixed parameter" not in console and "ExperimentalWarning" not in console
    assert "Creating initial MLflow database tables" not in console
    long = [line for line in console.splitlines() if "][INFO] " in line and len(line) > 120 and "/" not in
            line.split("][INFO] ")[1]]  # lines that name a path may be longer
    assert not long, long

    report = (tmp_path / "multirun" / "study_summary" / "report.md").read_text()
    # the answer, recomputed here from the stored per-seed values: mean, t interval (t_0.975 with 1 dof), paired gain
    seeds = {c: {t.user_attrs["seeds"][0]: t.value for t in done if t.user_attrs["confirm_config"] == c}
             for c in ("top1", "plain_ce")}
    mean = {c: (v[1000] + v[1001]) / 2 for c, v in seeds.items()}
    winner = max(mean, key=mean.get)
    half = 12.706204736174707 * abs(seeds[winner][1000] - seeds[winner][1001]) / 2  # t * (|a - b| / sqrt 2) / sqrt 2
    first = next(line for line in report.splitlines() if line.startswith("**best:"))
    assert f"({winner}) — val/mIoU {mean[winner]:.3f} ± {half:.3f} (95 % CI, 2 seeds)" in first, first
    gain = mean["top1"] - mean["plain_ce"]
    assert (f"{gain:+.3f} over plain_ce (paired t over 2 seeds" if winner == "top1" else
            f"no searched configuration beats it (the best, top1: {gain:+.3f}, paired t over 2 seeds") in first, first
    for title in ("Confirmed configurations (fresh seeds), ranked by mean", "Search configurations, ranked by mean",
                  "Paired differences to the baselines", "Per-class IoU: plain_ce → top1",
                  "Real vs synthetic at the end of training", "Seed noise and the spread of the search"):
        assert f"### {title}" in report, title
    assert (tmp_path / "multirun" / "study_summary" / "report.html").read_text().count("data:image/png;base64,") >= 1
    # the parent run's metrics, from the same per-seed values: each confirmed configuration's mean and interval,
    # its paired difference to the reference (plain_ce), the search's best value
    m = parent.data.metrics
    assert m["confirm/top1/mean"] == pytest.approx(mean["top1"]) and m["confirm/plain_ce/mean"] == pytest.approx(
        mean["plain_ce"])
    assert m["confirm/top1/diff_vs_plain_ce"] == pytest.approx(gain)
    assert m["search/best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best_config"] == winner
