"""The study's MLflow parent run: created once per study, found again when the study resumes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf

from segsweep.stores import redact
from segsweep.sweep.record import record
from segsweep.tracking import outbox
from segsweep.tracking.mlflow_writer import experiment_id, log_params, open_client, retry

log = logging.getLogger(__name__)


class StudyParentRun:
    def __init__(self, client, run_id: str, plots: bool = True, uri: str = "", experiment: str = "") -> None:
        self.client, self.run_id, self.plots = client, run_id, plots
        self.uri, self.experiment = uri, experiment

    @classmethod
    def open(cls, config: DictConfig, study: optuna.Study, storage: str, space: dict, fixed: dict,
             command: str) -> StudyParentRun:
        """The parent run of ``study`` (tagged ``segsweep.study``), created with the study's description."""
        mlflow = OmegaConf.to_object(config.mlflow)  # typed: segsweep.config.MlflowConfig
        uri, plots = mlflow.tracking_uri, mlflow.plots
        client = open_client(uri)  # a new SQLite store is created under the store's lock
        # Created here, once, before any job starts: concurrent jobs then never race on a fresh store's schema.
        exp_id = experiment_id(client, mlflow.experiment_name, uri)
        found = client.search_runs([exp_id], filter_string=f"tags.`segsweep.study` = '{study.study_name}' and "
                                                           "tags.`segsweep.role` = 'study'", max_results=1)
        tags = {"segsweep.command": command[:5000], "segsweep.storage": storage}
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            for k, v in tags.items():
                client.set_tag(run_id, k, v)
            return cls(client, run_id, plots, uri, mlflow.experiment_name)
        run = retry(lambda: client.create_run(exp_id, run_name=study.study_name, tags={
            "segsweep.role": "study", "segsweep.study": study.study_name, **tags}))
        sampler = OmegaConf.select(config, "hydra.sweeper.sampler._target_") or type(study.sampler).__name__
        params = {"study_name": study.study_name, "storage": storage, "sampler": str(sampler),
                  "sampler_seed": str(OmegaConf.select(config, "hydra.sweeper.sampler.seed")),
                  "directions": ",".join(d.name.lower() for d in study.directions),
                  "n_trials": str(OmegaConf.select(config, "hydra.sweeper.n_trials")),
                  "n_jobs": str(OmegaConf.select(config, "hydra.sweeper.n_jobs")),
                  "pruner": str(OmegaConf.to_container(config.study.pruner) if config.study.pruner else None),
                  "command": command}
        params.update({f"space.{k}": str(v) for k, v in space.items()})
        params.update({f"fixed.{k}": str(v) for k, v in fixed.items()})
        log_params(client, run.info.run_id, params)
        return cls(client, run.info.run_id, plots, uri, mlflow.experiment_name)

    def fail_children(self, trials: list[optuna.trial.FrozenTrial], reason: str) -> None:
        """Mark the MLflow runs of trials whose job died as FAILED, with the reason (they stay RUNNING otherwise)."""
        for t in trials:
            if run_id := record(t).mlflow_run_id:
                try:
                    retry(lambda run_id=run_id: self.client.set_tag(run_id, "segsweep.fail_reason", reason[:5000]))
                    retry(lambda run_id=run_id: self.client.set_terminated(run_id, status="FAILED"))
                except Exception as e:  # the record of the study matters more than the dead run's status
                    log.warning("could not close the MLflow run of trial %d: %s", t.number, e)

    def link_retries(self, study: optuna.Study) -> None:
        """Tag each dead trial's run with its retry (``segsweep.retried_by``: run id, ``..._trial``: number) and
        each retry's run with the run it replaces (``segsweep.retry_of``)."""
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            old, new_run = record(t).retry_of, record(t).mlflow_run_id
            if old is None or not new_run or old >= len(trials):
                continue
            old_run = record(trials[old]).mlflow_run_id
            try:
                if old_run:
                    self.client.set_tag(old_run, "segsweep.retried_by", new_run)
                    self.client.set_tag(old_run, "segsweep.retried_by_trial", str(t.number))
                    self.client.set_tag(new_run, "segsweep.retry_of", old_run)
                self.client.set_tag(new_run, "segsweep.retry_of_trial", str(old))
            except Exception as e:
                log.warning("could not link trial %d to its retry %d: %s", old, t.number, e)

    def summarise(self, study: optuna.Study, sweep_dir: Path, stop_reason: str | None = None) -> None:
        """Trials table, Optuna's plots, real vs synthetic curves, the best trial and why the study stopped, on the
        parent run."""
        from segsweep.sweep.summary import write_study_summary

        try:
            self.link_retries(study)
            write_study_summary(study, self.client, self.run_id, sweep_dir / "study_summary", stop_reason=stop_reason,
                                plots=self.plots)
        except Exception as e:  # a summary must never lose the study itself
            log.warning("could not write the study summary: %s", e)

    def close(self, status: str, sweep_dir: Path) -> None:
        """The parent run's final status; with the store away, it and the summary's files are left to
        ``segsweep.sync`` (``mlflow_unsent.json`` in the sweep directory; the summary's tags are written again by
        the same command, which resumes the finished study and summarises it)."""
        try:
            retry(lambda: self.client.set_terminated(self.run_id, status=status))
        except Exception as e:
            if not outbox.transient(e):
                raise
            from segsweep.sweep.summary import ARTIFACT_PATH

            files = sorted(p for p in (sweep_dir / "study_summary").glob("*") if p.is_file())
            outbox.save(sweep_dir, outbox.RunId(self.uri, self.experiment, run_id=self.run_id),
                        [*(("artifact", [str(p), ARTIFACT_PATH]) for p in files), ("end", status)], None, time.time())
            log.warning("MLflow store %s away (%s): the study's parent run is not closed", redact(self.uri),
                        outbox.cause(e))
