"""Class weights from label frequencies: counting, the weighting methods, a printable table and a disk cache.

Weights are normalised to mean 1 over the classes present in the counted labels, so the loss keeps its scale
whatever the method; a class that never occurs gets weight 0 (it contributes no pixel to CE, and in Dice a
class with weight 0 is simply left out of the class average).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from segsweep.config import WeightMethod
from segsweep.io import atomic_write

METHODS: tuple[str, ...] = get_args(WeightMethod)  # the schema's list: weighting.method


@dataclass
class LabelCounts:
    pixels: torch.Tensor  # (C,) int64: valid pixels of each class
    images: torch.Tensor  # (C,) int64: images containing the class
    pixels_where_present: torch.Tensor  # (C,) int64: valid pixels of the images containing the class
    n_images: int
    # per counted dataset: {"dataset", "pixels", "files", "read", "values"} of label values that are no
    # Cityscapes id (ignored as 255), seen while counting; reported once per run
    unknown_ids: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"pixels": self.pixels.tolist(), "images": self.images.tolist(),
                "pixels_where_present": self.pixels_where_present.tolist(), "n_images": int(self.n_images),
                "unknown_ids": self.unknown_ids}

    @classmethod
    def from_dict(cls, d: dict) -> LabelCounts:
        vec = {k: torch.tensor(d[k], dtype=torch.int64) for k in ("pixels", "images", "pixels_where_present")}
        if len({v.shape for v in vec.values()}) != 1 or vec["pixels"].dim() != 1:
            raise ValueError("LabelCounts: pixels, images and pixels_where_present must be lists of equal length")
        return cls(**vec, n_images=int(d["n_images"]), unknown_ids=list(d.get("unknown_ids", [])))

    def __add__(self, other: LabelCounts) -> LabelCounts:
        return LabelCounts(self.pixels + other.pixels, self.images + other.images,
                           self.pixels_where_present + other.pixels_where_present, self.n_images + other.n_images,
                           self.unknown_ids + other.unknown_ids)


def _flat_long(label: np.ndarray | torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(label):
        return label.reshape(-1).long()
    return torch.from_numpy(np.asarray(label, dtype=np.int64).ravel())  # a writable int64 copy of uint8 labels


def count_labels(labels: Iterable[np.ndarray | torch.Tensor], num_classes: int,
                 ignore_index: int = 255) -> LabelCounts:
    """Count train-id label maps; ignore_index is skipped, any other value outside 0..C-1 raises ValueError."""
    C = num_classes
    pixels, images, where_present = (torch.zeros(C, dtype=torch.int64) for _ in range(3))
    n_images = 0
    for label in labels:
        t = _flat_long(label)
        t = t[t != ignore_index]
        bad = (t < 0) | (t >= C)
        if bad.any():
            raise ValueError(f"label value {int(t[bad][0])} in image {n_images} is outside 0..{C - 1} "
                             f"and is not the ignore index {ignore_index}")
        per_class = torch.bincount(t, minlength=C)
        present = per_class > 0
        pixels += per_class
        images += present
        where_present += present * t.numel()
        n_images += 1
    return LabelCounts(pixels, images, where_present, n_images)


def compute_class_weights(counts: LabelCounts, method: str, *, beta: float = 0.99, count: str = "images",
                          enet_c: float = 1.02) -> torch.Tensor:
    """float32 (C,) weights: 0 for absent classes, mean 1 over present ones ('none' gives ones everywhere).

    inverse_freq 1/f_c and sqrt_inv_freq 1/sqrt(f_c), f_c = pixels_c / all pixels; effective_num (Cui et al.)
    (1 - beta) / (1 - beta^n_c), n_c = images containing c (count='images') or its pixels (with pixel counts
    beta^n_c is ~0 for any usual beta and the weights are uniform); median_freq (Eigen & Fergus)
    median(freq) / freq_c with freq_c = pixels_c / pixels of the images containing c; enet 1 / ln(enet_c + f_c).
    """
    if method not in METHODS:
        raise ValueError(f"unknown class-weight method {method!r}; valid: {', '.join(METHODS)}")
    if count not in ("images", "pixels"):
        raise ValueError(f"count must be 'images' or 'pixels', got {count!r}")
    C = counts.pixels.numel()
    if method == "none":
        return torch.ones(C)
    pixels = counts.pixels.double().numpy()
    present = pixels > 0
    if not present.any():
        raise ValueError("cannot compute class weights: the counted labels contain no valid pixel")
    freq = pixels / pixels.sum()
    w = np.zeros(C)
    p = present
    if method == "inverse_freq":
        w[p] = 1 / freq[p]
    elif method == "sqrt_inv_freq":
        w[p] = 1 / np.sqrt(freq[p])
    elif method == "effective_num":
        n = (counts.images if count == "images" else counts.pixels).double().numpy()
        w[p] = (1 - beta) / (1 - np.power(beta, n[p]))
    elif method == "median_freq":
        local = pixels[p] / counts.pixels_where_present.double().numpy()[p]
        w[p] = np.median(local) / local
    else:  # enet
        w[p] = 1 / np.log(enet_c + freq[p])
    w[p] /= w[p].mean()
    return torch.from_numpy(w).float()


def format_table(counts: LabelCounts, weights: torch.Tensor, class_names: list[str]) -> str:
    """A fixed-width table: class, pixels, frequency (%), images, weight."""
    total = max(int(counts.pixels.sum()), 1)
    width = max([len("class"), *map(len, class_names)])
    lines = [f"{'class':<{width}} {'pixels':>13} {'freq %':>8} {'images':>7} {'weight':>8}"]
    for name, px, im, w in zip(class_names, counts.pixels.tolist(), counts.images.tolist(), weights.tolist(),
                               strict=True):
        lines.append(f"{name:<{width}} {px:>13,d} {100 * px / total:>8.3f} {im:>7d} {w:>8.4f}")
    lines.append(f"{'total':<{width}} {total:>13,d} {100.0:>8.3f} {counts.n_images:>7d}")
    return "\n".join(lines)


def _cache_key(identity: dict, method: str, params: dict) -> str:
    canonical = json.dumps({"identity": identity, "method": method, "params": params}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load_cached(path: Path) -> tuple[torch.Tensor, LabelCounts] | None:
    """The cached (weights, counts), or None when the file is missing, corrupt or not the one its name says."""
    try:
        data = json.loads(path.read_text())
        counts = LabelCounts.from_dict(data["counts"])
        weights = torch.tensor(data["weights"], dtype=torch.float32)
        ok = (_cache_key(data["identity"], data["method"], data["params"]) == path.stem
              and weights.shape == counts.pixels.shape and all(math.isfinite(w) for w in data["weights"]))
        return (weights, counts) if ok else None
    except (OSError, ValueError, KeyError, TypeError):  # json.JSONDecodeError is a ValueError
        return None


def class_weights_cached(cache_dir: str | os.PathLike, identity: dict, method: str, params: dict,
                         counter: Callable[[], LabelCounts]) -> tuple[torch.Tensor, LabelCounts]:
    """Weights and counts from ``<cache_dir>/class_weights/<sha256>.json``, keyed by a canonical JSON of
    identity + method + params; counted with ``counter()`` and written (atomically) when missing or unreadable."""
    path = Path(cache_dir) / "class_weights" / f"{_cache_key(identity, method, params)}.json"
    cached = _load_cached(path)
    if cached is not None:
        return cached
    counts = counter()
    weights = compute_class_weights(counts, method, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"identity": identity, "method": method, "params": params, "counts": counts.to_dict(),
              "weights": weights.tolist()}
    atomic_write(path, json.dumps(record, indent=1, sort_keys=True, default=str))
    return weights, counts


def label_iter(datasets: list, fraction: float, seed: int, audits: list | None = None) -> Iterator[np.ndarray]:
    """Labels of a seeded random subset of each dataset: max(1, round(fraction * len)) images, in index order.

    Each dataset's subset depends only on (seed, its position in the list), not on the other datasets.
    ``audits[k]`` (a ``segsweep.data.labels.UnknownAudit``) counts dataset k's values its table does not name."""
    for k, ds in enumerate(datasets):
        n = len(ds)
        if n == 0:
            continue
        take = min(n, max(1, round(fraction * n)))
        rng = np.random.default_rng([seed, k])
        for i in np.sort(rng.choice(n, size=take, replace=False)):
            yield ds.load_label(int(i), audits[k]) if audits is not None else ds.load_label(int(i))
