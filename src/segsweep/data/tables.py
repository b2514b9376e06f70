"""The datasets' own label tables: what the values in their files mean.

Cityscapes (as in cityscapesScripts ``helpers/labels.py``): label *ids* 0..33 are what ``*_gtFine_labelIds.png``
files and GTA5 palette indices hold. SYNTHIA-RAND-CITYSCAPES: class ids 0..22 in the R channel of its 16-bit
``GT/LABELS`` PNGs. Each table maps a file value to a class *name*; a run's label set (``data.labels``) turns the
names into train ids, so a table serves any label set that names the same classes (a name the label set does not
have is ignored). Only the dataset modules (loaders, the ToyCity generator) read this file.
"""

from __future__ import annotations

from typing import NamedTuple


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

NAME_TO_ID: dict[str, int] = {lb.name: lb.id for lb in LABELS}
# file value -> class name, for every Cityscapes id (classes outside the 19 train classes name themselves too,
# and are ignored by any label set that does not list them)
CITYSCAPES_IDS: dict[int, str] = {lb.id: lb.name for lb in LABELS}

# Flat 768-entry PIL palette indexed by label id: the palette GTA5 label PNGs carry.
ID_PALETTE: list[int] = [0] * 768
for _lb in LABELS:
    ID_PALETTE[3 * _lb.id: 3 * _lb.id + 3] = list(_lb.color)

# GTA5's label palette as it ships: the 34 Cityscapes ids plus index 34, the licence-plate colour (0, 0, 142).
# Index 34 is no Cityscapes id: it maps to ignore like every value outside the table.
GTA5_LICENSE_PLATE = 34
GTA5_PALETTE: list[int] = ID_PALETTE[: 3 * len(LABELS)] + [0, 0, 142]  # 35 entries

# SYNTHIA-RAND-CITYSCAPES class ids (its README), named by the Cityscapes class they are (10 pedestrian: person);
# 0 void is unlabelled; 16 terrain, 18 truck and 20 train never occur in its files.
SYNTHIA_IDS: dict[int, str | None] = {
    0: None, 1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole", 8: "car",
    9: "traffic sign", 10: "person", 11: "bicycle", 12: "motorcycle", 13: "parking-slot", 14: "road-work",
    15: "traffic light", 16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train", 21: "wall",
    22: "lanemarking",
}
