"""Training and evaluation transforms on the loaders' tensors (image uint8 3xHxW, label int64 HxW).

Randomness comes from the ``torch.Generator`` passed in (training samples get one seeded from their place in the
batch stream, see ``mixing.SeededBatches``), else from torch's global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segsweep.data.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict[str, torch.Tensor]


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) 3xHxW -> float32 normalised with the ImageNet mean/std on the 0..1 scale."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


class EvalTransform:
    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return {"image": normalize(sample["image"]), "label": sample["label"]}


class TrainTransform:
    """Random rescale (image bilinear, label nearest), random crop to ``crop_size``, random horizontal flip.

    When the rescaled image is smaller than the crop, the rest is padded: label with 255 (ignored) and the
    normalised image with 0, i.e. the mean colour.
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
        img = image[None].float()
        lab = label[None, None].float()  # labels <= 255 are exact in float32
        if (sh, sw) != (h, w):
            img = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False)
            lab = F.interpolate(lab, size=(sh, sw), mode="nearest")
        top = int(u_top * (sh - self.crop_h + 1)) if sh > self.crop_h else 0
        left = int(u_left * (sw - self.crop_w + 1)) if sw > self.crop_w else 0
        img = normalize(img[0, :, top: top + self.crop_h, left: left + self.crop_w].clamp_(0, 255))
        lab = lab[0, 0, top: top + self.crop_h, left: left + self.crop_w].long()
        ph, pw = self.crop_h - lab.shape[0], self.crop_w - lab.shape[1]
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            lab = F.pad(lab, (0, pw, 0, ph), value=IGNORE_INDEX)
        if self.hflip and u_flip < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        return {"image": img.contiguous(), "label": lab.contiguous()}
