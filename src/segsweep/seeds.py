"""A job (``python train.py``; in a study, one trial): its seeds trained one after another, each by
``segsweep.run.train_one``, and their mean reported. Repeats use common random numbers.

Which seeds: a confirmation trial carries its own (the trial's user attr ``seeds``, set when it was enqueued);
any other job trains the study's search seeds, ``study.seeds[:study.repeats]`` or ``trainer.seed + 0, 1, ...``,
the same list for every configuration. Seed s fixes the initial weights (``seed_everything`` before the model is
built), the batch order and every sample's augmentation (``data.mixing``: a function of the seed and the place in
the batch stream), whatever the loss, the class weighting or the synthetic loss weight; for the same real ratio
and batch size two configurations trained with seed s see exactly the same batches. Comparisons between
configurations are therefore paired by seed (``segsweep.stats.paired``).

What the Optuna trial holds: its record (``segsweep.sweep.record.TrialRecord``: ``seeds``, ``stage``,
``seed_values``, ``seed_objectives``, ``seed_iou``, ``seed_monitors``, ``seed_runs``, keyed by the seed as a
string), and as its value the mean over its seeds. These are the per-seed values ``segsweep.report`` computes
everything from.

Pruning: seed j (0-based) reports its intermediate values at step ``j * trainer.max_iters + iteration``, so the
median pruner compares the same seed index (the same seed) across trials; seed 0 is judged against seed 0 of the
other trials, and so on. Confirmation trials never report intermediate values and are never pruned.

MLflow: with one seed, the trial's run is the seed's run (tag ``segsweep.seed``): no extra level of runs. With
several, the trial's run (``trial-<n>``, child of the study's run) holds the mean ``val/mIoU`` (and its std and
95 % interval), the mean per-class IoU, each seed's value as ``val/mIoU_by_seed`` at step = seed, and one child run
per seed (``trial-<n>-seed-<s>``) with its full curves and artifacts. Each seed trains in ``<run dir>/seed_<s>/``;
a seed that finished leaves ``seed_result.json`` there, so a requeued job does not train it again (an interrupted
seed resumes from its own checkpoint).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from segsweep import metrics
from segsweep.config import Config, validate
from segsweep.data.labels import label_set
from segsweep.engine.distributed import World, close_world, from_rank0, init_world
from segsweep.io import atomic_write
from segsweep.run import resolve_device, train_one
from segsweep.stores import check_mlflow
from segsweep.sweep.options import StudyConfig
from segsweep.sweep.record import CONFIRM, ending
from segsweep.sweep.trial import NO_TRIAL, NoTrial, TrialLink
from segsweep.tracking.run_info import effective_params, name_and_tags

log = logging.getLogger("segsweep")
RESULT = "seed_result.json"


def search_seeds(study: StudyConfig, trainer_seed: int) -> list[int]:
    """The search's seeds, the same for every configuration of the study."""
    if study.seeds is not None:
        return [int(s) for s in list(study.seeds)[: study.repeats]]
    return [trainer_seed + i for i in range(study.repeats)]


def last_evaluation(path: Path) -> dict[str, float]:
    """The last record of ``metrics.jsonl`` that holds ``val/mIoU`` (the final evaluation)."""
    last: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if metrics.MIOU in r:
                last = r
    return {k: v for k, v in last.items() if v is not None}


def final_monitors(path: Path) -> dict[str, float]:
    """The last logged value of every split monitor ``train/<term>_real`` / ``train/<term>_synthetic``."""
    out: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            for k, v in json.loads(line).items():
                if k.startswith("train/") and k.endswith(("_real", "_synthetic")) and v is not None:
                    out[k[len("train/"):]] = v
    return out


class SeedLink:
    """The trial as one seed's training sees it (``segsweep.sweep.trial.Trial``): intermediate values offset by the
    seed's index, the final values kept for the mean instead of told, pruning and failures passed on to the trial."""

    def __init__(self, link: TrialLink | NoTrial, index: int, max_iters: int, confirm: bool, single: bool) -> None:
        self.link, self.index, self.max_iters, self.confirm, self.single = link, index, max_iters, confirm, single
        self.values: list[float] | None = None
        self.attrs: dict[str, str] = {}

    def set_attrs(self, **attrs: str) -> None:
        self.attrs.update(attrs)
        if not self.single:  # the trial's output_dir and mlflow_run_id are the job's, not one seed's
            attrs = {k: v for k, v in attrs.items() if k not in ("output_dir", "mlflow_run_id")}
        if attrs:
            self.link.set_attrs(**attrs)

    def report(self, step: int, value: float) -> None:
        if not self.confirm:
            self.link.report(self.index * self.max_iters + step, value)

    def complete(self, values) -> None:
        self.values = [float(v) for v in values]

    def end(self, error: BaseException) -> None:
        self.link.end(error)


