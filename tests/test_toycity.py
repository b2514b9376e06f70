"""ToyCity: determinism, file layouts, class balance, domain gap, the SYNTHIA copy, and the atomic once-only
cache."""

import dataclasses
import multiprocessing
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from scipy.ndimage import binary_dilation

from segsweep.checks import ConfigError
from segsweep.config import SourceConfig, ToyCityConfig
from segsweep.data import toycity
from segsweep.data.labels import label_set
from segsweep.data.paired import DatasetError
from segsweep.data.sources import open_source
from segsweep.data.toycity import ensure_toycity, generate

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

TINY = ToyCityConfig(seed=1, height=32, width=64, n_real_train=4, n_real_val=2, n_synthetic=3)
# Cityscapes ids -> trainIds for the classes below, written out by hand (independent of labels.py).
TRAIN_ID_OF = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
               27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CS19 = label_set(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "labels" / "cityscapes19.yaml"))


def _open(name: str, layout: str, root: Path, split: str = "train"):
    return open_source(name, SourceConfig(layout=layout, root=str(root)), root, split, CS19, None, False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _class_pixels(label_files: list[Path]) -> np.ndarray:
    counts = np.zeros(256, np.int64)
    for f in label_files:
        counts += np.bincount(np.asarray(Image.open(f)).ravel(), minlength=256)
    return counts  # indexed by label id


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toycity")
    generate(root, ToyCityConfig(seed=3, height=64, width=128, n_real_train=60, n_real_val=4, n_synthetic=60))
    return root


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(tmp_path / "a", TINY)
    generate(tmp_path / "b", TINY)
    generate(tmp_path / "c", ToyCityConfig(seed=2, height=32, width=64, n_real_train=4, n_real_val=2, n_synthetic=3))
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) >= len(a) - 2  # (nearly) every file differs with another seed


def test_file_layouts(tmp_path):
    generate(tmp_path, TINY)
    cs = tmp_path / "cityscapes"
    for split, n in (("train", 4), ("val", 2)):
        images = sorted((cs / "leftImg8bit" / split).glob("*/*"))
        assert len(images) == n
        for img in images:
            city = img.parent.name
            m = re.fullmatch(rf"({city}_\d{{6}}_\d{{6}})_leftImg8bit\.png", img.name)
            assert m, img.name
            label = cs / "gtFine" / split / city / f"{m.group(1)}_gtFine_labelIds.png"
            with Image.open(img) as im, Image.open(label) as lb:
                assert im.mode == "RGB" and im.size == (64, 32)
                assert lb.mode == "L" and lb.size == (64, 32)
        assert len(list((cs / "gtFine" / split).glob("*/*"))) == n
    gta = tmp_path / "gta5"
    assert [p.name for p in sorted((gta / "images").iterdir())] == ["00001.png", "00002.png", "00003.png"]
    assert [p.name for p in sorted((gta / "labels").iterdir())] == ["00001.png", "00002.png", "00003.png"]
    with Image.open(gta / "labels" / "00001.png") as lb:
        assert lb.mode == "P"
        pal = lb.getpalette()
        assert pal[3 * 7: 3 * 7 + 3] == [128, 64, 128]  # index 7 (road) has the Cityscapes road colour
        assert pal[3 * 23: 3 * 23 + 3] == [70, 130, 180]  # index 23 (sky)
        assert {7, 23} <= set(np.unique(np.asarray(lb)).tolist())  # indices are label ids
        assert len(pal) == 3 * 35 and pal[-3:] == [0, 0, 142]  # as GTA5 ships: 35 entries, 34 = licence plate


def test_synthetic_cars_carry_licence_plates(medium):
    """Index 34 inside cars of the GTA5-layout labels (as in about a quarter of the real files), never in the
    Cityscapes-layout ones; loaded, those pixels are ignored (255)."""
    from segsweep.data.gta5 import GTA5Segmentation

    gta = medium / "gta5" / "labels"
    with_plate = 0
    for path in sorted(gta.iterdir()):
        ids = np.asarray(Image.open(path))
        plate = ids == 34
        if plate.any():
            with_plate += 1
            ring = binary_dilation(plate) & ~plate
            assert (ids[ring] == 26).any(), f"{path}: a plate sits on a car"  # id 26: car
    assert with_plate >= len(list(gta.iterdir())) // 4
    for path in (medium / "cityscapes" / "gtFine").glob("*/*/*.png"):
        assert np.asarray(Image.open(path)).max() < 34
    ds = _open("synthetic", "gta5", medium / "gta5")
    assert isinstance(ds, GTA5Segmentation)
    k = next(i for i, p in enumerate(ds.label_paths) if (np.asarray(Image.open(p)) == 34).any())
    raw = np.asarray(Image.open(ds.label_paths[k]))
    assert (ds.load_label(k)[raw == 34] == 255).all()


