"""A run's label set (``data.labels``) and the tables that turn a label file's values into its train ids.

Train ids are 0..C-1 in the order of ``data.labels.classes``; ``IGNORE`` (255) marks unlabelled pixels everywhere
below the loaders. A source's ``LabelMap`` maps every value its files may hold (an 8-bit id or palette index, a
16-bit id, a 24-bit RGB colour) to a train id through one lookup table; a value the table does not know is an
error naming the file, or (``unknown: ignore``) ignored and counted by ``UnknownAudit``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE = 255  # train id of unlabelled pixels
_UNKNOWN = 254  # a lookup table's mark for values it does not know; never leaves LabelMap
MAX_CLASSES = 254


@dataclass(frozen=True)
class LabelSet:
    """Class names (train id = position), display colours, the rare classes and the classes evaluated."""

    classes: tuple[str, ...]
    colors: np.ndarray  # (C, 3) uint8
    rare: tuple[int, ...] = ()  # reported together as val/mIoU_rare
    evaluated: tuple[int, ...] = ()  # val/mIoU averages these (data.eval_classes); all classes when empty
    ignore_value: int = 255  # the file value that means unlabelled in files of train ids
    eval_name: str = "all"  # what ``evaluated`` is called in reports (a subset's name, or "all")

    def __post_init__(self) -> None:
        if not self.evaluated:
            object.__setattr__(self, "evaluated", tuple(range(len(self.classes))))
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.classes)})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def rare_names(self) -> list[str]:
        return [self.classes[i] for i in self.rare]

    @property
    def evaluated_names(self) -> list[str]:
        return [self.classes[i] for i in self.evaluated]

    def index(self, name: str) -> int | None:
        return self._index.get(name)  # type: ignore[attr-defined]

    def fingerprint(self) -> str:
        """A short hash of what changes train ids: the classes (their order) and the ignore value."""
        return hashlib.sha1(json.dumps([list(self.classes), self.ignore_value]).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a record (a trial's attributes, a checkpoint): names, colours, rare, evaluated."""
        return {"classes": list(self.classes), "colors": self.colors.tolist(), "rare": self.rare_names,
                "evaluated": self.evaluated_names, "eval_name": self.eval_name}

    @classmethod
    def of(cls, classes: list[str] | tuple[str, ...], rare: tuple[str, ...] = (),
           evaluated: tuple[str, ...] = ()) -> LabelSet:
        """A label set from names alone (generated colours), e.g. in tests and notebooks."""
        classes = tuple(classes)
        return cls(classes, default_colors(len(classes)), tuple(classes.index(n) for n in rare),
                   tuple(classes.index(n) for n in evaluated))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSet:
        classes = tuple(d["classes"])
        return cls(classes, np.asarray(d["colors"], np.uint8), tuple(classes.index(n) for n in d.get("rare", [])),
                   tuple(classes.index(n) for n in d.get("evaluated", classes)), eval_name=d.get("eval_name", "all"))


def default_colors(n: int) -> np.ndarray:
    """Distinct display colours for classes without configured ones (a fixed golden-ratio walk on the hue)."""
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((0.61803398875 * i) % 1.0, 0.65, 0.9)]
                     for i in range(n)], np.uint8)


def parse_color(key: Any) -> int:
    """An RGB colour as a 24-bit int: from "r,g,b", "#rrggbb" or [r, g, b]."""
    if isinstance(key, str) and key.startswith("#") and len(key) == 7:
        return int(key[1:], 16)
    parts = [int(p) for p in key.split(",")] if isinstance(key, str) else [int(p) for p in key]
    if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
        raise ValueError(f"{key!r} is not a colour; expected 'r,g,b' or '#rrggbb' with 0..255 channels")
    return (parts[0] << 16) | (parts[1] << 8) | parts[2]


@dataclass
class UnknownAudit:
    """Pixels whose file value no table entry names (ignored under ``unknown: ignore``), counted while read."""

    pixels: int = 0
    files: int = 0
    read: int = 0  # label files read
    values: set[int] = field(default_factory=set)

    def add(self, unknown_values: np.ndarray | None) -> None:
        self.read += 1
        if unknown_values is not None and unknown_values.size:
            self.pixels += int(unknown_values.size)
            self.files += 1
            self.values.update(np.unique(unknown_values)[:64].tolist())

    def to_dict(self) -> dict:
        return {"pixels": self.pixels, "files": self.files, "read": self.read, "values": sorted(self.values)}

    @classmethod
    def from_dict(cls, d: dict) -> UnknownAudit:
        return cls(d["pixels"], d["files"], d["read"], set(d["values"]))

    def describe(self, what: str, note: str = "") -> str | None:
        """One line for the log, or None when every value was known."""
        if not self.pixels:
            return None
        return (f"{what}: values {sorted(self.values)[:10]} in {self.files}/{self.read} label files "
                f"({self.pixels:,} px) not in its table{note}: ignored")


