"""Validation: a confusion matrix accumulated on the device with ``bincount``, then IoU on the host."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from segsweep.data.labels import LabelSet
from segsweep.engine.distributed import all_reduce_
from segsweep.metrics import MIOU, MIOU_RARE, PIXEL_ACC
from segsweep.models.outputs import main_logits


@dataclass
class EvalResult:
    confusion: np.ndarray  # (C, C) int64, rows = ground truth, columns = prediction

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both the labels and the predictions."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    @property
    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth (the Cityscapes convention)."""
        present = self.confusion.sum(1) > 0
        return float(np.nanmean(self.iou[present])) if present.any() else float("nan")

    @property
    def pixel_acc(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    def miou_over(self, classes: tuple[int, ...]) -> float:
        present = np.zeros(len(self.confusion), bool)
        present[list(classes)] = True
        present &= self.confusion.sum(1) > 0
        return float(np.nanmean(self.iou[present])) if present.any() else float("nan")

    def metrics(self, labels: LabelSet) -> dict[str, float]:
        """val/mIoU over the evaluated classes (data.eval_classes; all by default) present in the ground truth,
        val/mIoU_rare over the rare ones among them, pixel accuracy, and every class's IoU."""
        out = {MIOU: self.miou_over(labels.evaluated), PIXEL_ACC: self.pixel_acc}
        if rare := tuple(c for c in labels.rare if c in labels.evaluated):
            out[MIOU_RARE] = self.miou_over(rare)
        for name, v in zip(labels.classes, self.iou):
            if not np.isnan(v):
                out[f"val/IoU/{name}"] = float(v)
        return out


def confusion_update(confusion: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                     ignore_index: int = 255) -> None:
    """Add a batch to a (C, C) device confusion matrix in place; ignored pixels are dropped."""
    c = confusion.shape[0]
    valid = target != ignore_index
    # Ignored pixels go to an extra bin at the end, sliced off: no data-dependent shape, no sync.
    idx = torch.where(valid, target * c + pred, c * c)
    confusion += torch.bincount(idx.flatten(), minlength=c * c + 1)[: c * c].view(c, c)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
             amp: bool = False, channels_last: bool = False, ignore_index: int = 255) -> EvalResult:
    """``amp``: bf16 autocast on any device (the CPU too); ``channels_last``: images in that memory format, as the
    model trained with it expects."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if amp and torch.amp.is_autocast_available(device.type) else contextlib.nullcontext())
    for batch in loader:
        image = batch["image"].to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        target = batch["label"].to(device, non_blocking=True)
        with autocast:
            logits = main_logits(model(image), target.shape[-2:])
        confusion_update(confusion, logits.argmax(1), target, ignore_index)
    all_reduce_(confusion)  # data-parallel: each rank saw its share of the images
    model.train(was_training)
    return EvalResult(confusion.cpu().numpy())
