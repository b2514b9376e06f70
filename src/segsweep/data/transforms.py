"""Training and evaluation transforms on the loaders' samples (image: a decoded RGB PIL image or a uint8 3xHxW
tensor; label: uint8 HxW); they return a float32 normalised image and an int64 label.

Randomness comes from the ``torch.Generator`` passed in (training samples get one seeded from their place in the
batch stream, see ``mixing.SeededBatches``), else from torch's global RNG.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segsweep.data.labels import IGNORE as IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict[str, torch.Tensor | Image.Image]


def to_tensor(image: torch.Tensor | Image.Image, top: int = 0, bottom: int | None = None, left: int = 0,
              right: int | None = None) -> torch.Tensor:
    """uint8 3xHxW of the image's rows top:bottom and columns left:right; of a PIL image only that window is
    converted."""
    if isinstance(image, Image.Image):
        w, h = image.size
        box = (left, top, w if right is None else right, h if bottom is None else bottom)
        return torch.from_numpy(np.array(image.crop(box) if box != (0, 0, w, h) else image, np.uint8)).permute(2, 0, 1)
    return image[:, top:bottom, left:right]


_SCALE = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(3, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) 3xHxW -> float32 normalised with the ImageNet mean/std on the 0..1 scale:
    (x / 255 - mean) / std as one multiply-add pass over the image."""
    return torch.addcmul(_SHIFT, image.float(), _SCALE)


class EvalTransform:
    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return {"image": normalize(to_tensor(sample["image"])), "label": sample["label"].long()}


def _source_coords(out_start: int, out_len: int, in_size: int, out_size: int) -> torch.Tensor:
    """Source coordinates of output pixels ``out_start ..`` of a bilinear resize from ``in_size`` to ``out_size``
    (align_corners=False, clamped at 0): ``F.interpolate``'s arithmetic, for a window only."""
    idx = torch.arange(out_start, out_start + out_len, dtype=torch.float32)
    if in_size == out_size:
        return idx
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    return ((idx + 0.5) * scale - 0.5).clamp_min_(0)


def _nearest_taps(out_start: int, out_len: int, in_size: int, out_size: int) -> torch.Tensor:
    """Source index of output pixels ``out_start ..`` of ``F.interpolate(mode="nearest")`` from in_size to out_size."""
    idx = torch.arange(out_start, out_start + out_len)
    if in_size == out_size:
        return idx
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    return (idx.to(torch.float32) * scale).floor_().long().clamp_max_(in_size - 1)


class TrainTransform:
    """Random rescale (image bilinear, label nearest), random crop to ``crop_size``, random horizontal flip.

    When the rescaled image is smaller than the crop, the rest is padded: label with 255 (ignored) and the
    normalised image with 0, i.e. the mean colour.

    Only the crop window is computed, sampled at the source coordinates ``F.interpolate`` would use on the whole
    image (bilinear, align_corners=False; nearest for the label), so the result is that of rescaling the whole
    image and then cropping (labels exactly, images within a few hundredths of a grey level), at a cost that grows
    with the crop, not with the image (a 2048x1024 Cityscapes image rescaled by 2 would be 100 MB of floats).
    """

    def __init__(self, crop_size: list[int] | tuple[int, int], scale_range: list[float] | tuple[float, float],
                 hflip: bool = True) -> None:
        self.crop_h, self.crop_w = int(crop_size[0]), int(crop_size[1])
        self.scale_lo, self.scale_hi = float(scale_range[0]), float(scale_range[1])
        self.hflip = hflip

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        u_scale, u_top, u_left, u_flip = torch.rand(4, generator=generator).tolist()
        image, label = sample["image"], sample["label"]
        h, w = label.shape
        s = self.scale_lo + (self.scale_hi - self.scale_lo) * u_scale
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        top = int(u_top * (sh - self.crop_h + 1)) if sh > self.crop_h else 0
        left = int(u_left * (sw - self.crop_w + 1)) if sw > self.crop_w else 0
        oh, ow = min(self.crop_h, sh - top), min(self.crop_w, sw - left)  # the crop inside the rescaled image
        ph, pw = self.crop_h - oh, self.crop_w - ow  # padding, when the rescaled image is smaller than the crop
        flip = self.hflip and u_flip < 0.5
        mirror = flip and not pw  # flip by reversing the column taps; with padding, flip the padded result

        # image: bilinear samples at the window's source coordinates, from the source region they fall in.
        # grid_sample with border padding is F.interpolate's rule (a coordinate past the last pixel takes it);
        # the normalised grid costs ~1e-4 pixel of position (0.02 grey levels at most, measured at 2048x1024).
        sy, sx = _source_coords(top, oh, h, sh), _source_coords(left, ow, w, sw)
        if mirror:
            sx = sx.flip(0)
        y_lo, y_hi = int(sy.min()), min(int(sy.max()) + 2, h)
        x_lo, x_hi = int(sx.min()), min(int(sx.max()) + 2, w)
        region = to_tensor(image, y_lo, y_hi, x_lo, x_hi)[None].float()
        gy = (2 * (sy - y_lo) + 1) / (y_hi - y_lo) - 1
        gx = (2 * (sx - x_lo) + 1) / (x_hi - x_lo) - 1
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)[None]
        img = F.grid_sample(region, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        img = normalize(img.clamp_(0, 255))

        ny, nx = _nearest_taps(top, oh, h, sh), _nearest_taps(left, ow, w, sw)
        if mirror:
            nx = nx.flip(0)
        lab = label.index_select(0, ny)[:, nx].long()

        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            lab = F.pad(lab, (0, pw, 0, ph), value=IGNORE_INDEX)
        if flip and not mirror:
            img, lab = img.flip(-1), lab.flip(-1)
        return {"image": img.contiguous(), "label": lab.contiguous()}
