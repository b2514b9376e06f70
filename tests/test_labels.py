"""Label tables and label sets: the Cityscapes table and the cityscapes19 preset checked against values written
out from cityscapesScripts' labels.py; lookups of ids, colours and 16-bit values against hand-made arrays."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from segsweep.config import LabelSetConfig
from segsweep.data import tables
from segsweep.data.labels import (
    IGNORE,
    LabelMap,
    LabelSet,
    LabelValueError,
    UnknownAudit,
    color_table,
    identity_table,
    label_set,
    resolve_table,
)

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

ROOT = Path(__file__).resolve().parents[1]
CITYSCAPES19 = label_set(LabelSetConfig(**OmegaConf.to_container(OmegaConf.load(
    ROOT / "conf/data/labels/cityscapes19.yaml"))))
NAMES19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_cityscapes19_preset_matches_cityscapes_scripts():
    assert list(CITYSCAPES19.classes) == NAMES19 and CITYSCAPES19.num_classes == 19
    assert CITYSCAPES19.colors.shape == (19, 3) and CITYSCAPES19.colors.dtype == np.uint8
    assert CITYSCAPES19.colors[0].tolist() == [128, 64, 128]  # road
    assert CITYSCAPES19.colors[10].tolist() == [70, 130, 180]  # sky
    assert CITYSCAPES19.colors[18].tolist() == [119, 11, 32]  # bicycle
    assert {6, 12, 16, 17, 18} <= set(CITYSCAPES19.rare)  # traffic light, rider, train, motorcycle, bicycle
    assert not {0, 2, 8, 10, 13} & set(CITYSCAPES19.rare)  # road, building, vegetation, sky, car are not rare
    # the preset's colours are the dataset table's (one source of colours for the generator and the plots)
    by_name = {lb.name: lb.color for lb in tables.LABELS}
    assert [tuple(c) for c in CITYSCAPES19.colors.tolist()] == [by_name[n] for n in NAMES19]


def test_cityscapes_ids_to_train_ids_by_hand():
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
                0: 255, 1: 255, 3: 255, 6: 255, 9: 255, 10: 255, 14: 255, 18: 255, 29: 255, 30: 255}
    m = LabelMap(resolve_table(tables.CITYSCAPES_IDS, CITYSCAPES19, space=256, strict=False, key="k"), 256, "ignore")
    for label_id, train_id in expected.items():
        assert m(np.array([label_id], np.uint8), "f")[0] == train_id, label_id
    audit = UnknownAudit()
    out = m(np.array([[34, 7], [200, 26]], np.uint8), "f", audit)  # 34 (GTA5 licence plate), 200: not ids
    assert out.tolist() == [[255, 0], [255, 13]]
    assert (audit.pixels, audit.files, audit.read, audit.values) == (2, 1, 1, {34, 200})


def test_gta5_palette():
    flat = tables.GTA5_PALETTE
    assert len(flat) == 3 * 35
    assert flat[3 * 26: 3 * 26 + 3] == [0, 0, 142]  # car, indexed by label id
    assert flat[3 * 6: 3 * 6 + 3] == [81, 0, 81]  # ground
    assert flat[3 * 34:] == [0, 0, 142]  # index 34: the licence plate


def test_train_id_files_reject_values_outside_the_classes():
    m = LabelMap(identity_table(LabelSet.of(["a", "b", "c"])), 256, "error")
    assert m(np.array([0, 2, 255, 1], np.uint8), "f").tolist() == [0, 2, 255, 1]
    with pytest.raises(LabelValueError, match=r"label x.png holds values \[3, 7\]"):
        m(np.array([0, 3, 7, 3], np.uint8), "x.png")


def test_rgb_colours_and_16_bit_values():
    labels = LabelSet(("sky", "tree"), np.array([[0, 0, 255], [0, 128, 0]], np.uint8))
    m = LabelMap({**color_table(labels), 0: IGNORE}, 1 << 24, "error")
    packed = np.array([[0x0000FF, 0x008000], [0x000000, 0x0000FF]])
    assert m(packed, "f").tolist() == [[0, 1], [255, 0]]
    with pytest.raises(LabelValueError, match="#ff0000"):
        m(np.array([0xFF0000]), "f")
    # a user's table: "r,g,b" and "#rrggbb" keys, class names or ignore
    table = resolve_table({"0,0,255": "sky", "#008000": "tree", "255,255,255": "ignore"}, labels, space=1 << 24,
                          strict=True, key="data.sources.x.label_map")
    assert table == {0x0000FF: 0, 0x008000: 1, 0xFFFFFF: 255}
    with pytest.raises(ValueError, match=r"config key 'data.sources.x.label_map': entry '1,2,3' names class 'sea'"):
        resolve_table({"1,2,3": "sea"}, labels, space=1 << 24, strict=True, key="data.sources.x.label_map")
    # 16-bit values (SYNTHIA's R channel): a 65536-entry table
    m16 = LabelMap(resolve_table(tables.SYNTHIA_IDS, CITYSCAPES19, space=1 << 16, strict=False, key="k"), 1 << 16)
    assert m16(np.array([3, 4, 2, 21, 0, 10, 13], np.uint16), "f").tolist() == [0, 1, 2, 3, 255, 11, 255]


def test_subset_label_set_ignores_the_classes_it_lacks():
    sixteen = LabelSet.of([n for n in NAMES19 if n not in ("terrain", "truck", "train")])
    m = LabelMap(resolve_table(tables.CITYSCAPES_IDS, sixteen, space=256, strict=False, key="k"), 256, "ignore")
    # terrain (22), truck (27), train (31) -> ignored; sky (23) is train id 9 of the 16
    assert m(np.array([22, 27, 31, 23, 33], np.uint8), "f").tolist() == [255, 255, 255, 9, 15]


def test_label_set_records_and_eval_subsets():
    cfg = LabelSetConfig(classes=["a", "b", "c", "d"], rare=["d"], subsets={"three": ["a", "b", "d"]})
    ls = label_set(cfg, "three")
    assert ls.evaluated == (0, 1, 3) and ls.eval_name == "three" and ls.rare == (3,)
    assert LabelSet.from_dict(ls.to_dict()).to_dict() == ls.to_dict()
    assert label_set(cfg).evaluated == (0, 1, 2, 3)
    assert label_set(cfg, ["c"]).evaluated == (2,)
    assert label_set(cfg).colors.shape == (4, 3) and len({tuple(c) for c in label_set(cfg).colors.tolist()}) == 4
