"""What every layout's loader shares: images paired with label files, the label value readers, size checks.

Every problem with the data raises ``DatasetError`` naming the file and what was expected. Missing directories,
missing labels and image/label pairs of different sizes (read from the PNG headers) are found when the dataset is
built, before training; corrupt files and label values outside the source's table when the sample is read.

Training images that are 8-bit RGB PNGs (Cityscapes, GTA5, SYNTHIA) are decoded by OpenCV straight into R, G, B
order, the same bytes as Pillow's (PNG is lossless): the decode 1.10-1.19x faster than Pillow's on 2048x1024 and
1280x760 images, a loader's image 1.06-1.12x (bench/bench_loader.py, 2 CPU cores). Every other image, and any file
OpenCV cannot decode, goes through Pillow.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segsweep.data.labels import LabelMap, LabelValueError, UnknownAudit

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


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: directory {path} does not exist (expected {what} there)")
    return path


def open_image(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()  # decode now, so that truncated files fail here
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error... for bad files
        raise DatasetError(f"cannot read {path}: {e} (expected a valid image file)") from e
    return im


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_rgb8_png(head: bytes) -> bool:
    """Whether a file starting with ``head`` (>= 26 bytes) is a PNG of 8-bit RGB pixels: IHDR bit depth 8, colour
    type 2 (no palette, grey or alpha channel)."""
    return len(head) >= 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 8 \
        and head[25] == 2


def open_rgb(path: Path) -> Image.Image:
    """A training image as a decoded RGB PIL image. 8-bit RGB PNGs are decoded by OpenCV (faster than Pillow,
    identical pixels; EXIF orientation ignored, as Pillow does), then handed to Pillow (one copy, ~1 ms at
    2048x1024); other files, and PNGs OpenCV rejects (e.g. a missing IEND chunk, which Pillow accepts), are opened
    by Pillow (``open_image``) and converted to RGB."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e} (expected a valid image file)") from e
    if is_rgb8_png(data[:26]):
        import cv2

        rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11 decodes straight into R, G, B order
        a = cv2.imdecode(np.frombuffer(data, np.uint8),
                         (cv2.IMREAD_COLOR if rgb is None else rgb) | cv2.IMREAD_IGNORE_ORIENTATION)
        if a is not None and a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
            if rgb is None:
                a = cv2.cvtColor(a, cv2.COLOR_BGR2RGB, dst=a)
            return Image.fromarray(a)
    im = open_image(path)
    return im if im.mode == "RGB" else im.convert("RGB")  # convert() on an RGB image would copy it whole


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
        raise DatasetError(f"cannot read {path}: {e} (expected a valid image file)") from e


# Label value readers: a file -> the array of values its source's LabelMap looks up.

def read_u8(path: Path) -> np.ndarray:
    """8-bit single-channel values: grey levels (mode 'L') or palette indices (mode 'P', colours not applied)."""
    im = open_image(path)
    if im.mode not in ("L", "P"):
        raise DatasetError(f"label {path} has mode {im.mode!r}; expected an 8-bit single-channel PNG (mode 'L' "
                           "values, or mode 'P' whose palette indices are the values)")
    return np.asarray(im)


def read_rgb(path: Path) -> np.ndarray:
    """RGB colours packed as r << 16 | g << 8 | b (a palette image is read through its palette)."""
    im = open_image(path)
    if im.mode not in ("RGB", "RGBA", "P"):
        raise DatasetError(f"label {path} has mode {im.mode!r}; expected an RGB colour image (label_format rgb)")
    a = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
    return (a[..., 0].astype(np.int32) << 16) | (a[..., 1].astype(np.int32) << 8) | a[..., 2]


def read_png16(path: Path, channel: int = 0) -> np.ndarray:
    """One channel (0 = R) of a 16-bit PNG, decoded by OpenCV: Pillow cannot decode 16-bit colour PNGs (SYNTHIA's
    GT/LABELS). A file that is not 16-bit, or has too few channels, stops with its dtype and channels."""
    import cv2

    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise DatasetError(f"cannot read {path} (expected a valid 16-bit PNG)")
    channels = 1 if a.ndim == 2 else a.shape[2]
    if a.dtype != np.uint16 or channel >= channels:
        raise DatasetError(f"label {path} is {a.dtype} with {channels} channel(s); expected a 16-bit PNG with the "
                           f"class id in channel {'RGBA'[channel] if channel < 4 else channel} (label_format png16, "
                           "as SYNTHIA's GT/LABELS)")
    if a.ndim == 2:
        return a
    # OpenCV orders colour channels B, G, R(, A): R, the usual id channel, is index 2
    order = [2, 1, 0, 3][:channels] if channels in (3, 4) else list(range(channels))
    return np.ascontiguousarray(a[..., order[channel]])


