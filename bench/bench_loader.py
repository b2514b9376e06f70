"""Training-loader throughput at real image sizes, against a bare decode + random crop of the same files, and the
PNG decoders compared on those files.

Writes (once, cached) ToyCity scenes at the real datasets' sizes and in their layouts: the real set at Cityscapes
size (2048×1024 RGB PNGs, 8-bit id labels; ``leftImg8bit``/``gtFine``) and a synthetic set in the SYNTHIA layout
(1280×760 RGB PNGs, 16-bit 3-channel label PNGs with the id in R; ``RGB``/``GT/LABELS``, ``data.toycity.n_synthia``).
ToyCity renders its synthetic scenes in flat colours, which compress ~100× (30 KB a file) and decode unlike SYNTHIA's
textured renders; so by default (``--synthia-images textured``) the SYNTHIA set's RGB files are the same scenes
rendered with ToyCity's real-domain texture, noise and lighting, saved at Pillow's default compression (its labels
are ToyCity's, unchanged); ``flat`` reads ToyCity's own files. For each set it builds the
training loader exactly as a run does (``segsweep.data.build.build_train_val``: label reading and mapping, random
rescale, crop, flip, normalisation, collation) and measures

- ``loader_per_image_ms`` / ``images_per_s_per_worker``: what one image costs a worker (the loader's dataset +
  transform, a ``num_workers=0`` loop in this process), split into ``read_ms`` (decode, label mapping) and
  ``transform_ms``;
- ``one_worker_images_per_s``: images per second that one worker process delivers to the training process
  (``data.num_workers=1``, batches included);
- ``pillow_*``: the same two with the images decoded by Pillow (``paired.open_image``), as the loader did before
  it decoded 8-bit RGB PNGs with OpenCV (``paired.open_rgb``), in the same rounds: the switch's gain, measured
  under the same conditions (absolute times drift by 10-20 % between runs on a shared machine);
- ``bare_<decoder>_per_image_ms``: both files decoded (image with Pillow, or with OpenCV straight to RGB; labels
  with Pillow, or OpenCV for the 16-bit ones Pillow cannot read), cropped at a random box to the crop size and
  turned into arrays: the least any loader of these files must do; ``loader_vs_bare`` is against the faster one;

and (unless ``--no-decoders``) the decoders: Pillow, OpenCV (``cv2.imread`` / ``cv2.imdecode``,
``IMREAD_UNCHANGED``, and ``cv2.imread`` with ``IMREAD_COLOR_RGB``), ``torchvision.io.decode_png`` (deprecated
since torchvision 0.29 in favour of TorchCodec; 16-bit with ``ImageReadMode.UNCHANGED``) and pyspng, each on the
same files (the
images, and the labels where it reads them), in ms per image, with each decoder's ratio to the group's fastest and
whether its pixels equal the reference's (Pillow for 8-bit files, OpenCV's for the 16-bit labels, which Pillow
misreads). Pillow's row is its decode alone (``Image.open(...).load()``: the loader then converts only the crop
window); ``pillow+array`` adds the whole image turned into a numpy array, which the others return. The loader itself
(``paired.open_rgb``) decodes 8-bit RGB PNGs as ``cv2.imdecode`` with ``IMREAD_COLOR_RGB`` and hands the array to
Pillow (``Image.fromarray``, ~1 ms at 2048×1024).

Rounds alternate; loader figures are the best round's (robust to other load on the machine), decoder figures the
median round's. To size ``data.num_workers``: a GPU step of B images taking t seconds needs about
B / (t × one_worker_images_per_s) workers. The Cityscapes-size files are ToyCity's real renders saved at zlib level
1 (~4 MB a file, more than Cityscapes' ~2 MB photographs), so absolute decode times differ from the real datasets';
the decoders' ratios are what carries over.

    python bench/bench_loader.py                       # both sets, crops 512×1024, scale 0.5–2.0
    python bench/bench_loader.py --sets synthia --crop 512 512 --images 24
    python bench/bench_loader.py --decoders-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# name: (layout, its data= preset, image size H×W, overrides that train on that source alone)
SETS = {
    "cityscapes": ("cityscapes", "toycity", (1024, 2048), ["dataset_mix=real_only"]),
    "synthia": ("synthia", "toycity_synthia", (760, 1280),
                ["dataset_mix=synthetic_only", "dataset_mix.sources.real.share=0", "dataset_mix.sources.gta5.share=0",
                 "dataset_mix.sources.synthia.share=1"]),
}


def compose_run(name: str, args, workers: int, out: str, extra: tuple[str, ...] = ()):
    """The validated config of a run training on one set's source alone (as train.py would compose it)."""
    from hydra import compose, initialize_config_dir

    from segsweep.config import register_configs, validate

    layout, preset, (h, w), mix = SETS[name]
    images = args.images
    over = [f"data={preset}", *mix, f"data.cache_dir={args.cache}", f"output_dir={out}",
            f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db", f"data.toycity.height={h}", f"data.toycity.width={w}",
            f"data.toycity.n_real_train={images if layout == 'cityscapes' else 1}", "data.toycity.n_real_val=1",
            "data.toycity.n_synthetic=1", f"data.toycity.n_synthia={images if layout == 'synthia' else 0}",
            f"data.crop_size=[{args.crop[0]},{args.crop[1]}]", f"data.scale_range=[{args.scale[0]},{args.scale[1]}]",
            "data.hflip=true", f"data.num_workers={workers}", *extra]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return validate(compose("config", overrides=over))


