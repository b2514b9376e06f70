"""A configured source (``data.sources.<name>``) -> the dataset of one of its splits, with its label table.

Each layout brings its own reading of label files and its own table (Cityscapes ids for cityscapes/gta5, SYNTHIA
ids for synthia); a source's ``label_map`` replaces the table, ``unknown`` the rule for values it lacks.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from segsweep.config import SourceConfig
from segsweep.data.cityscapes import CityscapesSegmentation
from segsweep.data.folders import FolderSegmentation
from segsweep.data.gta5 import GTA5Segmentation
from segsweep.data.labels import LabelMap, LabelSet, color_table, identity_table, resolve_table
from segsweep.data.paired import DatasetError, LabelReader, PairedSegmentation, read_png16, read_rgb, read_u8
from segsweep.data.synthia import SynthiaSegmentation
from segsweep.data.tables import CITYSCAPES_IDS, SYNTHIA_IDS

SPACE = {"ids": 256, "rgb": 1 << 24, "png16": 1 << 16}
LAYOUT_FORMAT = {"cityscapes": "ids", "gta5": "ids", "synthia": "png16"}
LAYOUT_TABLE = {"cityscapes": CITYSCAPES_IDS, "gta5": CITYSCAPES_IDS, "synthia": SYNTHIA_IDS}
# cityscapes/gta5 files hold values their table lacks as a matter of course (GTA5's licence plates)
LAYOUT_UNKNOWN = {"cityscapes": "ignore", "gta5": "ignore"}


def label_map(src: SourceConfig, labels: LabelSet, key: str) -> LabelMap:
    """The table of the source's label files: its label_map, else its layout's table, else train ids / colours."""
    fmt = src.label_format or LAYOUT_FORMAT.get(src.layout, "ids")
    space = SPACE[fmt]
    try:
        if src.label_map is not None:
            table = resolve_table(dict(src.label_map), labels, space=space, strict=True, key=f"{key}.label_map")
        elif src.layout in LAYOUT_TABLE:
            table = resolve_table(LAYOUT_TABLE[src.layout], labels, space=space, strict=False, key=key)
        elif fmt == "rgb":
            table = color_table(labels)
        else:
            table = identity_table(labels)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    return LabelMap(table, space, src.unknown or LAYOUT_UNKNOWN.get(src.layout, "error"))


def open_source(name: str, src: SourceConfig, root: Path, split: str, labels: LabelSet,
                resize: list[int] | None, skip_mismatched: bool) -> PairedSegmentation:
    """The dataset of ``split`` (the layouts without splits, gta5 and synthia, have only their files)."""
    key = f"data.sources.{name}"
    if not root.is_dir():
        raise DatasetError(f"config key '{key}.root': directory {root} does not exist (expected a {src.layout}-"
                           "layout dataset there)")
    table = label_map(src, labels, key)
    if src.layout == "cityscapes":
        train_ids = LabelMap(identity_table(labels), 256, "error")
        return CityscapesSegmentation(root, split, table, train_ids, resize, skip_mismatched)
    if src.layout == "gta5":
        return GTA5Segmentation(root, table, resize, skip_mismatched)
    if src.layout == "synthia":
        return SynthiaSegmentation(root, table, src.label_channel, resize, skip_mismatched)
    fmt = src.label_format or "ids"
    read = {"ids": read_u8, "rgb": read_rgb, "png16": partial(read_png16, channel=src.label_channel)}[fmt]
    return FolderSegmentation(root, split, LabelReader(read, table), src.images, src.labels, src.list_file,
                              resize, skip_mismatched)
