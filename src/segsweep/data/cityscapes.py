"""Cityscapes-layout loader, plus what the GTA5 loader shares with it (file reading, checks, fingerprint).

Every problem with the data raises ``DatasetError`` naming the file and what was expected. Missing directories
and missing labels are found when the dataset is built (before training); size mismatches, corrupt files and bad
label values when the sample is read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segsweep.data.labels import ID_TO_TRAINID, IGNORE_INDEX, LABELS, NUM_CLASSES

NUM_IDS = len(LABELS)  # label ids 0..33 are known; any larger value in a labelIds file is an error


class DatasetError(ValueError):
    """A dataset file or directory is missing, unreadable or holds unexpected values; the message names it."""


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: directory {path} does not exist (expected {what} there)")
    return path


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()  # decode now, so that truncated files fail here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... for bad files
        raise DatasetError(f"cannot read {path}: {e} (expected a valid PNG image)") from e
    return im


def read_id_label(path: Path) -> np.ndarray:
    """A label of Cityscapes ids (grayscale, or palette indices without applying the palette) -> trainIds."""
    im = _open(path)
    if im.mode not in ("L", "P"):
        raise DatasetError(f"label {path} has mode {im.mode!r}; expected an 8-bit single-channel PNG "
                           "(mode 'L' ids, or mode 'P' whose palette indices are ids)")
    ids = np.asarray(im)  # for mode 'P' these are the indices, not the colours
    if ids.size and int(ids.max()) >= NUM_IDS:
        bad = np.unique(ids[ids >= NUM_IDS])[:10].tolist()
        raise DatasetError(f"label {path} holds values {bad} that are not Cityscapes label ids "
                           f"(expected ids 0..{NUM_IDS - 1})")
    return ID_TO_TRAINID[ids]


def read_trainid_label(path: Path) -> np.ndarray:
    im = _open(path)
    if im.mode not in ("L", "P"):
        raise DatasetError(f"label {path} has mode {im.mode!r}; expected an 8-bit grayscale PNG of trainIds")
    tid = np.asarray(im)
    bad_mask = (tid >= NUM_CLASSES) & (tid != IGNORE_INDEX)
    if bad_mask.any():
        bad = np.unique(tid[bad_mask])[:10].tolist()
        raise DatasetError(f"label {path} holds values {bad}; expected trainIds 0..{NUM_CLASSES - 1} or "
                           f"{IGNORE_INDEX}")
    return tid


class PairedSegmentation(torch.utils.data.Dataset):
    """Images paired with label files; subclasses fill ``image_paths``, ``label_paths`` and ``_readers``."""

    root: Path
    image_paths: list[Path]
    label_paths: list[Path]

    def __init__(self, resize: list[int] | tuple[int, int] | None = None) -> None:
        self.resize = (int(resize[0]), int(resize[1])) if resize is not None else None
        self._readers: list = []  # per sample: the function that reads its label as trainIds

    def __len__(self) -> int:
        return len(self.image_paths)

    def _label(self, i: int) -> np.ndarray:
        return self._readers[i](self.label_paths[i])

    def _resize_label(self, label: np.ndarray) -> np.ndarray:
        if self.resize is None or label.shape == self.resize:
            return label
        return np.asarray(Image.fromarray(label).resize(self.resize[::-1], Image.Resampling.NEAREST))

    def load_label(self, i: int) -> np.ndarray:
        """The (resized) trainId label of sample i as uint8 (H, W), without decoding the image."""
        return self._resize_label(self._label(i))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label = self._label(i)
        im = _open(self.image_paths[i])
        if im.size[::-1] != label.shape:
            raise DatasetError(f"image {self.image_paths[i]} is {im.size[1]}x{im.size[0]} (HxW) but its label "
                               f"{self.label_paths[i]} is {label.shape[0]}x{label.shape[1]}; expected equal sizes")
        im = im.convert("RGB")
        if self.resize is not None and im.size[::-1] != self.resize:
            im = im.resize(self.resize[::-1], Image.Resampling.BILINEAR)
        image = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return {"image": image, "label": torch.from_numpy(self._resize_label(label).astype(np.int64))}

    def fingerprint(self) -> str:
        """A short hash of the label files (relative paths, sizes, mtimes) and the resize: the data's identity."""
        h = hashlib.sha1(f"{type(self).__name__}|{self.resize}".encode())
        for p in self.label_paths:
            st = p.stat()
            h.update(f"|{p.relative_to(self.root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


class CityscapesSegmentation(PairedSegmentation):
    """``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``root/gtFine/<split>/<city>/*_gtFine_*.png``.

    A ``_gtFine_labelTrainIds.png`` is used when present (values 0..18, 255), else ``_gtFine_labelIds.png`` mapped
    to trainIds.
    """

    def __init__(self, root: str | Path, split: str, resize: list[int] | tuple[int, int] | None = None) -> None:
        super().__init__(resize)
        self.root = Path(root)
        self.split = split
        require_dir(self.root, "Cityscapes root")
        img_dir = require_dir(self.root / "leftImg8bit" / split, f"Cityscapes images of split '{split}'")
        gt_dir = require_dir(self.root / "gtFine" / split, f"Cityscapes labels of split '{split}'")
        suffix = "_leftImg8bit.png"
        self.image_paths = sorted(img_dir.glob(f"*/*{suffix}"))
        if not self.image_paths:
            raise DatasetError(f"no images found under {img_dir} (expected <city>/<name>{suffix})")
        self.label_paths = []
        for img in self.image_paths:
            stem = img.name[: -len(suffix)]
            train_ids = gt_dir / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            ids = gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.label_paths.append(train_ids)
                self._readers.append(read_trainid_label)
            elif ids.is_file():
                self.label_paths.append(ids)
                self._readers.append(read_id_label)
            else:
                raise DatasetError(f"image {img} has no label: expected {ids} (or {train_ids.name})")