# ---------------------------------------------------------------------------------------------------- decoders

def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def decoders() -> dict[str, Callable[[Path], object]]:
    """name -> decode(path); every one reads the file itself (from the page cache)."""
    import cv2

    out: dict[str, Callable[[Path], object]] = {
        "pillow": lambda p: Image.open(p).load() and None,
        "pillow+array": lambda p: np.asarray(_pil_load(p)),
        "cv2.imread": lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED),
        "cv2.imread_rgb": lambda p: cv2.imread(str(p), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION),
        "cv2.imdecode": lambda p: cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED),
    }
    try:
        from torchvision.io import ImageReadMode, decode_png, read_file

        out["torchvision.decode_png"] = lambda p: decode_png(read_file(str(p)), mode=ImageReadMode.UNCHANGED)
    except ImportError:
        pass
    try:
        import pyspng

        out["pyspng"] = lambda p: pyspng.load(_read_bytes(p))
    except ImportError:
        pass
    return out


def _pil_load(p: Path) -> Image.Image:
    im = Image.open(p)
    im.load()
    return im


def as_rgb_hwc(name: str, decoded: object, path: Path) -> np.ndarray | None:
    """A decoder's output as an H×W(×C) array in R, G, B order, to compare pixels; None for Pillow's bare load."""
    if name == "pillow":
        return None
    if name == "pillow+array":
        return np.asarray(decoded)
    if isinstance(decoded, torch.Tensor):  # torchvision: C×H×W, R first
        a = decoded.numpy()
        return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    a = np.asarray(decoded)
    if name in ("cv2.imread", "cv2.imdecode") and a.ndim == 3:  # OpenCV: B, G, R(, A)
        return a[..., [2, 1, 0, 3][: a.shape[2]]]
    if name == "pyspng" and a.ndim == 3 and a.shape[2] == 4 and a.dtype == np.uint16 and (a[..., 3] == 65535).all():
        return a[..., :3]  # pyspng returns 16-bit RGB with an opaque alpha channel added
    return a


