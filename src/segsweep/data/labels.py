"""The Cityscapes label table (as in cityscapesScripts ``helpers/labels.py``) and the tables derived from it.

Label *ids* (0..33) are what ``*_gtFine_labelIds.png`` files and GTA5 palette indices hold; *trainIds* (0..18,
255 = ignore) are what the model predicts. Everything maps ids to trainIds through one 256-entry lookup table.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Label(NamedTuple):
    name: str
    id: int
    train_id: int  # 255: ignored in training and evaluation
    color: tuple[int, int, int]


# 'license plate' (id -1) is left out: it never occurs in labelIds files.
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
)

NUM_CLASSES = 19
IGNORE_INDEX = 255

_TRAIN_LABELS = sorted((lb for lb in LABELS if lb.train_id != IGNORE_INDEX), key=lambda lb: lb.train_id)
assert [lb.train_id for lb in _TRAIN_LABELS] == list(range(NUM_CLASSES))

CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS)
TRAIN_PALETTE: np.ndarray = np.array([lb.color for lb in _TRAIN_LABELS], dtype=np.uint8)  # (19, 3)
TRAINID_TO_ID: np.ndarray = np.array([lb.id for lb in _TRAIN_LABELS], dtype=np.uint8)  # (19,)
NAME_TO_ID: dict[str, int] = {lb.name: lb.id for lb in LABELS}
KNOWN_IDS: frozenset[int] = frozenset(lb.id for lb in LABELS)

# Every value outside the table (34..255) maps to ignore, so a lookup never goes out of range.
ID_TO_TRAINID: np.ndarray = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _lb in LABELS:
    ID_TO_TRAINID[_lb.id] = _lb.train_id

# Flat 768-entry PIL palette indexed by label id: the palette GTA5 label PNGs carry.
ID_PALETTE: list[int] = [0] * 768
for _lb in LABELS:
    ID_PALETTE[3 * _lb.id: 3 * _lb.id + 3] = list(_lb.color)

# GTA5's label palette as it ships: the 34 Cityscapes ids plus index 34, the licence-plate colour (0, 0, 142).
# Index 34 is no Cityscapes id: it maps to ignore like every value outside the table.
GTA5_LICENSE_PLATE = 34
GTA5_PALETTE: list[int] = ID_PALETTE[: 3 * len(LABELS)] + [0, 0, 142]  # 35 entries

# Small or thin classes, reported together as val/mIoU_rare.
RARE_CLASSES: tuple[int, ...] = tuple(
    CLASS_NAMES.index(n) for n in ("pole", "traffic light", "traffic sign", "rider", "train", "motorcycle", "bicycle")
)