class LabelReader:
    """A label file -> uint8 train ids: a value reader and the source's LabelMap."""

    def __init__(self, read: Callable[[Path], np.ndarray], label_map: LabelMap) -> None:
        self.read, self.label_map = read, label_map

    def __call__(self, path: Path, audit: UnknownAudit | None = None) -> np.ndarray:
        try:
            return self.label_map(self.read(path), str(path), audit)
        except LabelValueError as e:
            raise DatasetError(str(e)) from None


class PairedSegmentation(torch.utils.data.Dataset):
    """Images paired with label files; subclasses fill ``image_paths``, ``label_paths`` and ``_readers`` (one
    LabelReader per sample) and call ``_check_sizes``."""

    root: Path
    image_paths: list[Path]
    label_paths: list[Path]

    def __init__(self, resize: list[int] | tuple[int, int] | None = None, skip_mismatched: bool = False) -> None:
        self.resize = (int(resize[0]), int(resize[1])) if resize is not None else None
        self.skip_mismatched = skip_mismatched
        self._readers: list[LabelReader] = []

    def __len__(self) -> int:
        return len(self.image_paths)

    def _pair_by_name(self, img_dir: Path, label_dir: Path, reader: LabelReader) -> None:
        """Every ``*.png`` of ``img_dir`` with the file of the same name in ``label_dir`` (GTA5, SYNTHIA)."""
        self.image_paths = sorted(img_dir.glob("*.png"))
        if not self.image_paths:
            raise DatasetError(f"no images found under {img_dir} (expected *.png)")
        self.label_paths = [label_dir / p.name for p in self.image_paths]
        for img, label in zip(self.image_paths, self.label_paths, strict=True):
            if not label.is_file():
                raise DatasetError(f"image {img} has no label: expected {label}")
        self._readers = [reader] * len(self.image_paths)

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

    def _label(self, i: int, audit: UnknownAudit | None = None) -> np.ndarray:
        return self._readers[i](self.label_paths[i], audit)

    def _resize_label(self, label: np.ndarray) -> np.ndarray:
        if self.resize is None or label.shape == self.resize:
            return label
        return np.asarray(Image.fromarray(label).resize(self.resize[::-1], Image.Resampling.NEAREST))

    def load_label(self, i: int, audit: UnknownAudit | None = None) -> np.ndarray:
        """The (resized) train-id label of sample i as uint8 (H, W), without decoding the image; ``audit`` counts
        the values the source's table does not name."""
        return self._resize_label(self._label(i, audit))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label = self._label(i)
        im = open_rgb(self.image_paths[i])
        if im.size[::-1] != label.shape:
            raise DatasetError(f"image {self.image_paths[i]} is {im.size[1]}x{im.size[0]} (HxW) but its label "
                               f"{self.label_paths[i]} is {label.shape[0]}x{label.shape[1]}; expected equal sizes")
        if self.resize is not None and im.size[::-1] != self.resize:
            im = im.resize(self.resize[::-1], Image.Resampling.BILINEAR)
        # The image stays a decoded PIL image and the label uint8: the training transform turns only its crop
        # window into a tensor (a whole 2048x1024 image to an array costs ~9 ms, its quarter ~1 ms).
        label = self._resize_label(label)
        return {"image": im, "label": torch.from_numpy(label if label.flags.writeable else label.copy())}

    def fingerprint(self) -> str:
        """A short hash of the label files (relative paths, sizes, mtimes), their tables and the resize: the
        identity of the train ids this dataset yields."""
        maps = sorted({m.fingerprint() for m in {id(r.label_map): r.label_map for r in self._readers}.values()})
        h = hashlib.sha1(f"{type(self).__name__}|{self.resize}|{maps}".encode())
        for p in self.label_paths:
            st = p.stat()
            h.update(f"|{p.relative_to(self.root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]
