"""The job <-> study contract (segsweep.sweep.record): one type owns every user attribute a trial carries, one
mapping says how a job's end reaches its MLflow run and its trial, and a trial's job leaves it 'ended'."""

import optuna
import pytest

from segsweep import compat
from segsweep.engine.trainer import Preempted
from segsweep.sweep.options import StudyConfig
from segsweep.sweep.record import TrialRecord, attrs, carried, ending, record
from segsweep.sweep.trial import NO_TRIAL, TrialLink

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("error, status, state", [
    (None, "FINISHED", "COMPLETE"),
    (optuna.TrialPruned("pruned at 40"), "KILLED", "PRUNED"),
    (Preempted(120), "KILLED", "REQUEUED"),
    (KeyboardInterrupt(), "KILLED", "FAIL"),
    (ValueError("bad sample"), "FAILED", "FAIL"),
])
def test_one_mapping_from_a_jobs_end_to_run_status_and_trial_state(error, status, state):
    e = ending(error)
    assert (e.mlflow_status, e.trial_state) == (status, state)


def test_the_record_reads_its_fields_and_ignores_other_tools_attributes():
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={"stage": "confirm", "seeds": [1001], "retry_of": 3, "someone_else": 1})
    r = record(study.ask())
    assert (r.stage, r.seeds, r.retry_of, r.job_state, r.seed_values) == ("confirm", [1001], 3, None, {})
    assert record(optuna.create_study().ask()) == TrialRecord()  # a fresh trial: the defaults


def test_unknown_names_are_refused_naming_the_record():
    with pytest.raises(KeyError, match="segsweep.sweep.record.TrialRecord"):
        attrs(seed_value=0.5)  # a typo of seed_values
    with pytest.raises(KeyError):
        NO_TRIAL.set_attrs(outptu_dir="/x")  # a plain run checks the names too


def test_a_retry_carries_stage_seeds_and_configuration_only():
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs=attrs(stage="confirm", seeds=[1002], confirm_config="top1", overrides=["a=1"],
                                             fail_reason="x", mlflow_run_id="r", retry_count=1))
    t = study.ask()
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    assert carried(study.trials[0]) == {"stage": "confirm", "seeds": [1002], "confirm_config": "top1",
                                        "overrides": ["a=1"]}


def link(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    cfg = StudyConfig(name="s", storage=storage, trial_id=compat.trial_id(trial), trial_number=trial.number,
                      heartbeat_interval=None)
    return study, TrialLink(cfg)


def test_a_completed_trial_says_its_job_ended(tmp_path):
    study, ln = link(tmp_path)
    assert ln.record.job_state == "running"
    ln.complete([0.5])
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and record(t).job_state == "ended"


def test_a_failed_and_a_pruned_trial_say_why(tmp_path):
    study, ln = link(tmp_path / "a")
    ln.end(ValueError("cannot read x.png"))
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.FAIL and record(t).fail_reason == "ValueError: cannot read x.png"
    assert record(t).job_state == "ended" and not record(t).interrupted
    study, ln = link(tmp_path / "b")
    ln.end(KeyboardInterrupt())
    assert record(study.trials[0]).interrupted  # re-run when the study resumes
    study, ln = link(tmp_path / "c")
    ln.end(optuna.TrialPruned())
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def test_a_preempted_job_hands_its_running_trial_to_the_requeued_job(tmp_path):
    study, ln = link(tmp_path)
    ln.set_attrs(preempted_at="120")
    ln.end(Preempted(120))
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.RUNNING
    assert (record(t).job_state, record(t).preempted_at) == ("requeued", "120")
