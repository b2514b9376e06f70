"""Write a small dataset of your own kind: 4 classes, RGB colour-coded masks, plain folders (see README.md).

    python examples/own_dataset/make_data.py [--root DIR] [--n-train 48] [--n-val 16] [--force]

The scenes come from ToyCity (the generator behind data=toycity), rendered in its real-camera style, with the
Cityscapes classes merged into 4 groups and everything else (unlabelled, the ego car's bonnet) painted the void
colour. Layout, as many datasets of one's own are laid out:

    <root>/images/{train,val}/<name>.png       8-bit RGB images
    <root>/masks/{train,val}/<name>_mask.png   8-bit RGB masks, one colour per class (COLOURS below)

The set is written into a temporary sibling directory and renamed into place, so an interrupted run never leaves
a half-written dataset at <root>. Default root: $OWN4_ROOT, else <project>/.cache/own4 (where data/own4.yaml
looks).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from segsweep.data.tables import NAME_TO_ID
from segsweep.data.toycity import draw_scene, render

PROJECT = Path(__file__).resolve().parents[2]
# class -> (mask colour, the Cityscapes classes merged into it); data/own4.yaml lists the same colours
GROUPS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "ground": ((128, 64, 128), ("road", "sidewalk", "parking", "rail track", "ground")),
    "structure": ((70, 70, 70), ("building", "wall", "fence", "pole", "traffic light", "traffic sign")),
    "nature": ((107, 142, 35), ("vegetation", "terrain", "sky")),
    "object": ((0, 0, 142), ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")),
}
VOID = (0, 0, 0)  # unlabelled pixels (ignored in training and evaluation)

COLOURS = np.tile(np.array(VOID, np.uint8), (256, 1))  # Cityscapes id -> mask colour
for _colour, _names in GROUPS.values():
    COLOURS[[NAME_TO_ID[n] for n in _names]] = _colour


def write(root: Path, n_train: int, n_val: int, seed: int, height: int, width: int) -> None:
    for stream, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, stream, i])
            scene = draw_scene(rng, height, width, synthetic=False)
            name = f"{split}_{i:04d}"
            Image.fromarray(render(scene, rng, synthetic=False)).save(root / "images" / split / f"{name}.png")
            Image.fromarray(COLOURS[scene.lab]).save(root / "masks" / split / f"{name}_mask.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path(os.environ.get("OWN4_ROOT") or PROJECT / ".cache" / "own4"))
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--force", action="store_true", help="replace an existing dataset at --root")
    a = p.parse_args(argv)
    root = a.root.resolve()
    if root.exists() and not a.force:
        print(f"{root} exists; leaving it (use --force to write it again)")
        return 0
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp, a.n_train, a.n_val, a.seed, a.height, a.width)
        if root.exists():  # --force: move the old copy aside first, so root is never half-written
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.rename(root, old / root.name)
            shutil.rmtree(old)
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {a.n_train} train and {a.n_val} val images with their masks to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
