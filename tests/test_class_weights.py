"""Class weights on small hand-computed counts, label counting, the table and the disk cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from segsweep.class_weights import (
    METHODS,
    LabelCounts,
    class_weights_cached,
    compute_class_weights,
    count_labels,
    format_table,
    label_iter,
)

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

# 600 / 300 / 100 pixels of classes 0, 1, 2 in 3 images; class 3 never occurs
COUNTS = LabelCounts(pixels=torch.tensor([600, 300, 100, 0]), images=torch.tensor([3, 2, 1, 0]),
                     pixels_where_present=torch.tensor([1000, 700, 300, 0]), n_images=3)


def normalised(raw):
    """Mean 1 over the listed (present) classes, then 0 appended for the absent class 3."""
    m = sum(raw) / len(raw)
    return [r / m for r in raw] + [0.0]


def close(weights, expected, tol=1e-6):
    assert weights.dtype == torch.float32
    np.testing.assert_allclose(weights.numpy(), expected, rtol=tol, atol=tol)


def test_none_is_ones():
    close(compute_class_weights(COUNTS, "none"), [1.0, 1.0, 1.0, 1.0])


def test_inverse_freq_by_hand():
    # f = 0.6, 0.3, 0.1 -> 1/f = 5/3, 10/3, 10 (mean 5) -> 1/3, 2/3, 2
    close(compute_class_weights(COUNTS, "inverse_freq"), [1 / 3, 2 / 3, 2.0, 0.0])


def test_sqrt_inv_freq_by_hand():
    close(compute_class_weights(COUNTS, "sqrt_inv_freq"), normalised([1 / math.sqrt(f) for f in (0.6, 0.3, 0.1)]))


def test_effective_num_with_image_counts_by_hand():
    w = compute_class_weights(COUNTS, "effective_num", beta=0.99, count="images")
    close(w, normalised([0.01 / (1 - 0.99 ** 3), 0.01 / (1 - 0.99 ** 2), 1.0]))


def test_enet_by_hand():
    expected = normalised([1 / math.log(1.02 + f) for f in (0.6, 0.3, 0.1)])
    close(compute_class_weights(COUNTS, "enet", enet_c=1.02), expected)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_every_method_has_mean_one_over_present_classes_and_zero_for_absent(method):
    w = compute_class_weights(COUNTS, method)
    assert w[3].item() == 0.0
    assert w[:3].mean().item() == pytest.approx(1.0, rel=1e-6)
    assert (w[:3] > 0).all()


def test_median_freq_uses_the_pixels_of_the_images_where_the_class_is_present():
    # 4 images of 10x10: class 0 covers 50 px of each; class 1 covers 40 px of image 0 only; class 2 the rest
    labels = []
    for k in range(4):
        lab = np.zeros((10, 10), np.uint8)
        lab[5:] = 2
        if k == 0:
            lab[5:9] = 1
        labels.append(lab)
    counts = count_labels(labels, num_classes=4)
    assert counts.pixels.tolist() == [200, 40, 160, 0]
    assert counts.images.tolist() == [4, 1, 4, 0]
    assert counts.pixels_where_present.tolist() == [400, 100, 400, 0]
    # freq = 200/400, 40/100, 160/400 = 0.5, 0.4, 0.4; median 0.4 -> 0.8, 1, 1 (mean 14/15)
    close(compute_class_weights(counts, "median_freq"), [0.8 * 15 / 14, 15 / 14, 15 / 14, 0.0])
    # global frequencies 0.5, 0.1, 0.4 give a very different (inverse-frequency) answer
    close(compute_class_weights(counts, "inverse_freq"), normalised([2.0, 10.0, 2.5]))


def test_effective_num_collapses_to_uniform_with_pixel_counts_but_not_with_image_counts():
    counts = LabelCounts(pixels=torch.tensor([5_000_000, 2_000_000, 300_000, 100_000]),
                         images=torch.tensor([100, 90, 30, 8]),
                         pixels_where_present=torch.tensor([10**7, 9 * 10**6, 3 * 10**6, 8 * 10**5]), n_images=100)
    for beta in (0.99, 0.999, 0.9999):
        by_pixels = compute_class_weights(counts, "effective_num", beta=beta, count="pixels")
        np.testing.assert_allclose(by_pixels.numpy(), 1.0, atol=1e-3)  # beta^n ~ 0 for n >= 1e5
        by_images = compute_class_weights(counts, "effective_num", beta=beta, count="images")
        assert by_images.max() / by_images.min() > 2.5  # the rare classes really get more weight
        assert by_images.argmax().item() == 3


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="median_freq"):
        compute_class_weights(COUNTS, "focal")


def test_no_labelled_pixel_raises():
    empty = LabelCounts(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64),
                        torch.zeros(3, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="no valid pixel"):
        compute_class_weights(empty, "inverse_freq")


def test_count_labels_on_tiny_arrays():
    a = np.array([[0, 0, 1], [255, 2, 2]], np.uint8)
    b = torch.tensor([[255, 255], [1, 1]])
    c = np.full((2, 2), 255, np.uint8)  # an image with no valid pixel still counts as an image
    counts = count_labels([a, b, c], num_classes=4)
    assert counts.pixels.tolist() == [2, 3, 2, 0]
    assert counts.images.tolist() == [1, 2, 1, 0]
    assert counts.pixels_where_present.tolist() == [5, 7, 5, 0]
    assert counts.n_images == 3
    assert all(v.dtype == torch.int64 for v in (counts.pixels, counts.images, counts.pixels_where_present))


@pytest.mark.parametrize("bad", [7, 19, 254])
def test_count_labels_rejects_values_outside_the_classes(bad):
    with pytest.raises(ValueError, match=str(bad)):
        count_labels([np.array([[0, bad], [255, 1]], np.uint8)], num_classes=19 if bad != 7 else 5)


def test_label_counts_dict_roundtrip_and_sum():
    d = json.loads(json.dumps(COUNTS.to_dict()))
    back = LabelCounts.from_dict(d)
    assert back.pixels.tolist() == [600, 300, 100, 0] and back.n_images == 3
    both = COUNTS + back
    assert both.pixels.tolist() == [1200, 600, 200, 0]
    assert both.images.tolist() == [6, 4, 2, 0]
    assert both.pixels_where_present.tolist() == [2000, 1400, 600, 0]
    assert both.n_images == 6


def test_format_table():
    text = format_table(COUNTS, compute_class_weights(COUNTS, "inverse_freq"), ["road", "sidewalk", "car", "train"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "pixels", "freq", "%", "images", "weight"]
    assert lines[1].split() == ["road", "600", "60.000", "3", "0.3333"]
    assert lines[4].split() == ["train", "0", "0.000", "0", "0.0000"]
    assert len({len(line) for line in lines[:5]}) == 1  # fixed width


# ---------------------------------------------------------------- cache

def test_cache_second_call_does_not_count(tmp_path):
    calls = []

    def counter():
        calls.append(1)
        return COUNTS

    identity = {"datasets": ["real:abc123", "synthetic:def456"], "source": "both", "fraction": 1.0, "seed": 0}
    w1, c1 = class_weights_cached(tmp_path, identity, "inverse_freq", {}, counter)
    w2, c2 = class_weights_cached(tmp_path, dict(reversed(identity.items())), "inverse_freq", {}, counter)
    assert len(calls) == 1
    torch.testing.assert_close(w1, w2)
    assert c2.pixels.tolist() == c1.pixels.tolist()
    files = list((tmp_path / "class_weights").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    record = json.loads(files[0].read_text())
    assert record["identity"] == identity and record["method"] == "inverse_freq"
    assert record["counts"]["pixels"] == [600, 300, 100, 0]
    assert record["weights"] == pytest.approx([1 / 3, 2 / 3, 2.0, 0.0])


def test_cache_key_depends_on_method_params_and_identity(tmp_path):
    ident = {"data": "x"}
    class_weights_cached(tmp_path, ident, "effective_num", {"beta": 0.99}, lambda: COUNTS)
    class_weights_cached(tmp_path, ident, "effective_num", {"beta": 0.999}, lambda: COUNTS)
    class_weights_cached(tmp_path, ident, "inverse_freq", {}, lambda: COUNTS)
    class_weights_cached(tmp_path, {"data": "y"}, "inverse_freq", {}, lambda: COUNTS)
    assert len(list((tmp_path / "class_weights").glob("*.json"))) == 4


@pytest.mark.parametrize("garbage", ["{not json", "", '{"method": "inverse_freq"}', '{"weights": [1, 2]}'])
def test_corrupt_cache_file_is_recomputed_and_rewritten(tmp_path, garbage):
    class_weights_cached(tmp_path, {"d": 1}, "inverse_freq", {}, lambda: COUNTS)
    (path,) = (tmp_path / "class_weights").glob("*.json")
    path.write_text(garbage)
    calls = []
    w, _ = class_weights_cached(tmp_path, {"d": 1}, "inverse_freq", {}, lambda: calls.append(1) or COUNTS)
    assert calls == [1]
    close(w, [1 / 3, 2 / 3, 2.0, 0.0])
    assert json.loads(path.read_text())["counts"]["pixels"] == [600, 300, 100, 0]
    assert not list(tmp_path.rglob("*.tmp*"))


# ---------------------------------------------------------------- label_iter

class FakeDataset:
    def __init__(self, n, tag):
        self.n, self.tag, self.loaded = n, tag, []

    def __len__(self):
        return self.n

    def load_label(self, i):
        self.loaded.append(i)
        return np.full((2, 2), self.tag, np.uint8)


def test_label_iter_takes_a_seeded_fraction_of_each_dataset():
    a, b = FakeDataset(10, 0), FakeDataset(3, 1)
    labels = list(label_iter([a, b], fraction=0.5, seed=3))
    assert len(labels) == 5 + 2
    assert len(set(a.loaded)) == 5 and all(0 <= i < 10 for i in a.loaded)
    again = FakeDataset(10, 0)
    list(label_iter([again, FakeDataset(3, 1)], fraction=0.5, seed=3))
    assert again.loaded == a.loaded
    seeds = set()
    for seed in range(6):
        other = FakeDataset(10, 0)
        list(label_iter([other], fraction=0.5, seed=seed))
        seeds.add(tuple(other.loaded))
    assert len(seeds) > 1  # the subset does depend on the seed


def test_label_iter_takes_at_least_one_image_and_all_at_fraction_one():
    tiny = FakeDataset(4, 0)
    assert len(list(label_iter([tiny], fraction=0.01, seed=0))) == 1
    full = FakeDataset(4, 0)
    list(label_iter([full], fraction=1.0, seed=0))
    assert full.loaded == [0, 1, 2, 3]
