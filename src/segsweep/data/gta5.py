"""GTA5-layout loader: ``root/images/*.png`` with ``root/labels/<same name>``.

GTA5 labels are palette PNGs whose *indices* are Cityscapes label ids; they are read as indices (never converted
to RGB) and looked up in the source's table (by default the Cityscapes one). The palette has 35 entries: index
34, the licence-plate colour (0, 0, 142), is no Cityscapes id and is ignored (and counted) like every value outside
the table.
"""

from __future__ import annotations

from pathlib import Path

from segsweep.data.labels import LabelMap
from segsweep.data.paired import LabelReader, PairedSegmentation, read_u8, require_dir


class GTA5Segmentation(PairedSegmentation):
    def __init__(self, root: str | Path, id_map: LabelMap, resize: list[int] | tuple[int, int] | None = None,
                 skip_mismatched: bool = False) -> None:
        super().__init__(resize, skip_mismatched)
        self.root = Path(root)
        require_dir(self.root, "GTA5 root")
        img_dir = require_dir(self.root / "images", "GTA5 images")
        label_dir = require_dir(self.root / "labels", "GTA5 labels")
        self._pair_by_name(img_dir, label_dir, LabelReader(read_u8, id_map))
        self._check_sizes()  # some pairs of the full GTA5 release differ by a few pixels
