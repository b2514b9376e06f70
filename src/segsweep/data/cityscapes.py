"""Cityscapes-layout loader, plus what the GTA5 loader shares with it (file reading, checks, fingerprint).

Every problem with the data raises ``DatasetError`` naming the file and what was expected. Missing directories,
missing labels and image/label pairs of different sizes (read from the PNG headers) are found when the dataset is
built, before training; corrupt files and bad trainId values when the sample is read.

Label *ids* outside the Cityscapes table (34..255; GTA5's palette index 34 is its licence-plate colour) are not
errors: they map to 255 (ignored), as the lookup table says, and ``IdAudit`` counts them for a once-per-dataset
report. Only ``*_labelTrainIds.png`` files, which must hold 0..18 or 255, reject unexpected values.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segsweep.data.labels import ID_TO_TRAINID, IGNORE_INDEX, LABELS, NUM_CLASSES

NUM_IDS = len(LABELS)  # label ids 0..33 are Cityscapes ids; larger values are counted and ignored
log = logging.getLogger("segsweep")


class DatasetError(ValueError):
    """A dataset file or directory is missing, unreadable or holds unexpected values; the message names it."""

    _WORKER_PREFIX = "Caught DatasetError in DataLoader worker"

    def __init__(self, message: str) -> None:
        # torch re-raises a loader worker's exception as ``type(e)("Caught ... Original Traceback ...")``: keep
        # only the original message, so the error still reads as one line naming the file.
        if message.startswith(self._WORKER_PREFIX) and "DatasetError: " in message:
            message = message.rsplit("DatasetError: ", 1)[1].strip()
        super().__init__(message)


@dataclass
class IdAudit:
    """Pixels of label files whose value is not a Cityscapes id (ignored as 255), counted while labels are read."""

    pixels: int = 0
    files: int = 0
    read: int = 0  # label files read
    values: set[int] = field(default_factory=set)

    def add(self, ids: np.ndarray) -> None:
        self.read += 1
        unknown = ids >= NUM_IDS
        if n := int(np.count_nonzero(unknown)):
            self.pixels += n
            self.files += 1
            self.values.update(np.unique(ids[unknown]).tolist())

    def to_dict(self) -> dict:
        return {"pixels": self.pixels, "files": self.files, "read": self.read, "values": sorted(self.values)}

    def describe(self, what: str) -> str | None:
        """One line for the log, or None when every value was a Cityscapes id."""
        if not self.pixels:
            return None
        plate = " (34 is GTA5's licence plate)" if 34 in self.values else ""
        return (f"{what}: {self.pixels:,} pixels in {self.files} of {self.read} label files hold values "
                f"{sorted(self.values)[:10]} that are not Cityscapes ids{plate}; they are ignored (255)")


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


def png_size(path: Path) -> tuple[int, int]:
    """(H, W) from a PNG's IHDR chunk (24 bytes read, nothing decoded); other formats through PIL's header."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return h, w
        with Image.open(path) as im:
            return im.size[::-1]
    except Exception as e:
        raise DatasetError(f"cannot read {path}: {e} (expected a valid PNG image)") from e


def read_id_label(path: Path, audit: IdAudit | None = None) -> np.ndarray:
    """A label of Cityscapes ids (grayscale, or palette indices without applying the palette) -> trainIds."""
    im = _open(path)
    if im.mode not in ("L", "P"):
        raise DatasetError(f"label {path} has mode {im.mode!r}; expected an 8-bit single-channel PNG "
                           "(mode 'L' ids, or mode 'P' whose palette indices are ids)")
    ids = np.asarray(im)  # for mode 'P' these are the indices, not the colours
    if audit is not None:
        audit.add(ids)
    return ID_TO_TRAINID[ids]


def read_trainid_label(path: Path, audit: IdAudit | None = None) -> np.ndarray:
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

    def __init__(self, resize: list[int] | tuple[int, int] | None = None, skip_mismatched: bool = False) -> None:
        self.resize = (int(resize[0]), int(resize[1])) if resize is not None else None
        self.skip_mismatched = skip_mismatched
        self._readers: list = []  # per sample: the function that reads its label as trainIds

    def __len__(self) -> int:
        return len(self.image_paths)

    def _check_sizes(self) -> None:
        """Compare every image's size with its label's from the PNG headers (fast on 25 000 files): stop with the
        list of mismatched pairs, or drop them when ``skip_mismatched``. Subclasses call it once the lists are set."""
        bad = [k for k, (img, lab) in enumerate(zip(self.image_paths, self.label_paths))
               if png_size(img) != png_size(lab)]
        if not bad:
            return
        pairs = [f"{self.image_paths[k]} {'x'.join(map(str, png_size(self.image_paths[k])))} vs "
                 f"{self.label_paths[k].name} {'x'.join(map(str, png_size(self.label_paths[k])))}" for k in bad]
        if not self.skip_mismatched:
            shown = "\n  ".join(pairs[:20]) + (f"\n  ... and {len(pairs) - 20} more" if len(pairs) > 20 else "")
            raise DatasetError(f"{len(bad)} of {len(self.image_paths)} image/label pairs under {self.root} differ "
                               f"in size (HxW); expected equal sizes, or set data.skip_mismatched=true to leave "
                               f"them out:\n  {shown}")
        keep = sorted(set(range(len(self.image_paths))) - set(bad))
        log.warning("%s: left out %d of %d image/label pairs whose sizes differ (data.skip_mismatched), e.g. %s",
                    self.root, len(bad), len(self.image_paths), pairs[0])
        self.image_paths = [self.image_paths[k] for k in keep]
        self.label_paths = [self.label_paths[k] for k in keep]
        self._readers = [self._readers[k] for k in keep]
        if not self.image_paths:
            raise DatasetError(f"every image/label pair under {self.root} differs in size; nothing left to train on")

    def _label(self, i: int, audit: IdAudit | None = None) -> np.ndarray:
        return self._readers[i](self.label_paths[i], audit)

    def _resize_label(self, label: np.ndarray) -> np.ndarray:
        if self.resize is None or label.shape == self.resize:
            return label
        return np.asarray(Image.fromarray(label).resize(self.resize[::-1], Image.Resampling.NEAREST))

    def load_label(self, i: int, audit: IdAudit | None = None) -> np.ndarray:
        """The (resized) trainId label of sample i as uint8 (H, W), without decoding the image; ``audit`` counts
        the values that are not Cityscapes ids."""
        return self._resize_label(self._label(i, audit))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label = self._label(i)
        im = _open(self.image_paths[i])
        if im.size[::-1] != label.shape:
            raise DatasetError(f"image {self.image_paths[i]} is {im.size[1]}x{im.size[0]} (HxW) but its label "
                               f"{self.label_paths[i]} is {label.shape[0]}x{label.shape[1]}; expected equal sizes")
        if im.mode != "RGB":  # convert() on an RGB image would copy it whole
            im = im.convert("RGB")
        if self.resize is not None and im.size[::-1] != self.resize:
            im = im.resize(self.resize[::-1], Image.Resampling.BILINEAR)
        # The image stays a decoded PIL image and the label uint8: the training transform turns only its crop
        # window into a tensor (a whole 2048x1024 image to an array costs ~9 ms, its quarter ~1 ms).
        label = self._resize_label(label)
        return {"image": im, "label": torch.from_numpy(label if label.flags.writeable else label.copy())}

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

    def __init__(self, root: str | Path, split: str, resize: list[int] | tuple[int, int] | None = None,
                 skip_mismatched: bool = False) -> None:
        super().__init__(resize, skip_mismatched)
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
        self._check_sizes()
