"""Any dataset laid out as image and label files (``layout: folders``).

Pairs come from a glob of images and a label path template (``images: "img/{split}/*.jpg"``,
``labels: "gt/{split}/{stem}_mask.png"``, fields ``{split}``, ``{stem}`` (file name without its extension),
``{name}``, ``{parent}`` (the image's folder name) and ``{rel}`` (its folder relative to the glob's fixed part)),
or from a list file of ``<image> <label>`` lines, paths relative to the root. Labels are decoded by the source's
``label_format`` (ids, rgb, png16) and looked up in its table.
"""

from __future__ import annotations

import glob
from pathlib import Path

from segsweep.data.paired import DatasetError, LabelReader, PairedSegmentation, require_dir


class FolderSegmentation(PairedSegmentation):
    def __init__(self, root: str | Path, split: str, reader: LabelReader, images: str | None = None,
                 labels: str | None = None, list_file: str | None = None,
                 resize: list[int] | tuple[int, int] | None = None, skip_mismatched: bool = False) -> None:
        super().__init__(resize, skip_mismatched)
        self.root = require_dir(Path(root), "dataset root")
        if list_file is not None:
            self._from_list(self.root / list_file.replace("{split}", split))
        elif images and labels:
            self._from_patterns(images.replace("{split}", split), labels, split)
        else:
            raise DatasetError(f"{self.root}: a folders source needs images and labels patterns, or a list_file")
        for img, label in zip(self.image_paths, self.label_paths):
            if not label.is_file():
                raise DatasetError(f"image {img} has no label: expected {label}")
        self._readers = [reader] * len(self.image_paths)
        self._check_sizes()

    def _from_patterns(self, pattern: str, labels: str, split: str) -> None:
        self.image_paths = sorted(Path(p) for p in glob.glob(str(self.root / pattern), recursive=True))
        if not self.image_paths:
            raise DatasetError(f"no images match {self.root / pattern} (data source 'images' pattern)")
        fixed = []  # the pattern's leading folders without a wildcard: {rel} is relative to them
        for part in Path(pattern).parts[:-1]:
            if any(c in part for c in "*?["):
                break
            fixed.append(part)
        base = self.root.joinpath(*fixed)
        self.label_paths = []
        for img in self.image_paths:
            rel = img.parent.relative_to(base).as_posix()
            fields = {"split": split, "stem": img.stem, "name": img.name, "parent": img.parent.name, "rel": rel}
            try:
                self.label_paths.append(self.root / labels.format(**fields))
            except (KeyError, IndexError, ValueError) as e:
                raise DatasetError(f"label pattern {labels!r}: {e}; expected fields {sorted(fields)}") from None

    def _from_list(self, path: Path) -> None:
        if not path.is_file():
            raise DatasetError(f"list file {path} does not exist (expected '<image> <label>' lines)")
        self.image_paths, self.label_paths = [], []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{path}:{n}: {line!r}; expected '<image> <label>' (paths relative to {self.root})")
            self.image_paths.append(self.root / parts[0])
            self.label_paths.append(self.root / parts[1])
        if not self.image_paths:
            raise DatasetError(f"list file {path} names no image")
        for img in self.image_paths:
            if not img.is_file():
                raise DatasetError(f"image {img} (listed in {path}) does not exist")
