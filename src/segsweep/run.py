"""One seed's training run from a composed config (``train_one``; ``segsweep.seeds`` runs the job's seeds): data
-> class weights -> model, criterion, optimiser -> MLflow run -> train loop -> plots and artifacts -> the
objective value, told to the trial.

With ``segsweep.seeds``, the only module that sees the whole config; everything it calls takes plain values or the
validated dataclasses of ``segsweep.config``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import optuna
import torch
from omegaconf import DictConfig, OmegaConf

from segsweep.class_weights import LabelCounts, class_weights_cached, count_labels, format_table, label_iter
from segsweep.config import Config
from segsweep.data.build import TrainVal, build_train_val, stop_workers
from segsweep.data.labels import IGNORE, LabelSet, UnknownAudit, label_set
from segsweep.data.plan import DOMAINS, PlannedSource, counted_sources
from segsweep.engine.checkpoint import load, restore, save_atomic, training_state
from segsweep.engine.distributed import World, from_rank0
from segsweep.engine.optim import build_optimizer, build_scheduler
from segsweep.engine.preemption import StopSignals
from segsweep.engine.trainer import Preempted, TrainState, train
from segsweep.infer import val_panels
from segsweep.io import atomic_write
from segsweep.losses import SegmentationCriterion
from segsweep.models import build_model, check_outputs
from segsweep.stores import redact
from segsweep.sweep.record import ending
from segsweep.sweep.trial import NO_TRIAL, Trial
from segsweep.tracking import plots
from segsweep.tracking.mlflow_writer import MlflowWriter
from segsweep.tracking.run_info import effective_params, name_and_tags
from segsweep.tracking.writers import ConsoleWriter, JsonlWriter, ProgressBar

log = logging.getLogger("segsweep")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config key 'trainer.device': {name!r} was asked for but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights_for(cfg: Config, tv: TrainVal, labels: LabelSet) -> tuple[torch.Tensor, LabelCounts]:
    """Class weights from the labels of the trained sources named by ``weighting.source``, cached on disk.
    Counted for ``none`` too: the table shows what the model is trained on."""
    w = cfg.weighting
    counted = counted_sources(w.source, tv.plan)
    datasets = [tv.trained[p.name] for p in counted]
    # "formula" changes whenever compute_class_weights or the counts change, so that old cache files are not reused.
    identity = {"datasets": [d.fingerprint() for d in datasets], "source": w.source, "fraction": w.fraction,
                "seed": w.seed, "num_classes": labels.num_classes, "labels": labels.fingerprint(), "formula": 2}
    params = {"beta": w.beta, "count": w.count, "enet_c": w.enet_c}

    def count() -> LabelCounts:
        audits = [UnknownAudit() for _ in datasets]
        counts = count_labels(label_iter(datasets, w.fraction, w.seed, audits), labels.num_classes, IGNORE)
        counts.unknown_ids = [{"dataset": f"source {p.name}", "layout": p.config.layout, **a.to_dict()}
                              for p, d, a in zip(counted, datasets, audits)]
        return counts

    weights, counts = class_weights_cached(cfg.data.cache_dir, identity, w.method, params, count)
    for u in counts.unknown_ids:  # once per dataset and run, from the count or its cache
        note = " (34: GTA5 licence plate)" if 34 in u["values"] and u.get("layout") == "gta5" else ""
        if line := UnknownAudit.from_dict(u).describe(u["dataset"], note):
            log.info("%s", line)
    return weights, counts


def monitor_groups(plan: list[PlannedSource]) -> tuple[tuple[str, ...], torch.Tensor]:
    """Split-monitor groups: the two domains, then every source not named after its domain; and which groups each
    source's samples count in, (sources, groups)."""
    groups = (*DOMAINS, *(p.name for p in plan if p.name not in DOMAINS))
    member = torch.zeros(len(plan), len(groups))
    for p in plan:
        member[p.position, groups.index(p.domain)] = 1
        member[p.position, groups.index(p.name)] = 1
    return groups, member


def objective_names(cfg: Config) -> list[str]:
    return [cfg.objective] if isinstance(cfg.objective, str) else list(cfg.objective)