class LabelMap:
    """File values -> train ids for one source: a lookup table over the value space (256, 65536 or 2**24).

    ``table`` maps a value to a train id or ``IGNORE``; ``unknown``: "error" (a value outside the table stops
    with the file and the values) or "ignore" (it becomes IGNORE, counted by an ``UnknownAudit`` when given)."""

    def __init__(self, table: dict[int, int], space: int, unknown: str = "error") -> None:
        if unknown not in ("error", "ignore"):
            raise ValueError(f"unknown must be 'error' or 'ignore', got {unknown!r}")
        self.table, self.space, self.unknown = dict(table), space, unknown
        self._lut: np.ndarray | None = None  # built on first use: 16 MB for RGB, so not in every pickled copy

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lut": None}

    @property
    def lut(self) -> np.ndarray:
        if self._lut is None:
            lut = np.full(self.space, _UNKNOWN, np.uint8)
            for value, train_id in self.table.items():
                if not 0 <= value < self.space:
                    raise ValueError(f"label value {value} is outside 0..{self.space - 1}")
                lut[value] = train_id
            self._lut = lut
        return self._lut

    def __call__(self, values: np.ndarray, what: str, audit: UnknownAudit | None = None) -> np.ndarray:
        """uint8 train ids of ``values`` (read from the file ``what``)."""
        out = self.lut[values]
        bad = out == _UNKNOWN
        any_bad = bool(bad.any())
        if audit is not None:
            audit.add(values[bad] if any_bad else None)
        if any_bad:
            if self.unknown == "error":
                raise LabelValueError(what, np.unique(values[bad])[:10].tolist(), self.space)
            out[bad] = IGNORE
        return out

    def fingerprint(self) -> str:
        items = sorted(self.table.items())
        return hashlib.sha1(json.dumps([self.space, self.unknown, items]).encode()).hexdigest()[:12]


class LabelValueError(ValueError):
    """A label file holds values its source's table does not name (data.DatasetError wraps it with the file)."""

    def __init__(self, what: str, values: list[int], space: int) -> None:
        shown = [f"#{v:06x}" for v in values] if space == 1 << 24 else values
        super().__init__(f"label {what} holds values {shown} that its label table does not name; expected the "
                         "values of the source's label_map (or set its unknown: ignore to ignore them)")


def resolve_table(names_by_value: dict[Any, Any], labels: LabelSet, *, space: int, strict: bool,
                  key: str) -> dict[int, int]:
    """{file value: class name | "ignore" | None | train id} -> {value: train id}.

    ``strict`` (a table the user wrote): a class name the label set does not have is an error naming ``key``;
    otherwise (a dataset's own table) such a class is ignored, so one table serves any subset of its classes."""
    out: dict[int, int] = {}
    for raw, name in names_by_value.items():
        try:
            value = parse_color(raw) if space == 1 << 24 else int(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config key '{key}': entry {raw!r}: {e}") from None
        if not 0 <= value < space:
            raise ValueError(f"config key '{key}': entry {raw!r} is outside the label files' values 0..{space - 1}")
        if name is None or name == "ignore" or name == IGNORE:
            out[value] = IGNORE
        elif isinstance(name, int) and not isinstance(name, bool):
            if not 0 <= name < labels.num_classes:
                raise ValueError(f"config key '{key}': entry {raw!r} -> train id {name}; expected 0.."
                                 f"{labels.num_classes - 1}, a class name or 'ignore'")
            out[value] = name
        else:
            idx = labels.index(str(name))
            if idx is None and strict:
                raise ValueError(f"config key '{key}': entry {raw!r} names class {name!r}, which is not in "
                                 f"data.labels.classes {list(labels.classes)} (or 'ignore')")
            out[value] = IGNORE if idx is None else idx
    return out


def identity_table(labels: LabelSet) -> dict[int, int]:
    """Files that hold train ids: 0..C-1 are the classes, ``labels.ignore_value`` unlabelled."""
    table = {i: i for i in range(labels.num_classes)}
    table[labels.ignore_value] = IGNORE
    return table


def color_table(labels: LabelSet) -> dict[int, int]:
    """RGB files painted in the label set's colours."""
    packed = [(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in labels.colors]
    if len(set(packed)) != len(packed):
        raise ValueError("data.labels.colors: two classes share a colour, so colours cannot name classes; give the "
                         "source a label_map")
    return {c: i for i, c in enumerate(packed)}


def label_set(cfg: Any, eval_classes: Any = None) -> LabelSet:
    """The LabelSet of a validated ``data.labels`` (config.LabelSetConfig) and ``data.eval_classes``."""
    classes = tuple(cfg.classes)
    colors = np.asarray(cfg.colors, np.uint8) if cfg.colors is not None else default_colors(len(classes))
    if eval_classes is None:
        evaluated, eval_name = (), "all"
    elif isinstance(eval_classes, str):
        evaluated, eval_name = tuple(classes.index(n) for n in cfg.subsets[eval_classes]), eval_classes
    else:
        evaluated, eval_name = tuple(classes.index(n) for n in eval_classes), f"{len(eval_classes)} classes"
    return LabelSet(classes, colors, tuple(classes.index(n) for n in cfg.rare), evaluated, int(cfg.ignore_value),
                    eval_name)