def compare_decoders(groups: dict[str, list[Path]], rounds: int) -> dict:
    """ms per file of each decoder on each group of files (median over rounds), its ratio to the group's fastest,
    and whether its pixels equal the reference's."""
    decs = decoders()
    results: dict = {}
    for group, paths in groups.items():
        sixteen = group.endswith("labels16")
        ref_name = "cv2.imread" if sixteen else "pillow+array"
        ref = [as_rgb_hwc(ref_name, decs[ref_name](p), p) for p in paths]
        rows: dict[str, dict] = {}
        usable = {}
        for name, fn in decs.items():
            if name == "cv2.imread_rgb" and "labels" in group:
                continue  # a colour conversion of labels is not what anyone reads them with
            try:
                outs = [fn(p) for p in paths]
            except Exception as e:  # a decoder that cannot read these files
                rows[name] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
                continue
            same = None if name == "pillow" else all(
                (a := as_rgb_hwc(name, o, p)) is not None and a.dtype == r.dtype and a.shape == r.shape and
                np.array_equal(a, r) for o, r, p in zip(outs, ref, paths))
            rows[name] = {"identical_pixels": same}
            usable[name] = fn
        times: dict[str, list[float]] = {n: [] for n in usable}
        for _ in range(rounds):
            for name, fn in usable.items():  # decoders alternate within each round
                t0 = time.perf_counter()
                for p in paths:
                    fn(p)
                times[name].append((time.perf_counter() - t0) / len(paths))
        med = {n: statistics.median(t) for n, t in times.items()}
        valid = {n: m for n, m in med.items() if rows[n]["identical_pixels"] is not False}
        fastest = min(valid.values())
        for n, m in med.items():
            rows[n].update({"ms": round(1000 * m, 2), "min_ms": round(1000 * min(times[n]), 2),
                            "vs_fastest": round(m / fastest, 2)})
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        probe = ref[0]
        results[group] = {"files": len(paths), "shape": list(probe.shape), "dtype": str(probe.dtype),
                          "mean_file_MiB": round(mb, 2), "reference": ref_name, "decoders": rows}
    return results


def print_decoder_table(results: dict) -> None:
    for group, r in results.items():
        print(f"\n{group}: {r['files']} files {'x'.join(map(str, r['shape']))} {r['dtype']}, "
              f"{r['mean_file_MiB']} MiB each; pixels compared with {r['reference']}", file=sys.stderr)
        print(f"  {'decoder':24s} {'ms/file':>8s} {'min':>8s} {'vs fastest':>10s}  identical", file=sys.stderr)
        for name, row in sorted(r["decoders"].items(), key=lambda kv: kv[1].get("ms", 1e9)):
            if "error" in row:
                print(f"  {name:24s} cannot read: {row['error']}", file=sys.stderr)
                continue
            same = {None: "-", True: "yes", False: "NO"}[row["identical_pixels"]]
            print(f"  {name:24s} {row['ms']:8.2f} {row['min_ms']:8.2f} {row['vs_fastest']:9.2f}x  {same}",
                  file=sys.stderr)


# ------------------------------------------------------------------------------------------------------ loaders

def textured_synthia(flat_root: Path, toy) -> Path:
    """A SYNTHIA-layout copy of ToyCity's SYNTHIA set whose RGB files are the same scenes rendered in the real
    domain's style (texture, noise, lighting) at Pillow's default compression; labels copied unchanged. Written once
    beside ToyCity's directory. Each scene is redrawn from its own random stream, and its flat render checked
    against ToyCity's file, so the labels match the images."""
    import copy
    import shutil

    from segsweep.data.toycity import draw_scene, render

    root = flat_root.parent.with_name(flat_root.parent.name + "-synthia-textured")
    if (root / "COMPLETE").exists():
        return root
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "RGB").mkdir(parents=True)
    (tmp / "GT" / "LABELS").mkdir(parents=True)
    for i in range(toy.n_synthia):  # toycity.generate's stream 3, image i
        name = f"{i + 1:05d}.png"
        rng = np.random.default_rng([toy.seed, 3, i])
        scene = draw_scene(rng, toy.height, toy.width, True, force_train=i % 23 == 11, plates=False)
        flat = render(scene, copy.deepcopy(rng), True)
        if not np.array_equal(flat, np.asarray(Image.open(flat_root / "RGB" / name))):
            raise RuntimeError(f"{flat_root / 'RGB' / name} is not the scene redrawn here: toycity.generate changed")
        Image.fromarray(render(scene, rng, False)).save(tmp / "RGB" / name)
        shutil.copyfile(flat_root / "GT" / "LABELS" / name, tmp / "GT" / "LABELS" / name)
    (tmp / "COMPLETE").write_text("ok\n")
    os.rename(tmp, root)
    return root


