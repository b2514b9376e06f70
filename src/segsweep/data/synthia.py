"""SYNTHIA-layout loader (SYNTHIA-RAND-CITYSCAPES as it ships): ``root/RGB/*.png`` (1280x760) with
``root/GT/LABELS/<same name>``: 16-bit PNGs whose R channel holds the class id (OpenCV's last channel with
IMREAD_UNCHANGED; the other channel holds instance ids). Pillow cannot decode these files correctly, so they are
read with OpenCV; a label that is not a 16-bit colour PNG stops with its dtype and channels rather than be guessed.
Ids are looked up in the SYNTHIA table (``data.tables.SYNTHIA_IDS``) by default; an id outside it is an error.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from segsweep.data.labels import LabelMap
from segsweep.data.paired import LabelReader, PairedSegmentation, read_png16, require_dir


class SynthiaSegmentation(PairedSegmentation):
    def __init__(self, root: str | Path, id_map: LabelMap, channel: int = 0,
                 resize: list[int] | tuple[int, int] | None = None, skip_mismatched: bool = False) -> None:
        super().__init__(resize, skip_mismatched)
        self.root = Path(root)
        require_dir(self.root, "SYNTHIA root")
        img_dir = require_dir(self.root / "RGB", "SYNTHIA images")
        label_dir = require_dir(self.root / "GT" / "LABELS", "SYNTHIA labels")
        self._pair_by_name(img_dir, label_dir, LabelReader(partial(read_png16, channel=channel), id_map))
        self._check_sizes()
