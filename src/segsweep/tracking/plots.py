"""Figures of a finished run: training curves (real vs synthetic monitors), per-class IoU, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on headless nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segsweep.io import atomic_path  # noqa: E402


def save_figure(fig, path: Path, **kwargs) -> Path:
    """A PNG written whole (a reader, or an MLflow upload, never sees half of it); the figure is closed."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, **kwargs)
    finally:
        plt.close(fig)
    return Path(path)


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(records: list[dict], terms: list[str], path: Path) -> Path:
    """One panel per loss term: the optimised (weighted) value beside the unweighted real and synthetic
    monitors; a last panel with the total loss and validation mIoU."""
    fig, axes = plt.subplots(1, len(terms) + 1, figsize=(4.2 * (len(terms) + 1), 3.4), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for suffix, style, label in (("", "-", "optimised (weighted)"), ("_real", "--", "real (unweighted)"),
                                     ("_synthetic", ":", "synthetic (unweighted)")):
            x, y = _series(records, f"train/{term}{suffix}")
            if x:
                ax.plot(x, y, style, label=label)
        ax.set(title=term, xlabel="iteration")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    x, y = _series(records, "train/loss")
    ax.plot(x, y, label="train/loss")
    ax.set(title="loss and val mIoU", xlabel="iteration")
    x, y = _series(records, "val/mIoU")
    if x:
        ax2 = ax.twinx()
        ax2.plot(x, y, "o-", color="tab:green", label="val/mIoU")
        ax2.set_ylim(0, 1)
        ax2.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)


def iou_bars(iou: np.ndarray, class_names: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3.4))
    values = np.nan_to_num(iou, nan=0.0)
    ax.bar(range(len(class_names)), values, color="tab:blue")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="IoU", title=f"per-class IoU (mIoU {np.nanmean(iou):.3f})")
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_matrix(confusion: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Rows normalised to the ground-truth class: the diagonal is each class's recall."""
    rows = confusion.sum(1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="ground truth", title="confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)
