"""Configured sources (``sources.open_source``): the SYNTHIA layout's 16-bit labels, label sets that are subsets of a
dataset's table, the folders layout (patterns, list files, RGB labels) and the own-dataset example. Every fixture
is written here with cv2/PIL and every expected train id by hand."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from segsweep.config import DataConfig, SourceConfig, register_configs
from segsweep.data.folders import FolderSegmentation
from segsweep.data.labels import LabelSet, label_set
from segsweep.data.paired import DatasetError
from segsweep.data.sources import open_source
from segsweep.data.synthia import SynthiaSegmentation

ROOT = Path(__file__).resolve().parents[1]
CS19 = label_set(OmegaConf.load(ROOT / "conf" / "data" / "labels" / "cityscapes19.yaml"))
# Cityscapes' 19 classes less terrain, truck and train (SYNTHIA has no labels for them)
SUBSET16 = label_set(OmegaConf.create({
    "classes": ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
                "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle"],
    "colors": None, "rare": [], "ignore_value": 255, "subsets": {}}))


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _open(root: Path, label_set_: LabelSet = CS19, split: str = "train", name: str = "src", **src):
    return open_source(name, SourceConfig(root=str(root), **src), Path(root), split, label_set_, None, False)


# ------------------------------------------------------------------------------------------------------ SYNTHIA
SYN_R = np.array([[3, 4, 2], [21, 0, 16]], np.uint16)  # road, sidewalk, building / wall, void, terrain
SYN_G = np.array([[1, 1, 300], [7, 0, 4096]], np.uint16)  # instance ids (as ids: sky, sky, -, pole, void, -)
SYN_TRAIN = [[0, 1, 2], [3, 255, 9]]  # by hand: road 0, sidewalk 1, building 2, wall 3, void ignored, terrain 9


def _synthia(root: Path, r: np.ndarray = SYN_R, g: np.ndarray = SYN_G, name: str = "0000001.png") -> Path:
    (root / "RGB").mkdir(parents=True, exist_ok=True)
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(*r.shape)).save(root / "RGB" / name)
    label = root / "GT" / "LABELS" / name
    assert cv2.imwrite(str(label), np.dstack([np.zeros_like(r), g, r]))  # OpenCV writes B, G, R
    return label


@pytest.mark.unit
def test_synthia_ids_in_the_r_channel(tmp_path):
    _synthia(tmp_path)
    ds = _open(tmp_path, layout="synthia", domain="synthetic")
    assert isinstance(ds, SynthiaSegmentation) and len(ds) == 1
    assert ds.load_label(0).dtype == np.uint8 and ds.load_label(0).tolist() == SYN_TRAIN
    s = ds[0]
    assert s["image"].size == (3, 2) and s["label"].tolist() == SYN_TRAIN
    # the subset label set: terrain (16) is no class of it, so ignored; the other classes keep their ids
    assert _open(tmp_path, SUBSET16, layout="synthia").load_label(0).tolist() == [[0, 1, 2], [3, 255, 255]]
    # label_channel selects another channel: G read as ids (1 sky, 7 pole; 300, 4096 are no SYNTHIA ids)
    g_ds = _open(tmp_path, layout="synthia", label_channel=1)
    with pytest.raises(DatasetError, match=r"\[300, 4096\]"):
        g_ds.load_label(0)


@pytest.mark.unit
def test_synthia_label_that_is_not_16_bit_colour(tmp_path):
    label = _synthia(tmp_path)
    Image.fromarray(SYN_R.astype(np.uint8)).save(label)  # an 8-bit grey PNG with the same ids
    ds = _open(tmp_path, layout="synthia")  # sizes come from the headers: built fine, refused when read
    with pytest.raises(DatasetError) as e:
        ds.load_label(0)
    msg = str(e.value)
    assert str(label) in msg and "uint8" in msg and "1 channel" in msg and "\n" not in msg
    Image.fromarray(np.dstack([SYN_R.astype(np.uint8)] * 3)).save(label)  # 8-bit RGB
    with pytest.raises(DatasetError, match=re.escape(str(label)) + r".*uint8 with 3 channel"):
        ds.load_label(0)


@pytest.mark.unit
def test_synthia_id_outside_the_table(tmp_path):
    r = SYN_R.copy()
    r[0, 1] = 40
    label = _synthia(tmp_path, r)
    with pytest.raises(DatasetError) as e:
        _open(tmp_path, layout="synthia").load_label(0)
    assert str(label) in str(e.value) and "[40]" in str(e.value)
    r[0, 1] = 256 + 3  # 16 bits are read whole: no wrap to 3 (road)
    _synthia(tmp_path, r)
    with pytest.raises(DatasetError, match=r"\[259\]"):
        _open(tmp_path, layout="synthia").load_label(0)


# ------------------------------------------------------------------------------------------- label set subsets
def _cityscapes(root: Path, ids: np.ndarray) -> None:
    for d in ("leftImg8bit", "gtFine"):
        (root / d / "train" / "oz").mkdir(parents=True)
    Image.fromarray(_rgb(*ids.shape)).save(root / "leftImg8bit" / "train" / "oz" / "oz_000000_000019_leftImg8bit.png")
    Image.fromarray(ids).save(root / "gtFine" / "train" / "oz" / "oz_000000_000019_gtFine_labelIds.png")


@pytest.mark.unit
def test_a_label_set_without_a_dataset_class_ignores_it(tmp_path):
    ids = np.array([[7, 22, 23, 27], [28, 31, 33, 8]], np.uint8)  # road terrain sky truck / bus train bicycle sidewalk
    _cityscapes(tmp_path, ids)
    assert _open(tmp_path, layout="cityscapes").load_label(0).tolist() == [[0, 9, 10, 14], [15, 16, 18, 1]]
    assert _open(tmp_path, SUBSET16, layout="cityscapes").load_label(0).tolist() == [
        [0, 255, 9, 255], [13, 255, 15, 1]]


@pytest.mark.unit
def test_a_label_map_naming_an_unknown_class_is_a_config_error(tmp_path):
    _cityscapes(tmp_path, np.array([[7, 22]], np.uint8))
    with pytest.raises(DatasetError) as e:
        _open(tmp_path, SUBSET16, name="mine", layout="cityscapes", label_map={7: "road", 22: "terrain"})
    msg = str(e.value)
    assert "data.sources.mine.label_map" in msg and "'terrain'" in msg
    # the same map with a label set that has terrain: the map replaces the Cityscapes table
    ds = _open(tmp_path, CS19, name="mine", layout="cityscapes", label_map={7: "road", 22: "terrain"})
    assert ds.load_label(0).tolist() == [[0, 9]]


# ------------------------------------------------------------------------------------------------------ folders
ABC = LabelSet(("a", "b", "c"), np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8))
RED, GREEN, BLUE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)


def _paint(*rows: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(rows, np.uint8)


MASK = _paint([RED, GREEN, BLUE], [BLUE, BLUE, RED])  # by ABC's colours: a b c / c c a
MASK_IDS = [[0, 1, 2], [2, 2, 0]]


def _folders(root: Path, masks: dict[str, list[np.ndarray]]) -> dict[str, list[Path]]:
    """img/<split>/<k>.png with gt/<split>/<k>_mask.png; returns the label paths."""
    out = {}
    for split, arrays in masks.items():
        (root / "img" / split).mkdir(parents=True)
        (root / "gt" / split).mkdir(parents=True)
        out[split] = []
        for k, m in enumerate(arrays):
            Image.fromarray(_rgb(*m.shape[:2], seed=k)).save(root / "img" / split / f"{k}.png")
            out[split].append(root / "gt" / split / f"{k}_mask.png")
            Image.fromarray(m).save(out[split][-1])
    return out


PATTERNS = {"layout": "folders", "images": "img/{split}/*.png", "labels": "gt/{split}/{stem}_mask.png",
            "label_format": "rgb"}


@pytest.mark.unit
def test_folders_patterns_and_rgb_labels_by_the_label_set_colours(tmp_path):
    val_mask = _paint([GREEN, GREEN, GREEN], [RED, RED, RED])
    labels = _folders(tmp_path, {"train": [MASK, MASK[::-1]], "val": [val_mask]})
    train = _open(tmp_path, ABC, **PATTERNS)
    assert isinstance(train, FolderSegmentation) and len(train) == 2
    assert train.label_paths == labels["train"]
    assert [p.name for p in train.image_paths] == ["0.png", "1.png"]
    assert train.load_label(0).tolist() == MASK_IDS and train.load_label(1).tolist() == MASK_IDS[::-1]
    assert train[0]["label"].tolist() == MASK_IDS
    val = _open(tmp_path, ABC, "val", **PATTERNS)
    assert val.label_paths == labels["val"] and val.load_label(0).tolist() == [[1, 1, 1], [0, 0, 0]]


@pytest.mark.unit
def test_folders_explicit_label_map(tmp_path):
    mask = _paint([RED, (10, 20, 30), BLACK], [(255, 255, 0), RED, BLACK])
    _folders(tmp_path, {"train": [mask]})
    # keys as "r,g,b" and "#rrggbb"; classes by name; black ignored. ABC's own colours are not used.
    label_map = {"255,0,0": "c", "#0a141e": "a", "#FFFF00": "b", "0,0,0": "ignore"}
    ds = _open(tmp_path, ABC, label_map=label_map, **PATTERNS)
    assert ds.load_label(0).tolist() == [[2, 0, 255], [1, 2, 255]]


@pytest.mark.unit
def test_folders_unknown_colour_is_one_line_naming_file_and_colour(tmp_path):
    label = _folders(tmp_path, {"train": [_paint([RED, (10, 11, 12)], [GREEN, RED])]})["train"][0]
    ds = _open(tmp_path, ABC, **PATTERNS)  # no label_map: the label set's colours; unknown: error (the default)
    with pytest.raises(DatasetError) as e:
        ds.load_label(0)
    msg = str(e.value)
    assert "\n" not in msg and str(label) in msg and "#0a0b0c" in msg
    with pytest.raises(DatasetError, match="#0a0b0c"):
        ds[0]
    # unknown: ignore -> 255 for that colour only
    assert _open(tmp_path, ABC, unknown="ignore", **PATTERNS).load_label(0).tolist() == [[0, 255], [1, 0]]


@pytest.mark.unit
def test_folders_list_file(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "anno" / "deep").mkdir(parents=True)
    Image.fromarray(_rgb(2, 3)).save(tmp_path / "pics" / "x.png")
    Image.fromarray(_rgb(2, 3, 1)).save(tmp_path / "pics" / "y.png")
    Image.fromarray(MASK).save(tmp_path / "anno" / "deep" / "first.png")
    Image.fromarray(MASK[:, ::-1]).save(tmp_path / "anno" / "second.png")
    (tmp_path / "train.txt").write_text("# image label\npics/y.png anno/deep/first.png\n\npics/x.png anno/second.png\n")
    ds = _open(tmp_path, ABC, layout="folders", list_file="{split}.txt", label_format="rgb")
    assert ds.image_paths == [tmp_path / "pics" / "y.png", tmp_path / "pics" / "x.png"]  # the file's order
    assert ds.load_label(0).tolist() == MASK_IDS
    assert ds.load_label(1).tolist() == [row[::-1] for row in MASK_IDS]
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "val.txt"))):
        _open(tmp_path, ABC, "val", layout="folders", list_file="{split}.txt", label_format="rgb")
    (tmp_path / "train.txt").write_text("pics/x.png anno/second.png extra\n")
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'train.txt'}:1")):
        _open(tmp_path, ABC, layout="folders", list_file="{split}.txt", label_format="rgb")
    (tmp_path / "train.txt").write_text("pics/x.png anno/missing.png\n")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "anno" / "missing.png"))):
        _open(tmp_path, ABC, layout="folders", list_file="{split}.txt", label_format="rgb")


@pytest.mark.unit
def test_folders_missing_label_and_empty_glob(tmp_path):
    labels = _folders(tmp_path, {"train": [MASK, MASK]})["train"]
    labels[1].unlink()
    with pytest.raises(DatasetError) as e:
        _open(tmp_path, ABC, **PATTERNS)
    assert str(labels[1]) in str(e.value) and str(tmp_path / "img" / "train" / "1.png") in str(e.value)
    with pytest.raises(DatasetError) as e:
        _open(tmp_path, ABC, "val", **PATTERNS)  # img/val does not exist: the glob matches nothing
    assert str(tmp_path / "img" / "val" / "*.png") in str(e.value)


@pytest.mark.unit
def test_folders_ids_are_train_ids_by_default(tmp_path):
    _folders(tmp_path, {"train": [np.array([[0, 1], [2, 255]], np.uint8)]})
    src = {**PATTERNS, "label_format": "ids"}
    assert _open(tmp_path, ABC, **src).load_label(0).tolist() == [[0, 1], [2, 255]]
    Image.fromarray(np.array([[0, 3], [2, 255]], np.uint8)).save(tmp_path / "gt" / "train" / "0_mask.png")
    with pytest.raises(DatasetError, match=r"\[3\]"):  # 3 is no class of a 3-class set
        _open(tmp_path, ABC, **src).load_label(0)


# ----------------------------------------------------------------------------------- examples/own_dataset
EXAMPLE = ROOT / "examples" / "own_dataset"
# the example's mask colours, written out by hand: colour -> train id (void ignored)
OWN4_COLOURS = {(128, 64, 128): 0, (70, 70, 70): 1, (107, 142, 35): 2, (0, 0, 142): 3, (0, 0, 0): 255}


def _make_data():
    spec = importlib.util.spec_from_file_location("own4_make_data", EXAMPLE / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
def test_own_dataset_example(tmp_path, monkeypatch):
    data_root = tmp_path / "own4"
    make = _make_data()
    args = ["--root", str(data_root), "--n-train", "4", "--n-val", "2", "--height", "48", "--width", "96"]
    assert make.main(args) == 0
    assert sorted(p.name for p in (data_root / "masks" / "val").iterdir()) == ["val_0000_mask.png",
                                                                                 "val_0001_mask.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["own4"]  # no temporary copy left
    stamp = (data_root / "images" / "train" / "train_0000.png").stat().st_mtime_ns
    assert make.main(args) == 0  # an existing dataset is kept
    assert (data_root / "images" / "train" / "train_0000.png").stat().st_mtime_ns == stamp

    monkeypatch.setenv("OWN4_ROOT", str(data_root))
    register_configs()  # the project_root resolver
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(EXAMPLE / "data" / "own4.yaml"))
    data = OmegaConf.to_object(cfg)  # the schema's checks
    assert data.toycity is None and data.val_source == "own4" and data.sources["own4"].root == str(data_root)
    labels = label_set(data.labels, data.eval_classes)
    assert labels.classes == ("ground", "structure", "nature", "object") and labels.rare_names == ["object"]
    seen = set()
    for split, n in (("train", 4), ("val", 2)):
        ds = open_source("own4", data.sources["own4"], data_root, split, labels, data.resize, data.skip_mismatched)
        assert len(ds) == n
        for i in range(n):
            mask = np.asarray(Image.open(ds.label_paths[i]).convert("RGB"))
            colours = [tuple(c) for c in mask.reshape(-1, 3).tolist()]
            expected = np.array([OWN4_COLOURS[c] for c in colours]).reshape(mask.shape[:2])  # KeyError: a stray colour
            assert np.array_equal(ds.load_label(i), expected)
            seen |= set(np.unique(expected).tolist())
    assert seen == {0, 1, 2, 3, 255}  # every class and the void colour occur


def test_own_dataset_config_dir_makes_data_own4_selectable():
    """The README's command line composes: --config-dir puts examples/own_dataset on Hydra's search path."""
    out = subprocess.run(
        [sys.executable, "train.py", "--config-dir", str(EXAMPLE), "data=own4", "dataset_mix=real_only",
         "--cfg", "job", "-p", "data.sources.own4.layout"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "folders"
