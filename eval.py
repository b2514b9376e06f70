"""Evaluate a trained model on a split: ``python eval.py ckpt=<run dir or model_final.pt> [split=val] [data=...]``.

The model is evaluated with the config it was trained with (any key or group can be overridden), as the run
evaluated it: mIoU over data.eval_classes, pixel accuracy, every class's IoU. Writes ``<run dir>/eval/<split>/``
(metrics.json, the confusion matrix and per-class IoU plots) and, with MLflow on, a new MLflow run nested under
the training run (tag segsweep.evaluates = its id).
"""

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("SEGSWEEP_ROOT", str(Path(__file__).resolve().parent))
logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
log = logging.getLogger("segsweep")


def main(argv: list[str]) -> dict[str, float]:
    from segsweep.data.build import eval_loader
    from segsweep.engine.evaluate import evaluate
    from segsweep.infer import load_run, parse_args
    from segsweep.io import atomic_write
    from segsweep.run import resolve_device
    from segsweep.tracking import plots

    args, overrides = parse_args(argv, {"ckpt": None, "split": "val", "device": "auto"})
    run = load_run(args["ckpt"], overrides)
    t = run.typed
    device = resolve_device(args["device"])
    loader, dataset = eval_loader(t.data, t.dataset_mix, run.labels, args["split"], device.type == "cuda")
    result = evaluate(run.model.to(device), loader, run.labels.num_classes, device, t.trainer.amp,
                      t.trainer.channels_last)
    metrics = result.metrics(run.labels)
    out = run.run_dir / "eval" / args["split"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=1))
    figures = [plots.confusion_matrix(result.confusion, list(run.labels.classes), out / "confusion.png"),
               plots.iou_bars(result.iou, list(run.labels.classes), out / "iou_per_class.png")]
    where = f"{t.data.val_source} {args['split']} ({len(dataset)} images)"
    log.info("%s on %s: mIoU %.4f (%s classes)  pixel acc %.4f%s", run.ckpt, where, metrics["val/mIoU"],
             run.labels.eval_name, metrics["val/pixel_acc"],
             f"  mIoU rare {metrics['val/mIoU_rare']:.4f}" if "val/mIoU_rare" in metrics else "")
    width = max(len(c) for c in run.labels.classes)
    for name, iou in zip(run.labels.classes, result.iou):
        log.info("  %-*s %s", width, name, "  n/a" if iou != iou else f"{100 * iou:5.1f} %")
    if t.mlflow.enabled:
        _log_mlflow(run, args["split"], metrics, figures, out)
    log.info("wrote %s", out)
    return metrics


def _log_mlflow(run, split, metrics, figures, out) -> None:
    """A new MLflow run nested under the training run (found by its output directory), in its experiment."""
    from segsweep.tracking.mlflow_writer import MlflowWriter, open_client

    t = run.typed
    client = open_client(t.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(t.mlflow.experiment_name)
    parent = None
    if exp is not None:
        found = client.search_runs([exp.experiment_id], f"tags.`segsweep.output_dir` = '{run.run_dir.resolve()}'",
                                   max_results=1)
        parent = found[0].info.run_id if found else None
    tags = {"segsweep.evaluates": parent or "", "segsweep.ckpt": str(run.ckpt.resolve()), "segsweep.split": split,
            **({"mlflow.parentRunId": parent} if parent else {})}
    writer = MlflowWriter(t.mlflow.tracking_uri, t.mlflow.experiment_name, f"eval-{split}", tags)
    writer.write(0, {f"eval/{k.removeprefix('val/')}": v for k, v in metrics.items()})
    for f in [*figures, out / "metrics.json"]:
        writer.log_artifact(f, "eval")
    writer.close("FINISHED")
    log.info("MLflow run %s%s", writer.run_id, f" (nested under the training run {parent})" if parent else
             " (the training run was not found in MLflow: a run of its own)")


if __name__ == "__main__":
    from segsweep.infer import cli

    cli(main)