def _with(cfg: DictConfig, **updates) -> DictConfig:
    out = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(out, key.replace("__", "."), value, merge=False)
    return out


class _Record:
    """Per-seed results, in the trial's user attrs and (several seeds) on the job's MLflow run."""

    def __init__(self, link: TrialLink | NoTrial, seeds: list[int], stage: str) -> None:
        self.link, self.seeds = link, seeds
        self.values: dict[str, float] = {}
        self.objectives: dict[str, list[float]] = {}
        self.iou: dict[str, dict[str, float]] = {}
        self.monitors: dict[str, dict[str, float]] = {}
        self.runs: dict[str, str] = {}
        link.set_attrs(stage=stage, seeds=list(seeds))

    def add(self, seed: int, result: dict) -> None:
        key = str(seed)
        self.objectives[key] = result["values"]
        self.values[key] = result["values"][0]
        self.iou[key] = result["iou"]
        self.monitors[key] = result["monitors"]
        if result.get("mlflow_run_id"):
            self.runs[key] = result["mlflow_run_id"]
        self.link.set_attrs(seed_values=self.values, seed_objectives=self.objectives, seed_iou=self.iou,
                            seed_monitors=self.monitors, seed_runs=self.runs)

    def means(self) -> list[float]:
        rows = [self.objectives[str(s)] for s in self.seeds]
        return [sum(col) / len(col) for col in zip(*rows)]


def _seed_result(out_dir: Path, values: list[float], run_id: str | None) -> dict:
    ev = last_evaluation(out_dir / "metrics.jsonl")
    return {"values": values, "iou": {k[len("val/IoU/"):]: v for k, v in ev.items() if k.startswith("val/IoU/")},
            "monitors": final_monitors(out_dir / "metrics.jsonl"), "mlflow_run_id": run_id}


RunOne = Callable[..., "float | list[float]"]


def run(cfg: DictConfig) -> float | list[float]:
    """One job (``python train.py``; in a study, one trial): validate the config, join the data-parallel group if
    there is one, train the job's seeds; returns the objective (the mean over the seeds)."""
    typed = validate(cfg)  # every config error surfaces here, before any data is read
    # the store, in seconds; a study's sweeper checked it for its trials (a blink then must not cost one)
    if typed.mlflow.preflight and typed.study.trial_id is None:
        check_mlflow(typed.mlflow.enabled, typed.mlflow.tracking_uri, typed.mlflow.experiment_name)
    world, device = init_world(resolve_device(typed.trainer.device))  # one process, or a data-parallel rank
    try:
        return run_seeds(cfg, typed, world, device)
    finally:
        close_world(world)


