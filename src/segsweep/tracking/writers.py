"""Writers: where a logging period's metrics go (console, JSON lines, progress bar, MLflow).

The loop pushes one dict of floats per logging step to every writer (read from the device once, by
``tracking.storage``); writers know nothing of the model or the data, nor of each other. detectron2 splits it
the other way: the loop puts scalars into a shared EventStorage, and each EventWriter (JSONWriter,
TensorboardXWriter, CommonMetricPrinter) pulls them from it when a periodic hook calls its ``write()``.
MLflow lives in ``mlflow_writer`` since it also owns the run's lifecycle.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Protocol

from segsweep.data.plan import DOMAINS
from segsweep.io import atomic_write

log = logging.getLogger("segsweep")


class Writer(Protocol):
    def write(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class ConsoleWriter:
    """A short line per logging step (under 120 columns with the log prefix): iteration, ETA, the optimised loss
    and its main-head terms, each domain's unweighted monitors (term values joined by '/'), lr, seconds per
    iteration; and one line per evaluation. Everything else (auxiliary terms, per-source monitors, data time) is
    in metrics.jsonl and MLflow."""

    SHORT = {"real": "real", "synthetic": "syn"}

    def __init__(self, max_iters: int, terms: list[str] | None = None,
                 groups: tuple[str, ...] = DOMAINS) -> None:
        self.max_iters, self.terms, self.groups = max_iters, terms, groups

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if "train/loss" in metrics:
            t = {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")}
            eta = _clock(t.get("time", 0.0) * (self.max_iters - step))
            terms = [k for k in (self.terms or [k for k in t if k in ("ce", "dice")]) if "_" not in k and k in t]
            parts = [f"[{step}/{self.max_iters}]", f"eta {eta}", f"loss {_fmt(t['loss'])}",
                     *(f"{k} {_fmt(t[k])}" for k in terms)]
            for g in self.groups[:2]:  # the domains; per-source monitors are in metrics.jsonl and MLflow
                values = [t.get(f"{k}_{g}") for k in terms]
                if any(v is not None for v in values):
                    parts.append(f"{self.SHORT.get(g, g)} " + "/".join("-" if v is None else _fmt(v) for v in values))
            parts += [f"lr {t.get('lr', 0.0):.1e}".replace("e-0", "e-"), f"{t.get('time', 0.0):.2f}s/it"]
            log.info(" ".join(parts))
        if "val/mIoU" in metrics:
            rare = f" rare {metrics['val/mIoU_rare']:.3f}" if "val/mIoU_rare" in metrics else ""
            log.info("[%d] val mIoU %.4f%s pixel acc %.3f", step, metrics["val/mIoU"], rare,
                     metrics.get("val/pixel_acc", math.nan))

    def close(self) -> None:
        pass


class JsonlWriter:
    """``metrics.jsonl``: one JSON object per logging step, flushed so that a crash keeps every line written."""

    def __init__(self, path: Path, resume_from: int | None = None) -> None:
        self.path = Path(path)
        if resume_from is not None and self.path.exists():  # drop what the interrupted run wrote after its checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["iteration"] <= resume_from]
            atomic_write(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"iteration": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class ProgressBar:
    """A tqdm bar on a terminal; nothing in batch logs (SLURM output files, CI). While it shows, log lines go
    through tqdm's writer (above the bar), so the two never share a line."""

    def __init__(self, max_iters: int, mode: str = "auto", start: int = 0) -> None:
        self.bar, self._redirect = None, None
        if mode == "on" or (mode == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger(), log])
            self._redirect.__enter__()
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
            self._redirect.__exit__(None, None, None)
            self.bar = None
