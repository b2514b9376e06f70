"""The Cityscapes label tables, checked against values written out from cityscapesScripts' labels.py."""

import numpy as np

from segsweep.data import labels


def test_id_to_trainid_by_hand():
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
                0: 255, 1: 255, 3: 255, 6: 255, 9: 255, 10: 255, 14: 255, 18: 255, 29: 255, 30: 255,
                34: 255, 100: 255, 255: 255}
    lut = labels.ID_TO_TRAINID
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for label_id, train_id in expected.items():
        assert lut[label_id] == train_id, label_id
    assert (lut[34:] == 255).all()
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))


def test_names_and_reverse_table():
    assert labels.NUM_CLASSES == 19 and labels.IGNORE_INDEX == 255
    assert list(labels.CLASS_NAMES) == [
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert labels.TRAINID_TO_ID.tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_palettes():
    pal = labels.TRAIN_PALETTE
    assert pal.shape == (19, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [128, 64, 128]  # road
    assert pal[10].tolist() == [70, 130, 180]  # sky
    assert pal[18].tolist() == [119, 11, 32]  # bicycle
    flat = labels.ID_PALETTE
    assert len(flat) == 768
    assert flat[3 * 26: 3 * 26 + 3] == [0, 0, 142]  # car, indexed by label id
    assert flat[3 * 6: 3 * 6 + 3] == [81, 0, 81]  # ground
    assert flat[3 * 34:] == [0] * (768 - 3 * 34)


def test_rare_classes():
    rare = labels.RARE_CLASSES
    assert {6, 12, 16, 17, 18} <= set(rare)  # traffic light, rider, train, motorcycle, bicycle
    assert not {0, 2, 8, 10, 13} & set(rare)  # road, building, vegetation, sky, car are not rare
