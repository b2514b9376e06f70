"""Writers: where a logging period's metrics go (console, JSON lines, progress bar, MLflow).

As in detectron2, the loop hands one dict of floats per logging step to every writer; writers know nothing
of the model or the data. MLflow lives in ``mlflow_writer`` since it also owns the run's lifecycle.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import sys
from pathlib import Path
from typing import Protocol

log = logging.getLogger("segsweep")


class Writer(Protocol):
    def write(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


class ConsoleWriter:
    """One line per logging step: iteration, ETA, loss, terms, monitors, lr, data and step time."""

    def __init__(self, max_iters: int) -> None:
        self.max_iters = max_iters

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if "train/loss" in metrics:
            train = {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")}
            eta = datetime.timedelta(seconds=round(train.get("time", 0.0) * (self.max_iters - step)))
            order = ["loss"] + [k for k in train if k not in ("loss", "lr", "time", "data_time")]
            parts = [f"iter: {step}/{self.max_iters}", f"eta: {eta}"]
            parts += [f"{k}: {_fmt(train[k])}" for k in order]
            parts += [f"lr: {train.get('lr', 0.0):.3e}", f"data_time: {train.get('data_time', 0.0):.4f}",
                      f"time: {train.get('time', 0.0):.4f}"]
            log.info("  ".join(parts))
        if "val/mIoU" in metrics:
            log.info("iter: %d  val/mIoU: %.4f  val/pixel_acc: %.4f  val/mIoU_rare: %.4f", step, metrics["val/mIoU"],
                     metrics.get("val/pixel_acc", math.nan), metrics.get("val/mIoU_rare", math.nan))

    def close(self) -> None:
        pass


class JsonlWriter:
    """``metrics.jsonl``: one JSON object per logging step, flushed so that a crash keeps every line written."""

    def __init__(self, path: Path, resume_from: int | None = None) -> None:
        self.path = Path(path)
        if resume_from is not None and self.path.exists():  # drop what the interrupted run wrote after its checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["iteration"] <= resume_from]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"iteration": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class ProgressBar:
    """A tqdm bar on a terminal; nothing in batch logs (SLURM output files, CI)."""

    def __init__(self, max_iters: int, mode: str = "auto", start: int = 0) -> None:
        self.bar = None
        if mode == "on" or (mode == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=max_iters, initial=start, dynamic_ncols=True, leave=False, unit="it")
        self.last = start

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None and "train/loss" in metrics:
            self.bar.update(step - self.last)
            self.last = step
            self.bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