def train_one(cfg: DictConfig, typed: Config, world: World, device: torch.device,
              trial: Trial = NO_TRIAL) -> float | list[float]:
    """One seed's training (``segsweep.seeds`` runs the job's seeds); ``trial``: the Optuna trial as this seed sees
    it (``segsweep.seeds.SeedLink``) on rank 0; a plain run's records nothing."""
    main = world.is_main  # rank 0 alone writes files, logs to MLflow and talks to the Optuna trial
    out_dir = Path(from_rank0(typed.output_dir))  # every rank resumes from rank 0's checkpoint
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        log.setLevel(logging.WARNING)  # one copy of the run's log, rank 0's
    if typed.trainer.num_threads:
        torch.set_num_threads(typed.trainer.num_threads)
    seed_everything(typed.trainer.seed)
    labels = label_set(typed.data.labels, typed.data.eval_classes)
    model = build_model(typed.model)
    check_outputs(model, labels.num_classes)  # a readable output with one channel per class, before any data
    ckpt_path = out_dir / "checkpoint.pt"
    # A retried trial (study.resume_from, set by the sweeper) starts from its dead predecessor's checkpoint, with
    # that run's metrics.jsonl up to it, but in a new MLflow run: the dead run stays closed FAILED.
    source = ckpt_path if ckpt_path.exists() or not typed.study.resume_from else Path(typed.study.resume_from)
    resumed = load(source) if typed.trainer.resume and source.exists() else None
    if resumed and source != ckpt_path and main and not (out_dir / "metrics.jsonl").exists() \
            and (source.parent / "metrics.jsonl").exists():
        (out_dir / "metrics.jsonl").write_bytes((source.parent / "metrics.jsonl").read_bytes())
    start = resumed["iteration"] if resumed else 0

    try:
        tv = build_train_val(typed.data, typed.dataset_mix, labels, typed.trainer.batch_size, typed.trainer.seed,
                             pin_memory=device.type == "cuda", start_batch=start,  # a resumed run: same batches
                             rank=world.rank, world_size=world.size)
        train_loader, val_loader = tv.train_loader, tv.val_loader
        class_weight, counts = class_weights_for(typed, tv, labels)
    except BaseException as e:  # bad data or a bad sampled value fails the trial, with its reason
        trial.end(e)
        raise
    table = format_table(counts, class_weight, list(labels.classes))
    resolved = out_dir / "config_resolved.yaml"
    if main:
        log.info("class weights (%s, source: %s):\n%s", typed.weighting.method, typed.weighting.source, table)
        atomic_write(out_dir / "class_weights.txt", table + "\n")
        atomic_write(resolved, OmegaConf.to_yaml(cfg, resolve=True))

    model = model.to(device)
    if typed.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups, source_groups = monitor_groups(tv.plan)
    criterion = SegmentationCriterion.from_config(typed.loss, typed.dataset_mix, class_weight.to(device),
                                                  labels.num_classes, groups, source_groups)
    optimizer = build_optimizer(model, typed.optim)
    scheduler = build_scheduler(optimizer, typed.trainer.max_iters, typed.optim)
    state = TrainState(model, criterion, optimizer, scheduler)
    if resumed:
        restore(state, resumed)
        log.info("resumed from %s at iteration %d", source, start)

    writers, mlflow = [], None
    if main:
        writers = [ConsoleWriter(typed.trainer.max_iters, list(criterion.weight_dict), groups),
                   JsonlWriter(out_dir / "metrics.jsonl", resume_from=start if resumed else None),
                   ProgressBar(typed.trainer.max_iters, typed.trainer.progress_bar, start)]
        if typed.mlflow.enabled:
            mlflow = _open_mlflow(typed, out_dir, resolved,
                                  resumed.get("mlflow_run_id") if resumed and source == ckpt_path else None, world)
            writers.append(mlflow)
        run_id = {"mlflow_run_id": mlflow.run_id} if mlflow and mlflow.run_id else {}  # None: the store is away
        trial.set_attrs(output_dir=str(out_dir.resolve()), **run_id)

    names = objective_names(typed)

    def on_eval(step: int, metrics: dict[str, float]) -> None:  # the pruner's say: raises optuna.TrialPruned
        trial.report(step, metrics[names[0]])

    def checkpoint(step: int) -> None:
        save_atomic(training_state(state, mlflow.run_id if mlflow else None), ckpt_path)

    status, result, stop, preempted = "FAILED", None, StopSignals(), False
    try:
        with stop:
            result = train(state, train_loader, val_loader, typed.trainer, device, writers, labels,
                           on_eval if main else None, checkpoint if main else None, stop, world)
        status = "FINISHED"
    except BaseException as e:
        status = ending(e).mlflow_status
        if isinstance(e, Preempted):  # checkpoint written: the trial goes on in the requeued job
            preempted = True
            log.warning("%s: %s", e, ckpt_path)
            if mlflow is not None:
                mlflow.set_tags({"segsweep.preempted_at": str(e.iteration)})
            trial.set_attrs(preempted_at=str(e.iteration))
        elif isinstance(e, optuna.TrialPruned) and mlflow is not None:
            mlflow.set_tags({"segsweep.trial_state": "PRUNED"})  # MLflow has no 'pruned' status: KILLED, tagged
        trial.end(e)
        raise
    finally:
        stop_workers(train_loader, val_loader)  # no loader worker outlives the run, however it ended
        for w in writers[:-1] if mlflow else writers:
            w.close()
        figures = _plots(out_dir, result, list(criterion.weight_dict), labels) if main and typed.mlflow.plots else []
        if main and typed.mlflow.plots and result is not None:  # image | ground truth | prediction
            panels = val_panels(model, tv.val, labels, out_dir / "plots" / "val_panels.png", device=device)
            figures += [panels] if panels else []
        if mlflow is not None:
            for path in figures:
                mlflow.log_artifact(path, "plots")
            mlflow.log_artifact(out_dir / "metrics.jsonl")
            late = mlflow.run_id is None  # the store was away when the run started
            mlflow.close(status)
            if late and mlflow.run_id:
                trial.set_attrs(mlflow_run_id=mlflow.run_id)
        if preempted:
            stop.hand_over()  # submitit requeues the job; otherwise the signal ends the process

    metrics = result.metrics(labels)
    values = [float(metrics[n]) for n in names]
    if main:
        save_atomic({"model": model.state_dict(), "iteration": state.iteration, "labels": labels.to_dict()},
                    out_dir / "model_final.pt")  # the label set: eval.py and predict.py check theirs against it
        ckpt_path.unlink(missing_ok=True)  # finished: nothing to resume
        rare = f"  val/mIoU_rare {metrics['val/mIoU_rare']:.4f}" if "val/mIoU_rare" in metrics else ""
        log.info("final: val/mIoU %.4f  val/pixel_acc %.4f%s  (%s)", metrics["val/mIoU"], metrics["val/pixel_acc"],
                 rare, out_dir)
    trial.complete(values)
    return values[0] if isinstance(typed.objective, str) else values


