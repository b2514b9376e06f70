"""ToyCity: the embedded default data, procedurally generated street scenes.

A real set in the Cityscapes layout, a synthetic set in the GTA5 layout and (``n_synthia > 0``) one in the
SYNTHIA-RAND-CITYSCAPES layout, each with its own random streams, read by the loaders of the real datasets. Label
maps are drawn first (rectangles, convex polygons and ellipses, far to near), then rendered: synthetic images flat
with sharp edges in their own palette, real ones in another with per-class texture, noise, blur, uneven lighting.
Labels are written as the datasets ship them: Cityscapes ids; GTA5 palette PNGs of 35 entries, licence plates at
index 34 (no Cityscapes id: ignored when loaded); SYNTHIA 16-bit 3-channel PNGs, the SYNTHIA id of the class in R
(void 0 where SYNTHIA has none or never uses it: terrain, truck, train), dynamic objects' instance ids in G.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from segsweep.config import ToyCityConfig
from segsweep.data.paired import DatasetError
from segsweep.data.tables import CITYSCAPES_IDS, GTA5_LICENSE_PLATE, GTA5_PALETTE, NAME_TO_ID, SYNTHIA_IDS

GENERATOR_VERSION = "v2"  # bump when the generator's output changes: the cache directory name carries it
MARKER = "COMPLETE"
TRAIN_CITIES = ("alderton", "brickford", "copperfield")
VAL_CITIES = ("dunmore", "eastwick")

(UNLABELED, EGO, GROUND, ROAD, SIDEWALK, PARKING, RAIL, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN,
 SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE) = (NAME_TO_ID[n] for n in (
    "unlabeled", "ego vehicle", "ground", "road", "sidewalk", "parking", "rail track", "building", "wall",
    "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle"))


class _Canvas:
    """A label map plus an instance map; every shape is a new instance with a class id and a brightness tint."""

    def __init__(self, h: int, w: int, plates: bool = False) -> None:
        self.h, self.w, self.plates = h, w, plates  # plates: label cars' licence plates as GTA5 does (index 34)
        self.lab, self.inst = np.zeros((h, w), np.uint8), np.zeros((h, w), np.int32)
        self.inst_cls, self.inst_tint = [UNLABELED], [1.0]

    def new(self, cls: int, tint: float = 1.0) -> int:
        self.inst_cls.append(cls)
        self.inst_tint.append(tint)
        return len(self.inst_cls) - 1

    def rect(self, y0: float, y1: float, x0: float, x1: float, cls: int, tint: float = 1.0,
             inside: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        """Paint the pixels of a box (corners in any order) whose centres are ``inside`` (all when None); a shape
        that overlaps the image paints at least one pixel, so thin objects survive at small sizes."""
        y0, y1, x0, x1 = min(y0, y1), max(y0, y1), min(x0, x1), max(x0, x1)
        iy0, ix0 = int(np.floor(y0)), int(np.floor(x0))
        iy1, ix1 = min(max(int(np.ceil(y1)), iy0 + 1), self.h), min(max(int(np.ceil(x1)), ix0 + 1), self.w)
        iy0, ix0 = max(iy0, 0), max(ix0, 0)
        if iy0 >= iy1 or ix0 >= ix1:
            return
        mask: Any = ...
        if inside is not None:
            mask = inside(np.arange(iy0, iy1)[:, None] + 0.5, np.arange(ix0, ix1)[None, :] + 0.5)
            if not mask.any():
                mask[mask.shape[0] // 2, mask.shape[1] // 2] = True
        self.lab[iy0:iy1, ix0:ix1][mask] = cls
        self.inst[iy0:iy1, ix0:ix1][mask] = self.new(cls, tint)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, cls: int, tint: float = 1.0) -> None:
        ry, rx = max(ry, 0.5), max(rx, 0.5)
        self.rect(cy - ry, cy + ry, cx - rx, cx + rx, cls, tint,
                  lambda yy, xx: ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)

    def polygon(self, pts: list[tuple[float, float]], cls: int, tint: float = 1.0) -> None:
        """A convex polygon given as (y, x) vertices in order (either orientation)."""
        edges = list(zip(pts, pts[1:] + pts[:1], strict=True))

        def inside(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            cross = [(bx - ax) * (yy - ay) - (by - ay) * (xx - ax) for (ay, ax), (by, bx) in edges]
            return np.logical_and.reduce([k >= 0 for k in cross]) | np.logical_and.reduce([k <= 0 for k in cross])

        ys, xs = [p[0] for p in pts], [p[1] for p in pts]
        self.rect(min(ys), max(ys), min(xs), max(xs), cls, tint, inside)


def _person(c: _Canvas, rng: np.random.Generator, base: float, cx: float, s: float, cls: int = PERSON,
            height: float | None = None) -> None:
    """Legs, torso and head of a figure whose feet are at row ``base``."""
    height = height or c.h * 0.45 * s + 4
    for side in (-1, 1):  # legs
        c.rect(base - 0.45 * height, base, cx + side * 0.01 * height, cx + side * 0.1 * height, cls, 0.7)
    c.ellipse(base - 0.62 * height, cx, 0.22 * height, 0.12 * height, cls)
    c.ellipse(base - 0.9 * height, cx, 0.09 * height, 0.08 * height, cls, 1.2)


def _train(c: _Canvas, rng: np.random.Generator, hz: float, x0: float, s: float) -> None:
    tw, th = c.w * rng.uniform(0.35, 0.7), c.h * rng.uniform(0.08, 0.13)
    c.rect(hz - 1, hz + c.h * 0.02, x0, x0 + tw, RAIL)
    c.rect(hz - th, hz, x0, x0 + tw, TRAIN)
    c.rect(hz - 0.8 * th, hz - 0.45 * th, x0 + 2, x0 + tw - 2, TRAIN, 0.5)  # windows


def _car(c: _Canvas, rng: np.random.Generator, base: float, cx: float, s: float) -> None:
    cw = c.w * 0.26 * s + 3
    ch = cw * rng.uniform(0.5, 0.62)
    c.rect(base - 0.62 * ch, base - 0.1 * ch, cx - cw / 2, cx + cw / 2, CAR)
    top, cab = base - ch, 0.36 * cw
    c.polygon([(top, cx - cab), (top, cx + cab), (base - 0.6 * ch, cx + 0.48 * cw),
               (base - 0.6 * ch, cx - 0.48 * cw)], CAR)
    c.rect(top + 0.15 * ch, base - 0.64 * ch, cx - 0.3 * cw, cx + 0.3 * cw, CAR, 0.45)  # windows
    for wx in (cx - 0.32 * cw, cx + 0.32 * cw):
        c.ellipse(base - 0.12 * ch, wx, 0.13 * ch, 0.11 * cw, CAR, 0.3)
    if c.plates:
        c.rect(base - 0.34 * ch, base - 0.24 * ch, cx - 0.09 * cw, cx + 0.09 * cw, GTA5_LICENSE_PLATE, 1.6)


def _boxy(c: _Canvas, rng: np.random.Generator, base: float, cx: float, s: float, cls: int) -> None:
    """A truck (box and cab) or a bus (long, with a window band)."""
    bw = c.w * (0.3 if cls == TRUCK else 0.5) * s + 5
    bh = bw * (rng.uniform(0.8, 1.0) if cls == TRUCK else rng.uniform(0.38, 0.48))
    c.rect(base - bh, base - 0.1 * bh, cx - bw / 2, cx + bw / 2, cls, rng.uniform(0.8, 1.2))
    if cls == TRUCK:
        c.rect(base - 0.5 * bh, base - 0.1 * bh, cx + bw / 2, cx + 0.75 * bw, cls)  # cab
    c.rect(base - 0.85 * bh, base - 0.55 * bh, cx - 0.45 * bw, cx + (0.72 if cls == TRUCK else 0.45) * bw, cls, 0.45)
    for wx in (cx - 0.33 * bw, cx + 0.33 * bw):
        c.ellipse(base - 0.08 * bh, wx, 0.1 * bh, 0.06 * bw, cls, 0.3)


def _two_wheeler(c: _Canvas, rng: np.random.Generator, base: float, cx: float, s: float, cls: int,
                 ridden: bool) -> None:
    size = c.h * 0.3 * s + 3  # wheel base length
    r, thick = size * (0.22 if cls == BIKE else 0.26), 0.7 if cls == BIKE else 1.0
    for wx in (cx - size / 2, cx + size / 2):
        c.ellipse(base - r, wx, r, r * thick, cls, 0.5)
    frame_h = r * (1.2 if cls == BIKE else 1.6)
    c.polygon([(base - r - frame_h, cx - size * 0.3), (base - r - frame_h, cx + size * 0.35),
               (base - r * 0.8, cx + size * 0.45), (base - r * 0.8, cx - size * 0.45)], cls)
    if ridden:
        _person(c, rng, base - r - 0.2 * frame_h, cx, s, RIDER, size * 1.1)


def _pole(c: _Canvas, rng: np.random.Generator, base: float, px: float, s: float) -> None:
    pw, ph = max(1.0, c.w * 0.008 * s), c.h * 0.85 * s + 6
    c.rect(base - ph, base, px - pw / 2, px + pw / 2, POLE)
    if rng.random() < 0.5:  # traffic light: a dark box on an arm
        lw, lh = max(2.0, 2.5 * pw), max(4.0, 6.0 * pw)
        lx = px + rng.choice([-1.0, 1.0]) * 3 * lw
        c.rect(base - ph, base - ph + pw, px, lx, POLE)  # arm
        c.rect(base - ph, base - ph + lh, lx - lw / 2, lx + lw / 2, LIGHT)
    if rng.random() < 0.55:  # traffic sign: a triangle or a disc
        r, sy = max(1.5, 2.5 * pw), base - ph * rng.uniform(0.55, 0.8)
        if rng.random() < 0.5:
            c.polygon([(sy - r, px), (sy + r, px + r), (sy + r, px - r)], SIGN)
        else:
            c.ellipse(sy, px, r, r, SIGN)


class _Street(NamedTuple):
    """Ground geometry in perspective; ``d`` is the depth fraction: 0 at the horizon, 1 at the bottom edge."""

    h: int
    w: int
    hz: float  # horizon row
    vx: float  # vanishing point column
    shift: float  # the road's centre moves by this many columns from horizon to bottom (a bend)
    road: float  # road half-width at the bottom, as a fraction of the width
    walk: float  # sidewalk width at the bottom, as a fraction of the width

    def row(self, d: Any) -> Any:
        return self.hz + d * (self.h - self.hz)

    def at(self, d: Any) -> tuple[Any, Any, Any]:
        """(road centre column, road half-width, road half-width + sidewalk) at depth d."""
        hw = self.w * (0.01 + self.road * d)
        return self.vx + self.shift * d, hw, hw + self.w * (0.01 + self.walk * d)


def _background(c: _Canvas, rng: np.random.Generator, hz: float) -> None:
    h, w = c.h, c.w
    c.rect(0, h, 0, w, SKY)
    x = -w * rng.uniform(0, 0.1)  # a row of buildings along the horizon; gaps let the sky through
    while x < w:
        bw = w * rng.uniform(0.07, 0.22)
        if rng.random() > 0.12:
            c.rect(hz - h * rng.uniform(0.15, 0.45), hz + 1, x, x + bw, BUILDING, rng.uniform(0.75, 1.25))
        x += bw
    for _ in range(rng.poisson(0.7)):
        x0 = w * rng.uniform(-0.1, 0.9)
        c.rect(hz - h * rng.uniform(0.04, 0.1), hz + 1, x0, x0 + w * rng.uniform(0.08, 0.25), WALL)
    for _ in range(rng.integers(2, 8)):  # trees: trunk and crown are both vegetation in Cityscapes
        tx, ry = w * rng.uniform(0, 1), h * rng.uniform(0.07, 0.17)
        cy = hz - ry * rng.uniform(0.4, 1.2)
        c.rect(cy, hz + 2, tx - max(1.0, 0.1 * ry), tx + max(1.0, 0.1 * ry), VEG, 0.6)
        c.ellipse(cy, tx, ry, ry * rng.uniform(0.9, 1.6), VEG, rng.uniform(0.8, 1.2))


def _ground(c: _Canvas, rng: np.random.Generator, st: _Street) -> None:
    """Road around the centre line, sidewalks, then verges (terrain, hedge or more pavement); markings, fence."""
    h, w, hz, y0 = c.h, c.w, st.hz, int(np.ceil(st.hz))
    centre, hw, sw = st.at((np.arange(y0, h)[:, None] + 0.5 - hz) / (h - hz))  # at each row's depth
    dx = np.arange(w)[None, :] + 0.5 - centre
    road, walk_l, walk_r = c.new(ROAD), c.new(SIDEWALK), c.new(SIDEWALK, 0.9)
    outer_l, outer_r = (c.new((TERRAIN, VEG, SIDEWALK)[rng.choice(3, p=[0.4, 0.2, 0.4])], t) for t in (1.0, 1.1))
    inst = np.where(np.abs(dx) < hw, road, np.where(dx < 0, np.where(dx > -sw, walk_l, outer_l),
                                                     np.where(dx < sw, walk_r, outer_r)))
    c.inst[y0:], c.lab[y0:] = inst, np.asarray(c.inst_cls, np.uint8)[inst]
    if rng.random() < 0.6:  # dashed centre line: road class, painted lighter
        for k in range(4):
            da, db = (0.15 + 0.22 * k) ** 1.3, (0.25 + 0.22 * k) ** 1.3
            (ca, _, _), (cb, _, _), mw = st.at(da), st.at(db), max(0.6, w * 0.006 * (da + db))
            c.polygon([(st.row(da), ca - mw), (st.row(da), ca + mw), (st.row(db), cb + 2 * mw),
                       (st.row(db), cb - 2 * mw)], ROAD, 1.9)
    if rng.random() < 0.25:  # a parking bay (ignored in training)
        py = st.row(rng.uniform(0.3, 0.7))
        c.rect(py, py + h * 0.06, 0, w * rng.uniform(0.05, 0.15), PARKING)
    if rng.random() < 0.55:  # a fence in perspective along one verge
        side = rng.choice([-1.0, 1.0])
        ya, yb = st.row(0.1), st.row(rng.uniform(0.25, 0.5))
        xa, xb = st.vx + side * w * rng.uniform(0.08, 0.2), 0.0 if side < 0 else float(w)
        c.polygon([(ya - h * 0.03, xa), (yb - h * rng.uniform(0.08, 0.14), xb), (yb, xb), (ya, xa)], FENCE)


def _objects(c: _Canvas, rng: np.random.Generator, st: _Street, force_train: bool) -> None:
    """Vehicles, people, poles (and a rare train), drawn far to near so that nearer ones occlude."""
    side = lambda: rng.choice([-1.0, 1.0])  # noqa: E731
    todo: list[tuple[float, Callable[[], object]]] = []

    def add(lo: float, hi: float, place: Callable[[float, float, float], float], draw: Callable[..., object],
            *args: object) -> None:
        d = rng.uniform(lo, hi)  # depth; also the object's scale
        todo.append((st.row(d), partial(draw, c, rng, st.row(d), place(*st.at(d)), d, *args)))

    for _ in range(rng.poisson(2.3)):
        add(0.08, 1.0, lambda cc, hw, sw: cc + hw * rng.uniform(-0.8, 0.8), _car)
    if rng.random() < 0.3:
        add(0.1, 0.7, lambda cc, hw, sw: cc + hw * rng.uniform(-0.7, 0.5), _boxy, TRUCK)
    if rng.random() < 0.2:
        add(0.1, 0.6, lambda cc, hw, sw: cc + hw * rng.uniform(-0.6, 0.6), _boxy, BUS)
    for _ in range(rng.poisson(1.6)):  # pedestrians on the sidewalks
        add(0.1, 1.0, lambda cc, hw, sw: cc + side() * rng.uniform(hw, sw + 0.3 * (sw - hw)), _person)
    for cls in (MOTO, BIKE):
        if rng.random() < 0.3:  # ridden, on the road near its edge
            add(0.15, 0.9, lambda cc, hw, sw: cc + side() * hw * rng.uniform(0.6, 0.95), _two_wheeler, cls, True)
    if rng.random() < 0.15:  # a parked bicycle on the sidewalk
        add(0.2, 0.9, lambda cc, hw, sw: cc + side() * (hw + sw) / 2, _two_wheeler, BIKE, False)
    for _ in range(rng.integers(1, 4)):
        add(0.05, 0.8, lambda cc, hw, sw: cc + side() * rng.uniform(hw + 0.2 * (sw - hw), sw), _pole)
    if force_train or rng.random() < 0.05:  # a train on a track across the far background
        add(0.0, 0.0, lambda cc, hw, sw: c.w * rng.uniform(-0.2, 0.5), _train)
    for _, draw in sorted(todo, key=lambda t: t[0]):
        draw()


def draw_scene(rng: np.random.Generator, h: int, w: int, synthetic: bool, force_train: bool = False,
               plates: bool | None = None) -> _Canvas:
    """Draw one scene's label map (Cityscapes label ids) and instance map; licence plates (default: synthetic)."""
    c = _Canvas(h, w, plates=synthetic if plates is None else plates)
    st = _Street(h, w, hz=h * rng.uniform(0.38, 0.5), vx=w * rng.uniform(0.35, 0.65),
                 shift=w * rng.uniform(-0.2, 0.2), road=rng.uniform(0.55, 0.9), walk=rng.uniform(0.04, 0.14))
    _background(c, rng, st.hz)
    _ground(c, rng, st)
    _objects(c, rng, st, force_train)
    if not synthetic:  # Cityscapes frames show the ego car's bonnet and some unlabelled ground at the bottom
        if rng.random() < 0.7:
            c.ellipse(h + h * 0.03, w * 0.5, h * rng.uniform(0.07, 0.12), w * 0.6, EGO)
        if rng.random() < 0.3:
            c.rect(h - h * 0.03, h, 0, w * rng.uniform(0.1, 0.3), GROUND)
    return c


