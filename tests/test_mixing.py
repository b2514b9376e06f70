"""Fixed-ratio mixed batches, domain-tagged samples, and the train/val loaders built from the configs."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segsweep.config import DataConfig, DatasetMixConfig, LabelSetConfig, SourceConfig, ToyCityConfig
from segsweep.data.build import build_train_val
from segsweep.data.labels import label_set
from segsweep.data.mixing import MixedBatchSampler, SeededBatches, SourceBatchSampler, SourceDataset, real_per_batch

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


def _batches(sampler, n):
    return list(itertools.islice(iter(sampler), n))


# (real_ratio, batch_size) -> real samples per batch, rounded half up (Python's round would give 2 for 0.5 * 5).
CASES = {(0.7, 8): 6, (0.7, 5): 4, (0.5, 5): 3, (0.1, 5): 1, (0.5, 4): 2, (0.3, 5): 2, (0.35, 10): 4, (0.0, 4): 0,
         (1.0, 4): 4, (0.99, 8): 8, (0.04, 8): 0, (0.7, 1): 1}


@pytest.mark.parametrize("ratio_bs", list(CASES))
def test_every_batch_has_the_exact_real_count(ratio_bs):
    ratio, bs = ratio_bs
    k = CASES[ratio_bs]
    assert real_per_batch(ratio, bs) == k
    n_real, n_syn = 7, 5
    for batch in _batches(MixedBatchSampler(n_real, n_syn, bs, ratio, seed=0), 30):
        assert len(batch) == bs
        assert sum(i < n_real for i in batch) == k
        assert all(0 <= i < n_real + n_syn for i in batch)


def test_no_repeat_within_a_pass_and_fresh_permutations():
    n_real, n_syn = 12, 9
    batches = _batches(MixedBatchSampler(n_real, n_syn, 6, 0.5, seed=3), 24)  # 3 real + 3 synthetic per batch
    real = [i for b in batches for i in b if i < n_real]
    syn = [i - n_real for b in batches for i in b if i >= n_real]
    for seq, n in ((real, n_real), (syn, n_syn)):
        passes = [seq[p * n:(p + 1) * n] for p in range(len(seq) // n)]
        assert len(passes) >= 3
        assert all(sorted(p) == list(range(n)) for p in passes)  # each pass is a permutation
        assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


def test_reproducible_for_a_seed():
    a = _batches(MixedBatchSampler(10, 10, 4, 0.5, seed=7), 20)
    assert a == _batches(MixedBatchSampler(10, 10, 4, 0.5, seed=7), 20)
    assert a != _batches(MixedBatchSampler(10, 10, 4, 0.5, seed=8), 20)
    s = MixedBatchSampler(10, 10, 4, 0.5, seed=7)
    assert _batches(s, 20) == _batches(s, 20)  # every iter() restarts the same sequence
    s.start_batch = 5
    assert _batches(s, 15) == a[5:]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_interleaved_batches_of_the_one_sequence(world_size):
    """Rank r gets batches r, r + W, ... of the single-process sequence: together the ranks see in one step
    what one process sees in W steps, each rank with the mixed composition; resuming skips whole steps."""
    args = dict(n_real=7, n_synthetic=11, batch_size=4, real_ratio=0.5, seed=3)
    single = list(itertools.islice(MixedBatchSampler(**args).numbered(), 6 * world_size))
    for rank in range(world_size):
        mine = list(itertools.islice(MixedBatchSampler(**args, rank=rank, world_size=world_size).numbered(), 6))
        assert mine == single[rank::world_size]  # same (global batch number, indices)
        resumed = MixedBatchSampler(**args, rank=rank, world_size=world_size, start_batch=2)
        assert list(itertools.islice(resumed.numbered(), 4)) == single[rank::world_size][2:]
        assert all(sum(i < 7 for i in batch) == 2 for _, batch in mine)
    with pytest.raises(ValueError, match="rank"):
        MixedBatchSampler(**args, rank=2, world_size=2)


def test_finite_length():
    s = MixedBatchSampler(5, 5, 2, 0.5, seed=0, num_batches=7)
    assert len(s) == 7 and len(list(s)) == 7
    with pytest.raises(TypeError):
        len(MixedBatchSampler(5, 5, 2, 0.5, seed=0))


def test_empty_domains():
    assert all(i < 3 for b in _batches(MixedBatchSampler(3, 0, 4, 1.0, seed=0), 5) for i in b)
    assert all(i >= 0 for b in _batches(MixedBatchSampler(0, 3, 4, 0.0, seed=0), 5) for i in b)
    with pytest.raises(ValueError, match="source 1 is to give 2 samples per batch of 4, but its dataset is empty"):
        MixedBatchSampler(3, 0, 4, 0.5, seed=0)
    with pytest.raises(ValueError, match="source 0 is to give 2 samples .* empty"):
        MixedBatchSampler(0, 3, 4, 0.5, seed=0)


def test_three_sources_keep_their_counts_streams_and_offsets():
    # sizes 4, 3, 5; 3 + 1 + 2 per batch; offsets 0, 4, 7
    s = SourceBatchSampler([4, 3, 5], [3, 1, 2], seed=5)
    batches = _batches(s, 10)
    for b in batches:
        assert all(0 <= i < 4 for i in b[:3]) and 4 <= b[3] < 7 and all(7 <= i < 12 for i in b[4:])
    # each source walks its own permutation: every pass over source 0 (4 samples) holds each index once
    firsts = [i for b in batches for i in b[:3]][:8]
    assert sorted(firsts[:4]) == [0, 1, 2, 3] and sorted(firsts[4:8]) == [0, 1, 2, 3]
    # a source's stream is seeded by its position in data.sources, not by which others are trained: source 2
    # alone (stream key 2) draws what it draws beside the others
    alone = _batches(SourceBatchSampler([5], [2], seed=5, streams=[2]), 10)
    assert [[i - 7 for i in b[4:]] for b in batches] == alone
    # the two-source sampler (real first) draws what it drew before N sources: real from the permutations of
    # rng([seed, 0]), synthetic from rng([seed, 1]) offset by n_real
    def stream(n, key):
        rng = np.random.default_rng([2, key])
        while True:
            yield from rng.permutation(n).tolist()
    real, syn = stream(4, 0), stream(5, 1)
    expected = [[next(real) for _ in range(3)] + [4 + next(syn) for _ in range(2)] for _ in range(6)]
    assert _batches(MixedBatchSampler(4, 5, 5, 0.6, seed=2), 6) == expected


class _Fake:
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 2, 2, dtype=torch.uint8), "label": torch.full((2, 2), i)}


def test_domain_dataset_fields():
    def tf(s, generator=None):
        return s

    real = SourceDataset(_Fake(), 0, 1.0, tf)[1]
    assert real["source"] == 0 and real["loss_weight"] == 1.0 and real["label"].tolist() == [[1, 1], [1, 1]]
    syn = SourceDataset(_Fake(), 1, 0.0, tf)[0]
    assert syn["source"] == 1 and syn["loss_weight"] == 0.0  # weight 0 is still the synthetic source
    with pytest.raises(ValueError):
        SourceDataset(_Fake(), -1, 1.0, tf)


LABELS_CFG = LabelSetConfig(**OmegaConf.to_container(
    OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/data/labels/cityscapes19.yaml")))
LABELS = label_set(LABELS_CFG)


def _data_cfg(tmp_path, workers=0):
    return DataConfig(name="toycity", cache_dir=str(tmp_path), num_workers=workers, val_batch_size=2,
                      labels=LABELS_CFG, sources={"real": SourceConfig(domain="real", layout="cityscapes"),
                                                  "synthetic": SourceConfig(domain="synthetic", layout="gta5")},
                      toycity=ToyCityConfig(seed=0, height=32, width=64, n_real_train=6, n_real_val=3, n_synthetic=5),
                      crop_size=[24, 24], scale_range=[0.75, 1.5])


def test_build_train_val_on_tiny_toycity(tmp_path):
    mix = DatasetMixConfig(name="mixed", real_ratio=0.5, real_loss_weight=1.0, synthetic_loss_weight=0.0)
    tv = build_train_val(_data_cfg(tmp_path), mix, LABELS, batch_size=4, seed=0, pin_memory=False)
    train, val = tv.train_loader, tv.val_loader
    assert len(tv.trained["real"]) == 6 and len(tv.trained["synthetic"]) == 5 and len(tv.val) == 3
    batch = next(iter(train))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 24, 24) and batch["label"].dtype == torch.int64
    assert batch["source"].tolist() == [0, 0, 1, 1] and batch["source"].dtype == torch.int64
    assert batch["loss_weight"].dtype == torch.float32 and batch["loss_weight"].tolist() == [1.0, 1.0, 0.0, 0.0]
    labels = set(batch["label"].unique().tolist())
    assert labels <= set(range(19)) | {255} and len(labels) > 3
    val_batches = list(val)
    assert [b["image"].shape[0] for b in val_batches] == [2, 1]  # one ordered pass over the real val split
    assert val_batches[0]["image"].shape[1:] == (3, 32, 64)
    assert all(b["source"].tolist() == [0] * len(b["source"]) for b in val_batches)


def test_augmentations_follow_the_seed_not_the_global_rng_nor_the_workers(tmp_path):
    """The batches (samples, crops, scales, flips) are a function of the run's seed alone: the same under another
    state of torch's global RNG and in 2 loader worker processes (which seed their own global RNGs), other under
    another seed."""
    mix = DatasetMixConfig(name="mixed", real_ratio=0.5, real_loss_weight=1.0, synthetic_loss_weight=0.0)

    def first_batches(seed: int, workers: int, global_seed: int, n: int = 3) -> list[dict]:
        torch.manual_seed(global_seed)
        tv = build_train_val(_data_cfg(tmp_path, workers), mix, LABELS, 4, seed=seed, pin_memory=False)
        it = iter(tv.train_loader)
        return [next(it) for _ in range(n)]

    a = first_batches(seed=0, workers=0, global_seed=0)
    b = first_batches(seed=0, workers=2, global_seed=1)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    c = first_batches(seed=1, workers=0, global_seed=0)
    assert not torch.equal(a[0]["image"], c[0]["image"])
    # the equality above is not that of fixed crops: one sample under two augmentation seeds differs, under one
    # seed it does not, whatever the global RNG
    data = build_train_val(_data_cfg(tmp_path), mix, LABELS, 4, seed=0, pin_memory=False).train_loader.dataset
    torch.manual_seed(2)
    once = data[(0, 5)]["image"]
    torch.manual_seed(3)
    assert torch.equal(data[(0, 5)]["image"], once) and not torch.equal(data[(0, 6)]["image"], once)
    # and the augmentation seeds come from the run's seed
    def aug_seeds(seed: int) -> list[int]:
        return [k for _, k in next(iter(SeededBatches(MixedBatchSampler(6, 5, 4, 0.5, seed=seed))))]
    assert aug_seeds(0) == aug_seeds(0) != aug_seeds(1)


def test_build_real_only_with_a_worker(tmp_path):
    mix = DatasetMixConfig(name="real_only", real_ratio=1.0)
    tv = build_train_val(_data_cfg(tmp_path, workers=1), mix, LABELS, batch_size=3, seed=1, pin_memory=False)
    train = tv.train_loader
    assert list(tv.trained) == ["real"]
    it = iter(train)
    batches = [next(it) for _ in range(3)]
    assert all(b["source"].tolist() == [0, 0, 0] for b in batches)
    assert batches[0]["image"].shape == (3, 3, 24, 24)
