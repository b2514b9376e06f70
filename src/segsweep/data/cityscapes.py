"""Cityscapes-layout loader: ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
``root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (train ids of the run's label set) or, when absent,
``*_gtFine_labelIds.png`` (Cityscapes ids, looked up in the source's table: by default the Cityscapes table, whose
ids a label set names by class; values outside it are ignored and counted, as GTA5's licence plates).
"""

from __future__ import annotations

from pathlib import Path

from segsweep.data.labels import LabelMap
from segsweep.data.paired import DatasetError, LabelReader, PairedSegmentation, read_u8, require_dir


class CityscapesSegmentation(PairedSegmentation):
    def __init__(self, root: str | Path, split: str, id_map: LabelMap, train_id_map: LabelMap,
                 resize: list[int] | tuple[int, int] | None = None, skip_mismatched: bool = False) -> None:
        super().__init__(resize, skip_mismatched)
        self.root = Path(root)
        self.split = split
        require_dir(self.root, "Cityscapes root")
        img_dir = require_dir(self.root / "leftImg8bit" / split, f"Cityscapes images of split '{split}'")
        gt_dir = require_dir(self.root / "gtFine" / split, f"Cityscapes labels of split '{split}'")
        suffix = "_leftImg8bit.png"
        self.image_paths = sorted(img_dir.glob(f"*/*{suffix}"))
        if not self.image_paths:
            raise DatasetError(f"no images found under {img_dir} (expected <city>/<name>{suffix})")
        ids_reader, train_ids_reader = LabelReader(read_u8, id_map), LabelReader(read_u8, train_id_map)
        self.label_paths = []
        for img in self.image_paths:
            stem = img.name[: -len(suffix)]
            train_ids = gt_dir / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            ids = gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.label_paths.append(train_ids)
                self._readers.append(train_ids_reader)
            elif ids.is_file():
                self.label_paths.append(ids)
                self._readers.append(ids_reader)
            else:
                raise DatasetError(f"image {img} has no label: expected {ids} (or {train_ids.name})")
        self._check_sizes()
