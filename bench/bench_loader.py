"""Training-loader throughput at real image sizes, against a bare PIL decode + random crop of the same files.

Writes (once, cached) toycity's real set at Cityscapes size, 2048×1024 PNGs in the Cityscapes layout, builds the
training loader exactly as a run does (``segsweep.data.build.build_train_val``: label mapping, random rescale,
crop, flip, normalisation, collation), and measures

- ``loader_per_image_ms``: what one image costs a worker (the loader's dataset + transform in this process), split
  into ``read_ms`` (decode, label mapping) and ``transform_ms``;
- ``one_worker_images_per_s``: images per second that one worker process delivers to the training process
  (``data.num_workers=1``, batches included);
- ``bare_per_image_ms``: ``PIL.Image.open(...).convert("RGB")``, the label opened, both cropped at a random box to
  the same crop size and turned into arrays: the least any loader of these files must do;

and the ratio ``loader / bare`` (goal ≤ 1.2). Rounds alternate and each figure is the best round's, which is robust
to other load on the machine. To size ``data.num_workers``: a GPU step of B images taking t seconds needs about
B / (t × one_worker_images_per_s) workers.

    python bench/bench_loader.py                       # 2048×1024, crops 512×1024, scale 0.5–2.0
    python bench/bench_loader.py --crop 768 768 --scale 0.75 1.5 --images 24
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segsweep.config import DataConfig, DatasetMixConfig, ToyCityConfig
from segsweep.data.build import build_train_val, stop_workers
from segsweep.data.toycity import ensure_toycity


def bare(paths: list[tuple[Path, Path]], crop: tuple[int, int], rng: np.random.Generator) -> float:
    """Seconds per image: decode both files, random crop, arrays (the minimum a training loader does)."""
    ch, cw = crop
    t0 = time.perf_counter()
    for img_path, lab_path in paths:
        im = Image.open(img_path).convert("RGB")
        lab = Image.open(lab_path)
        lab.load()
        w, h = im.size
        top, left = int(rng.integers(0, max(h - ch, 0) + 1)), int(rng.integers(0, max(w - cw, 0) + 1))
        box = (left, top, left + min(cw, w), top + min(ch, h))
        torch.from_numpy(np.asarray(im.crop(box))).permute(2, 0, 1)
        torch.from_numpy(np.asarray(lab.crop(box)))
    return (time.perf_counter() - t0) / len(paths)


def in_process(loader, n: int) -> tuple[float, float, float]:
    """Seconds per image for the loader's dataset work (read, transform, total), in this process."""
    concat = loader.dataset  # SeededConcat of DomainDatasets
    batches = iter(loader.batch_sampler)
    read = tf = 0.0
    for _ in range(n):
        for idx, seed in next(batches)[:1]:  # one sample of each batch: as many images as the other methods
            part = concat.datasets[0]
            t0 = time.perf_counter()
            sample = part.dataset[idx]
            t1 = time.perf_counter()
            part.transform(sample, torch.Generator().manual_seed(seed))
            t2 = time.perf_counter()
            read, tf = read + t1 - t0, tf + t2 - t1
    return read / n, tf / n, (read + tf) / n


def one_worker(data: DataConfig, mix: DatasetMixConfig, batch: int, n_batches: int) -> float:
    """Images per second delivered by a single worker process, after its first batch."""
    loader, val, _ = build_train_val(data, mix, batch, seed=0, pin_memory=False)
    it = iter(loader)
    try:
        next(it)  # worker start-up
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        return n_batches * batch / (time.perf_counter() - t0)
    finally:
        stop_workers(loader, val)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--images", type=int, default=12, help="real training images to generate")
    p.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    p.add_argument("--scale", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache", default=os.environ.get("SEGSWEEP_CACHE",
                                                     str(Path(tempfile.gettempdir()) / "segsweep-bench")))
    args = p.parse_args()
    torch.set_num_threads(1)  # a loader worker runs one thread (torch sets it so in workers)

    toy = ToyCityConfig(height=args.height, width=args.width, n_real_train=args.images, n_real_val=1, n_synthetic=1)
    t0 = time.perf_counter()
    real_root, _ = ensure_toycity(args.cache, toy)
    generated_s = time.perf_counter() - t0
    mix = DatasetMixConfig(name="real_only", real_ratio=1.0)

    def data_cfg(workers: int) -> DataConfig:
        return DataConfig(name="toycity", toycity=toy, cache_dir=args.cache, crop_size=list(args.crop),
                          scale_range=list(args.scale), hflip=True, num_workers=workers)

    loader, val, sets = build_train_val(data_cfg(0), mix, args.batch, seed=0, pin_memory=False)
    ds = sets["real_train"]
    paths = list(zip(ds.image_paths, ds.label_paths))
    rng = np.random.default_rng(0)
    n = len(paths)
    rows: dict[str, list[float]] = {k: [] for k in ("bare", "read", "transform", "loader", "one_worker")}
    for _ in range(args.rounds):
        rows["bare"].append(bare(paths, tuple(args.crop), rng))
        read, tf, total = in_process(loader, n)
        rows["read"].append(read)
        rows["transform"].append(tf)
        rows["loader"].append(total)
        rows["one_worker"].append(one_worker(data_cfg(1), mix, args.batch, max(2, n // args.batch)))
    bare_s, loader_s = min(rows["bare"]), min(rows["loader"])
    one = max(rows["one_worker"])
    print(json.dumps({
        "image_hw": [args.height, args.width], "crop_hw": args.crop, "scale_range": args.scale, "files": n,
        "rounds": args.rounds, "generated_s": round(generated_s, 1), "real_root": str(real_root),
        "bare_per_image_ms": round(1000 * bare_s, 1),
        "loader_per_image_ms": round(1000 * loader_s, 1),
        "read_ms": round(1000 * min(rows["read"]), 1), "transform_ms": round(1000 * min(rows["transform"]), 1),
        "loader_vs_bare": round(loader_s / bare_s, 3),
        "one_worker_images_per_s": round(one, 2),
        "one_worker_vs_bare": round((1 / one) / bare_s, 3),
        "median_loader_vs_bare": round(statistics.median(rows["loader"]) / statistics.median(rows["bare"]), 3),
    }, indent=1))


if __name__ == "__main__":
    main()