# Deliberately different palettes (id: (synthetic, real)): the domain gap is partly a colour shift.
_COLOURS = {
    UNLABELED: ((20, 20, 20), (10, 10, 10)), EGO: ((30, 30, 30), (35, 38, 45)), GROUND: ((120, 100, 80), (95, 90, 85)),
    ROAD: ((120, 116, 112), (78, 76, 82)), SIDEWALK: ((190, 170, 160), (135, 128, 132)),
    PARKING: ((150, 130, 140), (110, 100, 105)), RAIL: ((110, 90, 70), (85, 80, 75)),
    BUILDING: ((170, 130, 100), (115, 108, 100)), WALL: ((200, 190, 160), (145, 140, 130)),
    FENCE: ((150, 110, 60), (120, 110, 95)), POLE: ((80, 80, 90), (95, 100, 105)), LIGHT: ((40, 60, 40), (30, 35, 35)),
    SIGN: ((240, 200, 30), (60, 90, 170)), VEG: ((60, 160, 50), (55, 85, 40)),
    TERRAIN: ((170, 190, 90), (115, 125, 75)), SKY: ((110, 170, 245), (180, 195, 210)),
    PERSON: ((200, 60, 80), (90, 60, 70)), RIDER: ((230, 90, 40), (110, 70, 60)), CAR: ((40, 60, 200), (70, 75, 95)),
    BUS: ((240, 160, 30), (160, 120, 50)), TRUCK: ((200, 200, 210), (150, 150, 155)),
    TRAIN: ((180, 40, 40), (120, 60, 55)), MOTO: ((30, 30, 180), (50, 50, 90)), BIKE: ((150, 30, 60), (90, 40, 50)),
    GTA5_LICENSE_PLATE: ((225, 225, 210), (200, 200, 190)),
}
_PALETTES = np.full((2, 256, 3), 128.0, np.float32)  # [synthetic, real]
_PALETTES[:, list(_COLOURS)] = np.swapaxes(list(_COLOURS.values()), 0, 1)
# Vehicles and people take a random paint/clothing colour per instance, mixed with the class colour.
_RANDOM_PAINT = np.isin(np.arange(256), [PERSON, RIDER, CAR, TRUCK, BUS, MOTO, BIKE])
_TEXTURE = np.full(256, 0.06, np.float32)  # real-domain texture strength per class (relative brightness modulation)
_TEXTURE[[VEG, TERRAIN]], _TEXTURE[[ROAD, SIDEWALK, BUILDING, WALL]], _TEXTURE[SKY] = 0.3, 0.12, 0.03


