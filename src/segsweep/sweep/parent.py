"""The study's MLflow parent run: created once per study, found again when the study resumes."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf

from segsweep.tracking.mlflow_writer import artifact_location, log_params, open_client, retry

log = logging.getLogger(__name__)


class StudyParentRun:
    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, config: DictConfig, study: optuna.Study, storage: str, space: dict, fixed: dict,
             command: str) -> StudyParentRun:
        """The parent run of ``study`` (tagged ``segsweep.study``), created with the study's description."""
        uri = OmegaConf.select(config, "mlflow.tracking_uri")
        exp_name = OmegaConf.select(config, "mlflow.experiment_name")
        client = open_client(uri)  # a new SQLite store is created under the store's lock
        # Created here, once, before any job starts: concurrent jobs then never race on a fresh store's schema.
        exp = retry(lambda: client.get_experiment_by_name(exp_name))
        exp_id = exp.experiment_id if exp else retry(
            lambda: client.create_experiment(exp_name, artifact_location=artifact_location(uri)))
        found = client.search_runs([exp_id], filter_string=f"tags.`segsweep.study` = '{study.study_name}' and "
                                                           "tags.`segsweep.role` = 'study'", max_results=1)
        tags = {"segsweep.command": command[:5000], "segsweep.storage": storage}
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            for k, v in tags.items():
                client.set_tag(run_id, k, v)
            return cls(client, run_id)
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
        return cls(client, run.info.run_id)

    def fail_children(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Mark the MLflow runs of trials whose job died with its sweep as FAILED (they stay RUNNING otherwise)."""
        for t in trials:
            if run_id := t.user_attrs.get("mlflow_run_id"):
                retry(lambda run_id=run_id: self.client.set_terminated(run_id, status="FAILED"))

    def summarise(self, study: optuna.Study, sweep_dir: Path) -> None:
        """Trials table, Optuna's plots, real vs synthetic curves and the best trial, on the parent run."""
        from segsweep.sweep.summary import write_study_summary

        try:
            write_study_summary(study, self.client, self.run_id, sweep_dir / "study_summary")
        except Exception as e:  # a summary must never lose the study itself
            log.warning("could not write the study summary: %s", e)

    def close(self, status: str) -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status=status))