def _open_mlflow(typed: Config, out_dir: Path, resolved: Path, run_id: str | None, world: World) -> MlflowWriter:
    """The run's MLflow run: a new one, a sweep trial's child of the study run, or the resumed ``run_id``."""
    run_name, tags = name_and_tags(typed, out_dir)
    tags["segsweep.world_size"] = str(world.size)
    mlflow = MlflowWriter(typed.mlflow.tracking_uri, typed.mlflow.experiment_name, run_name, tags, run_id,
                          out_dir=out_dir, mirror="metrics.jsonl")
    if run_id is None:  # params are immutable: a resumed run keeps those it logged
        mlflow.log_params(effective_params(typed))
        mlflow.log_artifact(resolved)
        mlflow.log_artifact(out_dir / "class_weights.txt")
    if mlflow.run_id:
        log.info("MLflow run %s in %s", mlflow.run_id, redact(typed.mlflow.tracking_uri))
    return mlflow


def _plots(out_dir: Path, result, terms: list[str], labels: LabelSet) -> list[Path]:
    """Figures from metrics.jsonl and the last evaluation; drawn even when training stopped early."""
    import json

    path = out_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not records:
        return []
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    figures = [plots.training_curves(records, terms, plot_dir / "training_curves.png")]
    if result is not None:
        figures.append(plots.iou_bars(result.iou, list(labels.classes), plot_dir / "iou_per_class.png"))
        figures.append(plots.confusion_matrix(result.confusion, list(labels.classes), plot_dir / "confusion.png"))
    return figures