def _instance_colours(c: _Canvas, rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    cls = np.asarray(c.inst_cls)
    base = palette[cls].copy()
    paint = rng.uniform(20, 235, (len(cls), 3))
    base = np.where(_RANDOM_PAINT[cls][:, None], 0.45 * base + 0.55 * paint, base)
    base *= np.asarray(c.inst_tint)[:, None] * rng.uniform(0.88, 1.12, (len(cls), 1))
    return (base + rng.normal(0, 7, base.shape)).astype(np.float32)


def render(c: _Canvas, rng: np.random.Generator, synthetic: bool) -> np.ndarray:
    """The RGB image (H, W, 3) uint8 of a scene."""
    if synthetic:  # flat colours, sharp edges
        img = _instance_colours(c, rng, _PALETTES[0])[c.inst] * rng.uniform(0.9, 1.1)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)
    h, w = c.h, c.w
    img = _instance_colours(c, rng, _PALETTES[1])[c.inst]
    texture = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.8) * 2.0
    modulation = 1.0 + _TEXTURE[c.lab] * texture
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    modulation[(c.lab == BUILDING) & (yy % 6 < 2) & (xx % 5 < 2)] *= 0.7  # windows
    light = rng.uniform(0.75, 1.15) * (1 + rng.uniform(-0.3, 0.3) * (xx / w - 0.5) + rng.uniform(-0.2, 0.2) * (yy / h))
    img = img * (modulation * light)[..., None]
    img = gaussian_filter(img, (0.6, 0.6, 0)) + rng.normal(0, 3.0, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# Drawn Cityscapes id -> the SYNTHIA id of its class name; void (0) where SYNTHIA has none or never uses it.
_SYNTHIA_ID = {n: k for k, n in SYNTHIA_IDS.items() if n not in ("terrain", "truck", "train")}
_TO_SYNTHIA = np.array([_SYNTHIA_ID.get(CITYSCAPES_IDS.get(k, ""), 0) for k in range(256)], np.uint16)


def _save(array: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == np.uint16:  # 16-bit RGB (SYNTHIA): Pillow cannot write it; OpenCV writes B, G, R
        import cv2
        if not cv2.imwrite(str(path), array[..., ::-1].copy(), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise DatasetError(f"cannot write {path}")
        return
    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)  # turns the 'L' image into mode 'P' with the indices unchanged
    im.save(path, compress_level=1)  # fast; the files are small anyway


def generate(root: Path, cfg: ToyCityConfig) -> None:
    """Write each layout's set under ``root``: cityscapes/, gta5/ and (``cfg.n_synthia > 0``) synthia/."""
    root = Path(root)
    sets = (("train", cfg.n_real_train, TRAIN_CITIES), ("val", cfg.n_real_val, VAL_CITIES), ("", cfg.n_synthetic, ()),
            ("", cfg.n_synthia, ()))
    for stream, (split, n, cities) in enumerate(sets):
        for i in range(n):
            rng = np.random.default_rng([cfg.seed, stream, i])  # one stream per image: order-independent
            c = draw_scene(rng, cfg.height, cfg.width, not split, force_train=i % 23 == 11, plates=stream == 2)
            image, name = render(c, rng, not split), f"{i + 1:05d}.png"
            if split:
                city = cities[i % len(cities)]
                stem = f"{city}_{i // len(cities):06d}_{19:06d}"  # Cityscapes frames are numbered ..._000019
                _save(image, root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                _save(c.lab, root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            elif stream == 2:
                _save(image, root / "gta5" / "images" / name)
                _save(c.lab, root / "gta5" / "labels" / name, GTA5_PALETTE)
            else:  # SYNTHIA: class id in R, instance id of the dynamic (randomly painted) objects in G, B = 0
                _save(image, root / "synthia" / "RGB" / name)
                ids, inst = _TO_SYNTHIA[c.lab], np.where(_RANDOM_PAINT[c.lab], c.inst, 0).astype(np.uint16)
                _save(np.stack([ids, inst, np.zeros_like(ids)], -1), root / "synthia" / "GT" / "LABELS" / name)


def toycity_dir(cache_dir: str | Path, cfg: ToyCityConfig) -> Path:
    """``<cache_dir>/toycity-<version>-<hash of the config fields>``."""
    fields = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    digest = hashlib.sha1(f"{GENERATOR_VERSION}:{fields}".encode()).hexdigest()[:10]
    return Path(cache_dir) / f"toycity-{GENERATOR_VERSION}-{digest}"


def _publish(target: Path, cfg: ToyCityConfig) -> None:
    """Generate into a temporary sibling and rename it into place; if another process won, keep theirs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        generate(tmp, cfg)
        (tmp / "meta.json").write_text(json.dumps({"generator": GENERATOR_VERSION, **dataclasses.asdict(cfg)}))
        (tmp / MARKER).write_text("ok\n")  # written last: a directory without it is never used
        try:
            os.rename(tmp, target)  # atomic; fails when target exists and is not empty
        except OSError as e:
            if not (target / MARKER).exists():  # not a copy of ours: leave it to the user rather than guess
                raise DatasetError(f"{target} exists but is incomplete (no {MARKER} file); delete it to regenerate "
                                   "the ToyCity data") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when another process won the rename


def ensure_toycity(cache_dir: str | Path, cfg: ToyCityConfig) -> dict[str, Path]:
    """Generate the data once per config (safe across concurrent processes); return the root of each layout."""
    target = toycity_dir(cache_dir, cfg)
    if not (target / MARKER).exists():
        _publish(target, cfg)
    layouts = ("cityscapes", "gta5", "synthia") if cfg.n_synthia else ("cityscapes", "gta5")
    return {layout: target / layout for layout in layouts}