def run_seeds(cfg: DictConfig, typed: Config, world: World, device: torch.device, run_one: RunOne = train_one):
    """Train the job's seeds, each with ``run_one(cfg, typed, world, device, trial)`` (``segsweep.run.train_one``),
    record each seed's result in the trial, tell the trial the mean, and return it (a float, or a list per
    objective)."""
    link = TrialLink.from_config(typed.study) if world.is_main else NO_TRIAL  # NO_TRIAL outside a study
    rec = link.record  # one read of the stored trial
    stage = rec.stage
    seeds = from_rank0([int(s) for s in rec.seeds] if rec.seeds else search_seeds(typed.study, typed.trainer.seed))
    record = _Record(link, seeds, stage)
    link.set_attrs(labels=label_set(typed.data.labels, typed.data.eval_classes).to_dict())  # the report's classes
    max_iters = typed.trainer.max_iters
    single = len(seeds) == 1
    if single:
        seed = seeds[0]
        if seed != typed.trainer.seed:  # e.g. a confirmation trial's fresh seed
            cfg = _with(cfg, trainer__seed=seed)
            typed = validate(cfg)
        sl = SeedLink(link, 0, max_iters, stage == CONFIRM, single=True)
        out = run_one(cfg, typed, world, device, sl)
        if world.is_main:
            record.add(seed, _seed_result(Path(typed.output_dir), sl.values, sl.attrs.get("mlflow_run_id")))
            link.complete(record.means())
        return out

    base = Path(from_rank0(typed.output_dir))
    parent = _JobRun(typed, base, seeds, stage) if world.is_main and typed.mlflow.enabled else None
    link.set_attrs(output_dir=str(base.resolve()), **({"mlflow_run_id": parent.run_id} if parent else {}))
    status = "FAILED"
    try:
        for j, seed in enumerate(seeds):
            seed_dir = base / f"seed_{seed}"
            done = from_rank0((seed_dir / RESULT).exists())
            if done:
                log.info("seed %d already trained (%s)", seed, seed_dir / RESULT)
                if world.is_main:
                    result = json.loads((seed_dir / RESULT).read_text())
                    record.add(seed, result)
                continue
            updates = {"trainer__seed": seed, "output_dir": str(seed_dir)}
            if parent is not None:
                updates["mlflow__run_name"] = f"{parent.name}-seed-{seed}"
                if parent.run_id:
                    updates["study__parent_run_id"] = parent.run_id
            dead = getattr(typed.study, "resume_from", None)  # a retried trial (segsweep.sweep's heartbeats):
            if dead:  # this seed's checkpoint in the dead job's directory
                ckpt = Path(dead).parent / f"seed_{seed}" / "checkpoint.pt"
                updates["study__resume_from"] = str(ckpt) if ckpt.exists() else None
            cfg_s = _with(cfg, **updates)
            sl = SeedLink(link, j, max_iters, stage == CONFIRM, single=False)
            log.info("seed %d (%d of %d) in %s", seed, j + 1, len(seeds), seed_dir)
            run_one(cfg_s, validate(cfg_s), world, device, sl)
            if world.is_main:
                result = _seed_result(seed_dir, sl.values, sl.attrs.get("mlflow_run_id"))  # told by run_one
                atomic_write(seed_dir / RESULT, json.dumps(result))
                record.add(seed, result)
            if parent is not None:
                parent.seed_done(seed, record)
        status = "FINISHED"
    except BaseException as e:
        end = ending(e)
        status = end.mlflow_status
        if parent is not None and end.trial_state == "PRUNED":
            parent.writer.set_tags({"segsweep.trial_state": "PRUNED"})
        raise
    finally:
        if parent is not None:
            parent.close(status)
    means = from_rank0(record.means() if world.is_main else None)
    link.complete(means)
    return means[0] if isinstance(typed.objective, str) else means


class _JobRun:
    """The MLflow run of a job with several seeds: the seeds' runs are its children (reopened on a requeue)."""

    def __init__(self, typed: Config, base: Path, seeds: list[int], stage: str) -> None:
        from segsweep.tracking.mlflow_writer import MlflowWriter

        base.mkdir(parents=True, exist_ok=True)
        id_file = base / "mlflow_job_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        name, tags = name_and_tags(typed, base)
        self.name = name
        tags.update({"segsweep.seeds": ",".join(map(str, seeds)), "segsweep.stage": stage})
        self.writer = MlflowWriter(typed.mlflow.tracking_uri, typed.mlflow.experiment_name, name, tags, run_id,
                                   out_dir=base)
        self.run_id = self.writer.run_id  # None while the store is away: the seeds' runs are then not nested
        if run_id is None:
            params = effective_params(typed)
            params["trainer.seed"] = ",".join(map(str, seeds))
            self.writer.log_params(params)
            if self.run_id:
                atomic_write(id_file, self.run_id)

    def seed_done(self, seed: int, record: _Record) -> None:
        from segsweep import stats

        self.writer.write(seed, {f"{metrics.MIOU}_by_seed": record.values[str(seed)]})
        done = [record.values[k] for k in record.values]
        s = stats.summarize(done)
        values = {metrics.MIOU: s.mean, "n_seeds": float(s.n)}
        if s.n >= 2:
            values.update({f"{metrics.MIOU}_std": s.std, f"{metrics.MIOU}_ci95": s.half_width})
        classes = {c for iou in record.iou.values() for c in iou}
        for c in sorted(classes):
            v = [iou[c] for iou in record.iou.values() if c in iou]
            values[f"val/IoU/{c}"] = sum(v) / len(v)
        self.writer.write(len(done), {k: v for k, v in values.items() if math.isfinite(v)})

    def close(self, status: str) -> None:
        self.writer.close(status)