def test_all_classes_present_and_imbalanced(medium):
    for pattern in ("cityscapes/gtFine/train/*/*.png", "gta5/labels/*.png"):
        counts = _class_pixels(sorted(medium.glob(pattern)))
        share = {tid: counts[lid] / counts.sum() for lid, tid in TRAIN_ID_OF.items()}
        assert all(s > 0 for s in share.values()), [t for t, s in share.items() if s == 0]
        rare = [t for t, s in share.items() if s < 0.005]
        assert len(rare) >= 4, share
        assert share[0] + share[2] + share[8] + share[10] > 0.5  # road, building, vegetation, sky dominate
        assert share[0] > 0.15
    real = _class_pixels(sorted(medium.glob("cityscapes/gtFine/train/*/*.png")))
    assert real[1] > 0  # ego vehicle: ignored pixels exist in the real labels


def _domain_pixels(root: Path, real: bool, label_id: int) -> tuple[np.ndarray, list[np.ndarray]]:
    if real:
        pairs = [(p, Path(str(p).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit", "_gtFine_labelIds")))
                 for p in sorted((root / "cityscapes" / "leftImg8bit" / "train").glob("*/*.png"))]
    else:
        pairs = [(p, root / "gta5" / "labels" / p.name) for p in sorted((root / "gta5" / "images").glob("*.png"))]
    images = [np.asarray(Image.open(i), np.float64) for i, _ in pairs]
    masks = [np.asarray(Image.open(lb)) == label_id for _, lb in pairs]
    pixels = np.concatenate([im[m] for im, m in zip(images, masks, strict=True)])
    return pixels, images


def test_domain_gap(medium):
    real_road, real_images = _domain_pixels(medium, True, 7)
    syn_road, syn_images = _domain_pixels(medium, False, 7)
    assert np.linalg.norm(real_road.mean(0) - syn_road.mean(0)) > 25  # a colour shift
    # Synthetic images are flat: most horizontally adjacent pixels are identical; real ones are noisy and textured.
    flat_syn = np.mean([(np.abs(np.diff(im, axis=1)).sum(-1) == 0).mean() for im in syn_images])
    flat_real = np.mean([(np.abs(np.diff(im, axis=1)).sum(-1) == 0).mean() for im in real_images])
    assert flat_syn > 0.6 and flat_real < 0.1
    # Colour is informative but not a perfect classifier: road pixels vary within a domain.
    assert real_road.std(0).mean() > 5 and syn_road.std(0).mean() > 5


# Cityscapes id -> SYNTHIA-RAND-CITYSCAPES id of the same class (from SYNTHIA's README, written out by hand) for
# every id a synthetic ToyCity scene holds; parking (9), rail track (10) have no SYNTHIA id and terrain (22),
# truck (27), train (31) never occur in SYNTHIA's files: void (0).
SYNTHIA_OF = {0: 0, 7: 3, 8: 4, 9: 0, 10: 0, 11: 2, 12: 21, 13: 5, 17: 7, 19: 15, 20: 9, 21: 6, 22: 0, 23: 1, 24: 10,
              25: 17, 26: 8, 27: 0, 28: 19, 31: 0, 32: 12, 33: 11}
DYNAMIC = [24, 25, 26, 27, 28, 32, 33]  # person, rider, car, truck, bus, motorcycle, bicycle: instance ids in G
WITH_SYNTHIA = dataclasses.replace(TINY, n_synthia=3)


def test_n_synthia_is_checked():
    assert ToyCityConfig().n_synthia == 0
    with pytest.raises(ConfigError, match=re.escape("data.toycity.n_synthia")):
        ToyCityConfig(n_synthia=-1)


def test_synthia_copy_leaves_the_other_files_unchanged(tmp_path):
    roots = ensure_toycity(tmp_path / "cache", WITH_SYNTHIA)
    target = roots["synthia"].parent
    assert roots == {k: target / k for k in ("cityscapes", "gta5", "synthia")}
    assert target != toycity.toycity_dir(tmp_path / "cache", TINY)  # another config, another directory
    published = {k: v for k, v in _files(target).items() if k not in ("COMPLETE", "meta.json")}
    assert sorted(k for k in published if k.startswith("synthia/")) == [
        f"synthia/{d}/{i:05d}.png" for d in ("GT/LABELS", "RGB") for i in (1, 2, 3)]
    generate(tmp_path / "plain", TINY)  # the same seed without a SYNTHIA copy
    assert {k: v for k, v in published.items() if not k.startswith("synthia/")} == _files(tmp_path / "plain")


@pytest.fixture(scope="module")
def synthia(tmp_path_factory) -> tuple[Path, ToyCityConfig]:
    cfg = ToyCityConfig(seed=3, height=64, width=128, n_real_train=1, n_real_val=1, n_synthetic=1, n_synthia=10)
    root = tmp_path_factory.mktemp("synthia")
    generate(root, cfg)
    return root / "synthia", cfg


def _drawn(cfg: ToyCityConfig, i: int):
    """SYNTHIA image i's scene as the generator draws it (its own random stream, 3), and the rest of the stream."""
    rng = np.random.default_rng([cfg.seed, 3, i])
    return toycity.draw_scene(rng, cfg.height, cfg.width, True, force_train=i % 23 == 11, plates=False), rng


def test_synthia_labels_are_16_bit_synthia_ids(synthia):
    root, cfg = synthia
    terrain = dynamic = 0
    for i in range(cfg.n_synthia):
        name = f"{i + 1:05d}.png"
        scene, rng = _drawn(cfg, i)
        with Image.open(root / "RGB" / name) as im:
            assert im.mode == "RGB" and im.size == (cfg.width, cfg.height)
            assert np.array_equal(np.asarray(im), toycity.render(scene, rng, True))  # _drawn is that file's scene
        raw = cv2.imread(str(root / "GT" / "LABELS" / name), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (cfg.height, cfg.width, 3)
        r, g, b = raw[..., 2], raw[..., 1], raw[..., 0]  # OpenCV orders B, G, R
        expected = np.vectorize(SYNTHIA_OF.__getitem__)(scene.lab)  # KeyError: an id the table above lacks
        assert np.array_equal(r, expected), name
        assert not np.isin(r, [16, 18, 20]).any()  # terrain, truck, train: never in SYNTHIA files
        moving = np.isin(scene.lab, DYNAMIC)
        assert (g[~moving] == 0).all() and (g[moving] > 0).all() and (b == 0).all()
        terrain, dynamic = terrain + int((scene.lab == 22).sum()), dynamic + len(np.unique(g[moving]))
    assert terrain > 0 and dynamic > 1  # the checks above saw void terrain and several instances


def test_synthia_copy_loads_as_train_ids(synthia):
    from segsweep.data.synthia import SynthiaSegmentation

    root, cfg = synthia
    ds = _open("synthia", "synthia", root)
    assert isinstance(ds, SynthiaSegmentation) and len(ds) == cfg.n_synthia
    train_id = {k: v for k, v in TRAIN_ID_OF.items() if k not in (22, 27, 31)}  # void in SYNTHIA: ignored
    for i in (0, 1):
        expected = np.vectorize(lambda k: train_id.get(k, 255))(_drawn(cfg, i)[0].lab)
        assert ds.load_label(i).tolist() == expected.tolist()
        assert ds[i]["label"].tolist() == expected.tolist()


def test_ensure_generates_once_and_reuses(tmp_path, monkeypatch):
    roots = ensure_toycity(tmp_path, TINY)
    assert sorted(roots) == ["cityscapes", "gta5"]  # no SYNTHIA copy unless n_synthia > 0
    cs, gta = roots["cityscapes"], roots["gta5"]
    target = cs.parent
    assert target.parent == tmp_path and target.name.startswith("toycity-v2-")
    assert (target / "COMPLETE").is_file() and (target / "meta.json").is_file()
    assert gta == target / "gta5" and (gta / "images" / "00003.png").is_file()
    stamp = (target / "COMPLETE").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(toycity, "generate", fail)
    assert ensure_toycity(str(tmp_path), TINY) == {"cityscapes": cs, "gta5": gta}
    assert (target / "COMPLETE").stat().st_mtime_ns == stamp
    other = ToyCityConfig(seed=1, height=32, width=64, n_real_train=4, n_real_val=2, n_synthetic=4)
    assert toycity.toycity_dir(tmp_path, other) != target  # another config gets another directory


def test_losing_the_race_keeps_the_winner(tmp_path):
    target = ensure_toycity(tmp_path, TINY)["cityscapes"].parent
    stamp = (target / "COMPLETE").stat()
    toycity._publish(target, TINY)  # a process that checked before the winner renamed its copy into place
    after = (target / "COMPLETE").stat()
    assert (after.st_ino, after.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # its temporary copy is gone


def test_incomplete_directory_is_never_used(tmp_path):
    target = toycity.toycity_dir(tmp_path, TINY)
    (target / "cityscapes").mkdir(parents=True)  # e.g. a half-deleted copy: no COMPLETE marker
    with pytest.raises(DatasetError, match=re.escape(str(target))):
        ensure_toycity(tmp_path, TINY)
    assert not (target / "COMPLETE").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def _racer(cache: str, barrier) -> None:
    barrier.wait()
    ensure_toycity(cache, TINY)


def test_concurrent_processes(tmp_path):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")  # cheap; the children only run numpy/PIL code
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_racer, args=(str(cache), barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("toycity-v2-")  # no temporary copies left over
    assert (entries[0] / "COMPLETE").is_file()
    generate(tmp_path / "fresh", TINY)
    published = {k: v for k, v in _files(entries[0]).items() if k not in ("COMPLETE", "meta.json")}
    assert published == _files(tmp_path / "fresh")
