"""TrainTransform computes only the crop window; it must equal rescaling the whole image with F.interpolate and
then cropping (the straightforward implementation, written out here as the reference)."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segsweep.data.transforms import TrainTransform, normalize

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


def reference(tf: TrainTransform, sample: dict, seed: int) -> dict:
    """Whole-image rescale (bilinear image, nearest label), crop, pad, flip: the same random draws."""
    u_scale, u_top, u_left, u_flip = torch.rand(4, generator=torch.Generator().manual_seed(seed)).tolist()
    image, label = sample["image"], sample["label"]
    h, w = label.shape
    s = tf.scale_lo + (tf.scale_hi - tf.scale_lo) * u_scale
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    img, lab = image[None].float(), label[None, None].float()
    if (sh, sw) != (h, w):
        img = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False)
        lab = F.interpolate(lab, size=(sh, sw), mode="nearest")
    top = int(u_top * (sh - tf.crop_h + 1)) if sh > tf.crop_h else 0
    left = int(u_left * (sw - tf.crop_w + 1)) if sw > tf.crop_w else 0
    img = normalize(img[0, :, top: top + tf.crop_h, left: left + tf.crop_w].clamp(0, 255))
    lab = lab[0, 0, top: top + tf.crop_h, left: left + tf.crop_w].long()
    ph, pw = tf.crop_h - lab.shape[0], tf.crop_w - lab.shape[1]
    img, lab = F.pad(img, (0, pw, 0, ph), value=0.0), F.pad(lab, (0, pw, 0, ph), value=255)
    if tf.hflip and u_flip < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    return {"image": img, "label": lab}


@pytest.mark.parametrize("pil", [True, False], ids=["pil", "tensor"])
@pytest.mark.parametrize("hw, crop, scales", [
    ((37, 53), (16, 24), (0.5, 2.0)),      # down- and upscaling, odd sizes
    ((64, 128), (32, 64), (1.0, 1.0)),     # no rescale
    ((20, 30), (16, 48), (0.6, 1.3)),      # wider than the image: padded columns (and flipped padding)
    ((20, 30), (40, 40), (0.75, 1.5)),     # padded on both axes
    ((33, 65), (33, 65), (0.9, 1.1)),      # crop = image size
])
def test_window_transform_equals_rescale_then_crop(hw, crop, scales, pil):
    h, w = hw
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    # the reference rescales a CHW tensor; the transform gets the image as the loaders hand it over (a decoded PIL
    # image, of which it converts only the window) or as a CHW view of HWC pixels
    sample = {"image": pixels.permute(2, 0, 1), "label": torch.randint(0, 19, (h, w), generator=g, dtype=torch.uint8)}
    sample["label"][: h // 4] = 255
    given = {**sample, "image": Image.fromarray(pixels.numpy())} if pil else sample
    tf = TrainTransform(crop, scales, hflip=True)
    flips = 0
    for seed in range(40):
        got, want = tf(given, torch.Generator().manual_seed(seed)), reference(tf, sample, seed)
        assert got["image"].shape == (3, *crop) and got["label"].shape == crop
        assert got["image"].is_contiguous() and got["label"].dtype == torch.int64
        torch.testing.assert_close(got["image"], want["image"], rtol=0, atol=4e-4)  # 0.02 grey levels
        assert torch.equal(got["label"], want["label"]), seed
        flips += bool(torch.rand(4, generator=torch.Generator().manual_seed(seed))[3] < 0.5)
    assert 5 < flips < 35  # both branches of the flip were compared
