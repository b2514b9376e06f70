"""Cityscapes/GTA5 loaders and transforms, on small fixtures written here with PIL (not via ToyCity).

The datasets are built as a run builds them (``sources.open_source`` with the cityscapes19 label set), so the
layouts' default tables are what is checked.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segsweep.config import SourceConfig
from segsweep.data.cityscapes import CityscapesSegmentation
from segsweep.data.gta5 import GTA5Segmentation
from segsweep.data.labels import UnknownAudit, label_set
from segsweep.data.paired import DatasetError, png_size
from segsweep.data.sources import open_source
from segsweep.data.transforms import EvalTransform, TrainTransform, to_tensor

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

IDS = np.array([[7, 8, 26, 33], [0, 6, 1, 23], [21, 24, 25, 31]], np.uint8)  # Cityscapes label ids
TRAIN_IDS = np.array([[0, 1, 13, 18], [255, 255, 255, 10], [8, 11, 12, 16]])  # the same, mapped by hand
CS19 = label_set(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "labels" / "cityscapes19.yaml"))


def open_cityscapes(root, split, resize=None, skip_mismatched=False):
    return open_source("real", SourceConfig(domain="real", layout="cityscapes", root=str(root)), Path(root), split,
                       CS19, resize, skip_mismatched)


def open_gta5(root, resize=None, skip_mismatched=False):
    return open_source("synthetic", SourceConfig(domain="synthetic", layout="gta5", root=str(root)), Path(root),
                       "train", CS19, resize, skip_mismatched)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _cityscapes(root: Path, split: str = "train", city: str = "oz", n: int = 2, ids: np.ndarray = IDS,
                train_ids: np.ndarray | None = None) -> list[np.ndarray]:
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        stem = f"{city}_{i:06d}_000019"
        images.append(_rgb(*ids.shape, seed=i))
        Image.fromarray(images[-1]).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        Image.fromarray(ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        if train_ids is not None:
            Image.fromarray(train_ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
    return images


def _gta5(root: Path, ids: np.ndarray, n: int = 2) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(_rgb(*ids.shape, seed=i)).save(root / "images" / f"{i + 1:05d}.png")
        lb = Image.fromarray(ids)
        # A palette whose colours do not reveal the index: a loader reading RGB would get other numbers.
        lb.putpalette([(31 * k + 17) % 256 for k in range(768)])
        lb.save(root / "labels" / f"{i + 1:05d}.png")


def test_cityscapes_label_ids_are_mapped(tmp_path):
    images = _cityscapes(tmp_path)
    ds = open_cityscapes(tmp_path, "train")
    assert isinstance(ds, CityscapesSegmentation)
    assert len(ds) == 2 and [p.name for p in ds.label_paths] == [
        "oz_000000_000019_gtFine_labelIds.png", "oz_000001_000019_gtFine_labelIds.png"]
    s = ds[1]
    assert s["image"].mode == "RGB" and s["image"].size == (4, 3)  # decoded; the transform makes the tensor
    assert torch.equal(to_tensor(s["image"]), torch.from_numpy(images[1]).permute(2, 0, 1))
    assert torch.equal(to_tensor(s["image"], 1, 3, 2, 4), torch.from_numpy(images[1][1:3, 2:4]).permute(2, 0, 1))
    assert s["label"].dtype == torch.uint8 and s["label"].tolist() == TRAIN_IDS.tolist()  # int64 after the transform
    lab = ds.load_label(0)
    assert lab.dtype == np.uint8 and lab.tolist() == TRAIN_IDS.tolist()


def test_cityscapes_prefers_label_train_ids(tmp_path):
    train_ids = np.full(IDS.shape, 13, np.uint8)
    train_ids[0, 0] = 255
    _cityscapes(tmp_path, train_ids=train_ids)
    ds = open_cityscapes(tmp_path, "train")
    assert all(p.name.endswith("_gtFine_labelTrainIds.png") for p in ds.label_paths)
    assert ds[0]["label"].tolist() == train_ids.tolist()


def test_gta5_reads_palette_indices(tmp_path):
    _gta5(tmp_path, IDS)
    ds = open_gta5(tmp_path)
    assert isinstance(ds, GTA5Segmentation) and len(ds) == 2
    assert ds[0]["label"].tolist() == TRAIN_IDS.tolist()
    assert ds.load_label(1).tolist() == TRAIN_IDS.tolist()


def test_resize(tmp_path):
    ids = np.kron(np.array([[7, 26], [23, 8]], np.uint8), np.ones((4, 6), np.uint8))  # 8x12 in 4x6 blocks
    _cityscapes(tmp_path, ids=ids, n=1)
    ds = open_cityscapes(tmp_path, "train", resize=[4, 6])
    s = ds[0]
    assert to_tensor(s["image"]).shape == (3, 4, 6) and s["label"].shape == (4, 6)
    expected = np.kron(np.array([[0, 13], [10, 1]]), np.ones((2, 3), np.int64))
    assert s["label"].tolist() == expected.tolist()  # nearest: no blended class values
    assert ds.load_label(0).tolist() == expected.tolist()


def test_fingerprint(tmp_path):
    _cityscapes(tmp_path)
    a, b = open_cityscapes(tmp_path, "train"), open_cityscapes(tmp_path, "train")
    before = a.fingerprint()
    assert before == b.fingerprint() and len(before) >= 8
    assert open_cityscapes(tmp_path, "train", resize=[2, 2]).fingerprint() != before
    Image.fromarray(np.full((3, 4), 8, np.uint8)).save(a.label_paths[0])  # a changed label file
    assert open_cityscapes(tmp_path, "train").fingerprint() != before


def _raises(path: Path, fn, *args):
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        fn(*args)


def test_missing_directories(tmp_path):
    _raises(tmp_path / "nope", open_cityscapes, tmp_path / "nope", "train")
    _cityscapes(tmp_path)
    _raises(tmp_path / "leftImg8bit" / "val", open_cityscapes, tmp_path, "val")
    _raises(tmp_path / "nope", open_gta5, tmp_path / "nope")
    (tmp_path / "g" / "images").mkdir(parents=True)
    _raises(tmp_path / "g" / "labels", open_gta5, tmp_path / "g")


def test_no_images(tmp_path):
    (tmp_path / "leftImg8bit" / "train" / "oz").mkdir(parents=True)
    (tmp_path / "gtFine" / "train" / "oz").mkdir(parents=True)
    _raises(tmp_path / "leftImg8bit" / "train", open_cityscapes, tmp_path, "train")


def test_missing_label_is_found_at_construction(tmp_path):
    _cityscapes(tmp_path)
    missing = tmp_path / "gtFine" / "train" / "oz" / "oz_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    _raises(missing, open_cityscapes, tmp_path, "train")
    _gta5(tmp_path / "g", IDS)
    (tmp_path / "g" / "labels" / "00002.png").unlink()
    _raises(tmp_path / "g" / "labels" / "00002.png", open_gta5, tmp_path / "g")


def test_size_mismatches_are_listed_at_construction(tmp_path):
    """Sizes come from the PNG headers when the dataset is built: every mismatched pair is listed at once."""
    _cityscapes(tmp_path, n=3)
    bad = [tmp_path / "leftImg8bit" / "train" / "oz" / f"oz_00000{i}_000019_leftImg8bit.png" for i in (0, 2)]
    for img in bad:
        Image.fromarray(_rgb(4, 4)).save(img)
    with pytest.raises(DatasetError) as e:
        open_cityscapes(tmp_path, "train")
    msg = str(e.value)
    assert "2 of 3 image/label pairs" in msg and all(str(img) in msg for img in bad)
    assert "4x4 vs" in msg and "data.skip_mismatched" in msg
    assert "oz_000001" not in msg
    ds = open_cityscapes(tmp_path, "train", skip_mismatched=True)
    assert [p.name for p in ds.image_paths] == ["oz_000001_000019_leftImg8bit.png"]
    assert [p.name for p in ds.label_paths] == ["oz_000001_000019_gtFine_labelIds.png"]
    assert ds[0]["label"].tolist() == TRAIN_IDS.tolist()
    # GTA5: a label a few pixels off, as in the full release
    _gta5(tmp_path / "g", IDS, n=2)
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "g" / "labels" / "00002.png")
    _raises(tmp_path / "g" / "images" / "00002.png", open_gta5, tmp_path / "g")
    assert len(open_gta5(tmp_path / "g", skip_mismatched=True)) == 1


def test_png_size_reads_the_header_only(tmp_path):
    Image.fromarray(_rgb(7, 11)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[:40])  # header intact, pixels gone
    assert png_size(tmp_path / "a.png") == png_size(tmp_path / "b.png") == (7, 11)
    (tmp_path / "c.png").write_bytes(b"not an image")
    _raises(tmp_path / "c.png", png_size, tmp_path / "c.png")


def test_size_mismatch_when_loaded(tmp_path):
    """Second line of defence (a file replaced after the dataset was built)."""
    _cityscapes(tmp_path)
    ds = open_cityscapes(tmp_path, "train")
    img = tmp_path / "leftImg8bit" / "train" / "oz" / "oz_000001_000019_leftImg8bit.png"
    Image.fromarray(_rgb(4, 4)).save(img)
    ds[0]
    _raises(img, ds.__getitem__, 1)


def test_corrupt_files(tmp_path):
    _cityscapes(tmp_path)
    ds = open_cityscapes(tmp_path, "train")
    ds.label_paths[0].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _raises(ds.label_paths[0], ds.load_label, 0)
    good = ds.image_paths[1].read_bytes()
    ds.image_paths[1].write_bytes(good[: len(good) // 2])  # truncated
    _raises(ds.image_paths[1], ds.__getitem__, 1)


def test_ids_outside_the_table_are_ignored_and_counted(tmp_path):
    """GTA5 ships 35 palette entries (index 34: licence plate); any id >= 34 maps to 255 and is counted."""
    ids = IDS.copy()
    ids[0, 0], ids[2, 3] = 34, 34  # licence plate, replacing road (7 -> 0) and train (31 -> 16)
    _gta5(tmp_path / "g", ids, n=2)
    plain = IDS.copy()
    plain[1, 1] = 200  # any other non-id too
    _cityscapes(tmp_path / "c", ids=plain, n=3)
    expected = TRAIN_IDS.copy()
    expected[0, 0] = expected[2, 3] = 255
    g = open_gta5(tmp_path / "g")
    assert g[0]["label"].tolist() == expected.tolist()
    audit = UnknownAudit()
    assert g.load_label(1, audit).tolist() == expected.tolist()
    g.load_label(0, audit)
    assert (audit.pixels, audit.files, audit.read, audit.values) == (4, 2, 2, {34})
    line = audit.describe("synthetic labels")
    assert line == "synthetic labels: values [34] in 2/2 label files (4 px) not in its table: ignored"
    c, audit = open_cityscapes(tmp_path / "c", "train"), UnknownAudit()
    for i in range(3):
        assert c.load_label(i, audit)[1, 1] == 255
    assert (audit.pixels, audit.files, audit.read, audit.values) == (3, 3, 3, {200})
    assert UnknownAudit().describe("x") is None


def test_bad_train_id_values(tmp_path):
    bad_train = np.zeros(IDS.shape, np.uint8)
    bad_train[1, 1] = 19  # trainIds must be 0..18 or 255
    _cityscapes(tmp_path / "b", train_ids=bad_train)
    ds = open_cityscapes(tmp_path / "b", "train")
    with pytest.raises(DatasetError, match=r"\[19\]"):
        ds.load_label(0)
    _raises(ds.label_paths[0], ds.__getitem__, 0)


def test_gta5_rgb_label_is_refused(tmp_path):
    _gta5(tmp_path, IDS)
    Image.fromarray(_rgb(*IDS.shape)).save(tmp_path / "labels" / "00002.png")
    with pytest.raises(DatasetError, match="mode 'RGB'"):
        open_gta5(tmp_path).load_label(1)


# ----------------------------------------------------------------------------------------------- transforms
def _sample(h: int = 20, w: int = 30) -> dict:
    label = torch.arange(h * w).reshape(h, w) % 19
    return {"image": torch.from_numpy(_rgb(h, w)).permute(2, 0, 1).contiguous(), "label": label}


def test_eval_transform_normalises():
    out = EvalTransform()({"image": torch.full((3, 2, 2), 255, dtype=torch.uint8), "label": torch.zeros(2, 2).long()})
    assert out["image"].dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(out["image"][:, 0, 0], torch.tensor(expected))


def test_train_transform_crop_shapes_and_determinism():
    tf = TrainTransform([16, 24], [0.75, 1.5], hflip=True)
    s = _sample()
    a = tf(s, torch.Generator().manual_seed(5))
    b = tf(s, torch.Generator().manual_seed(5))
    assert a["image"].shape == (3, 16, 24) and a["image"].dtype == torch.float32
    assert a["label"].shape == (16, 24) and a["label"].dtype == torch.int64
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert set(a["label"].unique().tolist()) <= set(range(19))  # nearest: no new values
    outs = [tf(s, torch.Generator().manual_seed(k))["label"] for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outs}) > 4


def test_train_transform_pads_small_images():
    tf = TrainTransform([16, 16], [0.5, 0.5], hflip=False)  # 20x30 -> 10x15, cropped to 16x16
    out = tf(_sample(), torch.Generator().manual_seed(0))
    assert out["label"].shape == (16, 16)
    assert (out["label"][10:] == 255).all() and (out["label"][:, 15:] == 255).all()
    assert (out["label"][:10, :15] != 255).all()
    assert (out["image"][:, 10:] == 0).all()


def test_train_transform_flip_is_a_mirror():
    s = _sample(16, 16)
    tf = TrainTransform([16, 16], [1.0, 1.0], hflip=True)  # no rescale, no crop offset: only the flip varies
    outs = [tf(s, torch.Generator().manual_seed(k))["label"] for k in range(10)]
    flipped = [torch.equal(o, s["label"].flip(-1)) for o in outs]
    kept = [torch.equal(o, s["label"]) for o in outs]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)