def bare(paths: list[tuple[Path, Path]], crop: tuple[int, int], rng: np.random.Generator, image_decoder: str,
         sixteen: bool) -> float:
    """Seconds per image: decode both files, random crop, arrays (the minimum a training loader does)."""
    import cv2

    ch, cw = crop
    t0 = time.perf_counter()
    for img_path, lab_path in paths:
        if sixteen:  # Pillow cannot read 16-bit colour PNGs: the id channel (R) from OpenCV's B, G, R
            lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)[..., 2]
        else:
            lab = _pil_load(lab_path)
        if image_decoder == "pillow":
            im = Image.open(img_path).convert("RGB")
            w, h = im.size
        else:
            im = cv2.imread(str(img_path), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
            h, w = im.shape[:2]
        top, left = int(rng.integers(0, max(h - ch, 0) + 1)), int(rng.integers(0, max(w - cw, 0) + 1))
        box = (left, top, left + min(cw, w), top + min(ch, h))
        if image_decoder == "pillow":
            torch.from_numpy(np.array(im.crop(box))).permute(2, 0, 1)
        else:
            torch.from_numpy(np.ascontiguousarray(im[box[1]: box[3], box[0]: box[2]])).permute(2, 0, 1)
        if sixteen:
            torch.from_numpy(np.ascontiguousarray(lab[box[1]: box[3], box[0]: box[2]]))
        else:
            torch.from_numpy(np.array(lab.crop(box)))
    return (time.perf_counter() - t0) / len(paths)


def in_process(loader, n: int) -> tuple[float, float, float]:
    """Seconds per image for the loader's dataset work (read, transform, total), in this process."""
    concat = loader.dataset  # SeededConcat of SourceDatasets: the trained source's alone here
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


@contextlib.contextmanager
def pillow_images():
    """The loaders with ``paired.open_rgb`` swapped for Pillow (``open_image`` + RGB): the decode to compare with."""
    from segsweep.data import paired

    saved = getattr(paired, "open_rgb", None)

    def with_pillow(path: Path) -> Image.Image:
        im = paired.open_image(path)
        return im if im.mode == "RGB" else im.convert("RGB")

    paired.open_rgb = with_pillow
    try:
        yield
    finally:
        if saved is None:
            del paired.open_rgb
        else:
            paired.open_rgb = saved


def one_worker(name: str, args, out: str, n_batches: int, extra: tuple[str, ...]) -> float:
    """Images per second delivered by a single worker process, after its first batch."""
    from segsweep.data.build import build_train_val, stop_workers
    from segsweep.data.labels import label_set

    cfg = compose_run(name, args, 1, out, extra)
    tv = build_train_val(cfg.data, cfg.dataset_mix, label_set(cfg.data.labels), args.batch, seed=0, pin_memory=False)
    it = iter(tv.train_loader)
    try:
        next(it)  # worker start-up
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        return n_batches * args.batch / (time.perf_counter() - t0)
    finally:
        stop_workers(tv.train_loader, tv.val_loader)


def measure_set(name: str, args, out: str) -> tuple[dict, dict[str, list[Path]]]:
    from segsweep.data.build import build_train_val
    from segsweep.data.labels import label_set
    from segsweep.data.toycity import ensure_toycity

    cfg = compose_run(name, args, 0, out)
    t0 = time.perf_counter()
    roots = ensure_toycity(cfg.data.cache_dir, cfg.data.toycity)
    extra: tuple[str, ...] = ()
    if name == "synthia" and args.synthia_images == "textured":
        roots["synthia"] = textured_synthia(roots["synthia"], cfg.data.toycity)
        extra = (f"data.sources.synthia.root={roots['synthia']}",)
        cfg = compose_run(name, args, 0, out, extra)
    generated_s = time.perf_counter() - t0
    tv = build_train_val(cfg.data, cfg.dataset_mix, label_set(cfg.data.labels), args.batch, seed=0, pin_memory=False)
    (ds,) = tv.trained.values()
    paths = list(zip(ds.image_paths, ds.label_paths))
    files = {f"{name} images": list(ds.image_paths),
             f"{name} labels{'16' if name == 'synthia' else '8'}": list(ds.label_paths)}
    result = {"image_hw": list(SETS[name][2]), "layout": SETS[name][0], "files": len(paths),
              **({"images": args.synthia_images} if name == "synthia" else {}),
              "generated_s": round(generated_s, 1), "root": str(roots[SETS[name][0]])}
    if args.decoders_only:
        return result, files
    rng = np.random.default_rng(0)
    n = len(paths)
    rows: dict[str, list[float]] = {k: [] for k in ("bare_pillow", "bare_cv2", "read", "transform", "loader",
                                                    "one_worker", "pillow_read", "pillow_loader", "pillow_one_worker")}
    for _ in range(args.rounds):
        rows["bare_pillow"].append(bare(paths, tuple(args.crop), rng, "pillow", name == "synthia"))
        rows["bare_cv2"].append(bare(paths, tuple(args.crop), rng, "cv2", name == "synthia"))
        read, tf, total = in_process(tv.train_loader, n)
        rows["read"].append(read)
        rows["transform"].append(tf)
        rows["loader"].append(total)
        rows["one_worker"].append(one_worker(name, args, out, max(2, n // args.batch), extra))
        with pillow_images():
            read, _, total = in_process(tv.train_loader, n)
            rows["pillow_read"].append(read)
            rows["pillow_loader"].append(total)
            rows["pillow_one_worker"].append(one_worker(name, args, out, max(2, n // args.batch), extra))
    bare_s, loader_s = min(min(rows["bare_pillow"]), min(rows["bare_cv2"])), min(rows["loader"])
    one = max(rows["one_worker"])
    result.update({
        "bare_pillow_per_image_ms": round(1000 * min(rows["bare_pillow"]), 1),
        "bare_cv2_per_image_ms": round(1000 * min(rows["bare_cv2"]), 1),
        "loader_per_image_ms": round(1000 * loader_s, 1),
        "images_per_s_per_worker": round(1 / loader_s, 2),
        "read_ms": round(1000 * min(rows["read"]), 1), "transform_ms": round(1000 * min(rows["transform"]), 1),
        "loader_vs_bare": round(loader_s / bare_s, 3),
        "one_worker_images_per_s": round(one, 2),
        "one_worker_vs_bare": round((1 / one) / bare_s, 3),
        "pillow_loader_per_image_ms": round(1000 * min(rows["pillow_loader"]), 1),
        "pillow_read_ms": round(1000 * min(rows["pillow_read"]), 1),
        "pillow_one_worker_images_per_s": round(max(rows["pillow_one_worker"]), 2),
        "loader_speedup_vs_pillow": round(min(rows["pillow_loader"]) / loader_s, 3),
        "median_loader_speedup_vs_pillow": round(statistics.median(rows["pillow_loader"]) /
                                                 statistics.median(rows["loader"]), 3),
        "one_worker_speedup_vs_pillow": round(one / max(rows["pillow_one_worker"]), 3),
        "median_loader_ms": round(1000 * statistics.median(rows["loader"]), 1),
        "median_loader_vs_bare": round(statistics.median(rows["loader"]) / min(
            statistics.median(rows["bare_pillow"]), statistics.median(rows["bare_cv2"])), 3),
    })
    return result, files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--images", type=int, default=12, help="training images of each set to generate")
    p.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    p.add_argument("--scale", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5, help="loader rounds")
    p.add_argument("--decoder-rounds", type=int, default=5)
    p.add_argument("--synthia-images", choices=["textured", "flat"], default="textured",
                   help="SYNTHIA RGB files: ToyCity's scenes with real-domain texture (default), or its flat renders")
    p.add_argument("--decoders-only", action="store_true", help="generate the files and compare the decoders only")
    p.add_argument("--no-decoders", action="store_true", help="skip the decoder comparison")
    p.add_argument("--cache", default=os.environ.get("SEGSWEEP_CACHE",
                                                     str(Path(tempfile.gettempdir()) / "segsweep-bench")))
    args = p.parse_args()
    torch.set_num_threads(1)  # a loader worker runs one thread (torch sets it so in workers)
    os.environ.setdefault("SEGSWEEP_ROOT", str(ROOT))
    warnings.filterwarnings("ignore", module="torchvision")  # decode_png's deprecation notice

    out: dict = {"crop_hw": args.crop, "scale_range": args.scale, "rounds": args.rounds, "batch": args.batch}
    groups: dict[str, list[Path]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            out[name], files = measure_set(name, args, tmp)
            groups.update(files)
    if not args.no_decoders:
        out["decoders"] = compare_decoders(groups, args.decoder_rounds)
        print_decoder_table(out["decoders"])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
