"""What an MLflow run of segsweep is called and tagged with, and the params it logs: one recipe for a seed's run
(segsweep.run) and for the run of a job with several seeds (segsweep.seeds)."""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from segsweep.config import Config
from segsweep.tracking.mlflow_writer import flatten


def job_tags() -> dict[str, str]:
    """Where this process runs, to find its logs and its GPUs from MLflow: the SLURM job (array job_task when in
    an array) and node, and the GPUs it was shown (CUDA_VISIBLE_DEVICES)."""
    env = os.environ
    tags = {"segsweep.cuda_visible_devices": env["CUDA_VISIBLE_DEVICES"]} if "CUDA_VISIBLE_DEVICES" in env else {}
    if "SLURM_JOB_ID" not in env:
        return tags
    job = env["SLURM_JOB_ID"]
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return {**tags, "segsweep.slurm_job_id": job, "segsweep.slurm_node": env.get("SLURMD_NODENAME", "")}


def name_and_tags(cfg: Config, out_dir: Path) -> tuple[str, dict[str, str]]:
    """The run's name (``mlflow.run_name``; in a study ``trial-<n>``; else ``<loss>-<weighting>-<mix>-<hex>``) and
    its tags: its directory, where it runs, and in a study its parent run, study and trial."""
    study = cfg.study
    tags = {"segsweep.output_dir": str(out_dir.resolve()), **job_tags()}
    name = cfg.mlflow.run_name
    if study.parent_run_id:
        tags.update({"mlflow.parentRunId": study.parent_run_id, "segsweep.study": str(study.name),
                     "segsweep.trial": str(study.trial_number)})
        name = name or f"trial-{study.trial_number}"
    # Not MLflow's own pick: it draws names from Python's `random`, which seed_everything seeds with trainer.seed,
    # so every run of one seed would get the same name. Hence the recipe, with a suffix from the OS's randomness.
    name = name or f"{cfg.loss.name}-{cfg.weighting.method}-{cfg.dataset_mix.name}-{secrets.token_hex(3)}"
    return name, tags


def effective_params(cfg: Config) -> dict[str, str]:
    """The validated values (``loss.dice_weight`` null is logged as the 1 - alpha it stands for)."""
    params = asdict(cfg)
    params["model"] = OmegaConf.to_container(cfg.model, resolve=True)
    params.pop("study")  # per-trial ids: tags of the run, not parameters of the model
    params["data"]["labels"].pop("colors", None)  # display only
    return flatten(params)
