"""Typed schemas for the Hydra config tree.

The dataclasses are registered in Hydra's ConfigStore as the schema of ``conf/config.yaml``: Hydra rejects
unknown keys and wrong types while composing, and ``validate`` turns the composed config into these objects,
whose ``__post_init__`` checks ranges and cross-field rules. Every error names the full config key, before
any data is touched. Modules below the training loop take these dataclasses (or plain values), never Hydra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import MISSING, DictConfig, OmegaConf

from segsweep import metrics
from segsweep.checks import check, finite
from segsweep.data.plan import DOMAINS, Domain, batch_counts, counted_sources, plan_sources
from segsweep.sweep.options import StudyConfig

WeightMethod = Literal["none", "inverse_freq", "sqrt_inv_freq", "effective_num", "median_freq", "enet"]


@dataclass
class LossConfig:
    name: Literal["ce", "dice", "combined"] = "combined"
    ce_weight: float = 0.6  # alpha: weight of the cross-entropy term
    dice_weight: float | None = 0.4  # beta: weight of the soft-Dice term; null: 1 - alpha (a CE share to sweep)
    smooth: float = 1.0  # Dice smoothing added to numerator and denominator
    squared_denominator: bool = False  # Dice denominator sum(p^2) + sum(y^2) instead of sum(p) + sum(y)
    dice_pooling: Literal["image", "batch"] = "image"  # Dice per image (gives L_i) or pooled over the batch
    aux_weight: float = 0.4  # weight of every auxiliary-head term (deep supervision), when the model has one

    def __post_init__(self) -> None:
        if self.dice_weight is None:
            check(finite(self.ce_weight) and 0 <= self.ce_weight <= 1, "loss.ce_weight",
                  "a number in [0, 1] when loss.dice_weight is null (beta = 1 - alpha)", self.ce_weight)
            self.dice_weight = 1.0 - self.ce_weight
        for k in ("ce_weight", "dice_weight", "aux_weight"):
            v = getattr(self, k)
            check(finite(v) and v >= 0, f"loss.{k}", "a finite number >= 0", v)
        check(finite(self.smooth) and self.smooth >= 0, "loss.smooth", "a finite number >= 0", self.smooth)
        check(self.ce_weight + self.dice_weight > 0, "loss.ce_weight + loss.dice_weight", "> 0",
              self.ce_weight + self.dice_weight)
        if self.name == "ce":
            check(self.dice_weight == 0, "loss.dice_weight", "0 with loss=ce (use loss=combined)", self.dice_weight)
        if self.name == "dice":
            check(self.ce_weight == 0, "loss.ce_weight", "0 with loss=dice (use loss=combined)", self.ce_weight)


@dataclass
class WeightingConfig:
    method: WeightMethod = "none"
    beta: float = 0.99  # effective_num: (1 - beta) / (1 - beta^n_c)
    count: Literal["images", "pixels"] = "images"  # effective_num: n_c counts images containing c, or pixels
    enet_c: float = 1.02  # enet: w_c = 1 / ln(c + p_c)
    # which trained sources the frequencies are counted on: all (or both), a domain (real, synthetic), or a list
    # of data.sources names
    source: Any = "both"
    fraction: float = 1.0  # fraction of the source images to count (a seeded random subset)
    seed: int = 0  # seed of that subset

    def __post_init__(self) -> None:
        check(finite(self.beta) and 0 < self.beta < 1, "weighting.beta", "a number in (0, 1)", self.beta)
        check(finite(self.enet_c) and self.enet_c > 1, "weighting.enet_c", "a number > 1", self.enet_c)
        check(finite(self.fraction) and 0 < self.fraction <= 1, "weighting.fraction", "a number in (0, 1]",
              self.fraction)


@dataclass
class SourceMixConfig:
    """One source's place in the batches; null keys follow its domain (real_ratio, real/synthetic_loss_weight)."""

    share: float | None = None  # fraction of every batch; null: its domain's share, split equally
    loss_weight: float | None = None  # w_i of its samples; null: its domain's loss weight


@dataclass
class DatasetMixConfig:
    name: Literal["mixed", "real_only", "synthetic_only"] = "mixed"
    real_ratio: float = 0.7  # fraction of every training batch drawn from the real domain (count rounded half up)
    real_loss_weight: float = 1.0  # w_i of real samples in L = (1/N) sum_i w_i L_i
    synthetic_loss_weight: float = 0.5  # w_i of synthetic samples; 0 means synthetic samples do not train
    reduction: Literal["mean", "weight_normalized"] = "mean"  # (1/N) sum w_i L_i, or sum w_i L_i / sum w_i
    # per data.sources name: {share, loss_weight}, e.g. dataset_mix.sources.gta5.share=0.2 (no '+' needed)
    sources: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        typed = {}
        for name, src in dict(self.sources or {}).items():
            if isinstance(src, SourceMixConfig):
                typed[name] = src
                continue
            bad = sorted(set(src or {}) - {"share", "loss_weight"})
            check(not bad, f"dataset_mix.sources.{name}", "keys share and loss_weight", bad)
            typed[name] = SourceMixConfig(**(src or {}))
        self.sources = typed
        for name, src in self.sources.items():
            for k in ("share", "loss_weight"):
                v = getattr(src, k)
                check(v is None or (finite(v) and v >= 0), f"dataset_mix.sources.{name}.{k}",
                      "null or a finite number >= 0", v)
        check(finite(self.real_ratio) and 0 <= self.real_ratio <= 1, "dataset_mix.real_ratio",
              "a number in [0, 1]", self.real_ratio)
        for k in ("real_loss_weight", "synthetic_loss_weight"):
            v = getattr(self, k)
            check(finite(v) and v >= 0, f"dataset_mix.{k}", "a finite number >= 0", v)
        if self.name == "real_only":
            check(self.real_ratio == 1, "dataset_mix.real_ratio", "1.0 with dataset_mix=real_only", self.real_ratio)
        if self.name == "synthetic_only":
            check(self.real_ratio == 0, "dataset_mix.real_ratio", "0.0 with dataset_mix=synthetic_only",
                  self.real_ratio)


@dataclass
class ToyCityConfig:
    """Parameters of the embedded generator; the data is written once per distinct value of these."""

    seed: int = 0
    height: int = 96
    width: int = 192
    n_real_train: int = 160
    n_real_val: int = 40
    n_synthetic: int = 240
    n_synthia: int = 0  # synthetic images in the SYNTHIA layout too (16-bit labels); 0: none

    def __post_init__(self) -> None:
        for k in ("height", "width"):
            check(getattr(self, k) >= 32, f"data.toycity.{k}", "an integer >= 32", getattr(self, k))
        for k in ("n_real_train", "n_real_val", "n_synthetic"):
            check(getattr(self, k) >= 1, f"data.toycity.{k}", "an integer >= 1", getattr(self, k))
        check(self.n_synthia >= 0, "data.toycity.n_synthia", "an integer >= 0", self.n_synthia)


@dataclass
class LabelSetConfig:
    """The classes a run trains and evaluates (train id = position in ``classes``); see conf/data/labels/."""

    classes: list[str] = MISSING
    colors: list[list[int]] | None = None  # [r, g, b] per class, for plots and predictions (null: generated)
    rare: list[str] = field(default_factory=list)  # reported together as val/mIoU_rare and marked in reports
    ignore_value: int = 255  # the value that means unlabelled in files that hold train ids
    subsets: dict[str, list[str]] = field(default_factory=dict)  # named class subsets for data.eval_classes


@dataclass
class SourceConfig:
    """One dataset a run trains (or validates) on, in one of the layouts the loaders read."""

    domain: Domain = "real"
    # cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/... (labelTrainIds, else labelIds);
    # gta5: images/*.png + labels/*.png (palette indices = Cityscapes ids); synthia: RGB/*.png + GT/LABELS/*.png
    # (16-bit, id in R); folders: the images/labels patterns (or list_file) below
    layout: Literal["cityscapes", "gta5", "synthia", "folders"] = "folders"
    root: str | None = None  # null with data.toycity: the generated copy of this layout
    images: str | None = None  # folders: glob under root, {split} replaced, e.g. "img/{split}/*.jpg"
    labels: str | None = None  # folders: a label's path from its image's: {split} {stem} {name} {parent} {rel}
    list_file: str | None = None  # folders, instead of images/labels: "<image> <label>" lines, e.g. "{split}.txt"
    label_format: Literal["ids", "rgb", "png16"] | None = None  # folders: ids (8-bit grey or palette indices),
    # rgb (colours) or png16 (one channel of a 16-bit PNG); the other layouts have their own
    label_channel: int = 0  # png16: the channel holding the id, 0 = R (SYNTHIA)
    label_map: Any = None  # {file value (or "r,g,b" colour): class name | ignore}; null: the layout's own table
    # (Cityscapes ids, SYNTHIA ids), else train ids (ids) or data.labels.colors (rgb)
    unknown: Literal["error", "ignore"] | None = None  # file values label_map lacks; null: the layout's rule
    # (cityscapes/gta5: ignore and count them; otherwise error)


@dataclass
class DataConfig:
    name: str = MISSING
    labels: LabelSetConfig = MISSING
    sources: dict[str, SourceConfig] = MISSING  # name -> source, in batch order
    val_source: str | None = None  # the source whose val_split is evaluated (null: the first real source)
    eval_classes: Any = None  # null: every class; a data.labels.subsets name; or a list of class names
    real_root: str | None = None  # kept for data=cityscapes_gta5 (its sources' roots), e.g. data.real_root=/x
    synthetic_root: str | None = None
    toycity: ToyCityConfig | None = None  # set: generate the embedded data; sources without a root read it
    cache_dir: str = MISSING  # generated data and class-weight caches
    train_split: str = "train"
    val_split: str = "val"
    resize: list[int] | None = None  # [H, W] every image is resized to first (None: native size)
    crop_size: list[int] = field(default_factory=lambda: [96, 96])  # [H, W] of training crops
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.5])  # random rescale before the crop
    hflip: bool = True
    skip_mismatched: bool = False  # image/label pairs of different sizes: stop with their list, or leave them out
    num_workers: int = 1
    val_batch_size: int = 8

    def __post_init__(self) -> None:
        check(len(self.sources) >= 1, "data.sources", "at least one source", dict(self.sources))
        for name, src in self.sources.items():
            key = f"data.sources.{name}"
            check(name.isidentifier(), key, "a source name made of letters, digits and _", name)
            check(name not in DOMAINS or name == src.domain, f"{key}.domain",
                  f"{name!r} (a source may be named after a domain only when it belongs to it)", src.domain)
            check(src.label_channel >= 0, f"{key}.label_channel", "an integer >= 0", src.label_channel)
            if self.toycity is None:
                check(bool(src.root), f"{key}.root", "a dataset directory (or data=toycity)", src.root)
            if src.layout == "folders":
                check(bool(src.images and src.labels) != bool(src.list_file), f"{key}.images",
                      "images and labels patterns, or a list_file (not both)", src.images)
            else:
                check(src.label_format is None, f"{key}.label_format", f"null with layout {src.layout} (it has "
                      "its own)", src.label_format)
        val = self.val_source or next((n for n, s in self.sources.items() if s.domain == "real"), None)
        check(val in self.sources, "data.val_source", f"one of {list(self.sources)} (null: the first real source)",
              self.val_source)
        self.val_source = val
        lab = self.labels
        check(1 <= len(lab.classes) <= 254 and len(set(lab.classes)) == len(lab.classes), "data.labels.classes",
              "1 to 254 distinct class names", list(lab.classes))
        check(lab.colors is None or (len(lab.colors) == len(lab.classes) and all(
            len(c) == 3 and all(0 <= v <= 255 for v in c) for c in lab.colors)), "data.labels.colors",
            f"null or one [r, g, b] per class ({len(lab.classes)})", lab.colors)
        for k, names in (("rare", lab.rare), *((f"subsets.{n}", v) for n, v in lab.subsets.items())):
            bad = [n for n in names if n not in lab.classes]
            check(not bad, f"data.labels.{k}", "names from data.labels.classes", bad)
        ev = self.eval_classes
        check(ev is None or (isinstance(ev, str) and ev in lab.subsets)
              or (not isinstance(ev, str) and len(ev) > 0 and all(n in lab.classes for n in ev)),
              "data.eval_classes", f"null, a subset of data.labels.subsets {list(lab.subsets)} or class names", ev)
        if self.resize is not None:
            check(len(self.resize) == 2 and min(self.resize) >= 8, "data.resize", "[H, W] with H, W >= 8",
                  list(self.resize))
        check(len(self.crop_size) == 2 and min(self.crop_size) >= 8, "data.crop_size", "[H, W] with H, W >= 8",
              list(self.crop_size))
        lo_hi = list(self.scale_range)
        check(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1], "data.scale_range", "[min, max] with 0 < min <= max",
              lo_hi)
        check(self.num_workers >= 0, "data.num_workers", "an integer >= 0", self.num_workers)
        check(self.val_batch_size >= 1, "data.val_batch_size", "an integer >= 1", self.val_batch_size)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_iters: int = 20  # linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.1

    def __post_init__(self) -> None:
        check(finite(self.lr) and self.lr > 0, "optim.lr", "a number > 0", self.lr)
        check(finite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", "a number >= 0",
              self.weight_decay)
        check(self.warmup_iters >= 0, "optim.warmup_iters", "an integer >= 0", self.warmup_iters)
        check(0 < self.warmup_factor <= 1, "optim.warmup_factor", "a number in (0, 1]", self.warmup_factor)


@dataclass
class TrainerConfig:
    max_iters: int = 1200
    batch_size: int = 8
    eval_every: int = 400  # also evaluated at the end
    log_every: int = 20  # losses are read from the device once per this many iterations
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    amp: bool = False  # bf16 autocast, on any device (CPU too); trainer=gpu turns it on
    channels_last: bool = False  # NHWC images and weights, on any device; trainer=gpu turns it on
    compile: bool = False  # torch.compile the model and the loss
    progress_bar: str = "auto"  # auto: only when stderr is a terminal
    num_threads: int | None = None  # torch CPU threads (None: torch's default); 1 when trials run side by side
    checkpoint_every: int = 0  # save <output_dir>/checkpoint.pt atomically every N iterations (0: never)
    resume: bool = True  # continue from <output_dir>/checkpoint.pt when it exists (a requeued job)

    def __post_init__(self) -> None:
        for k in ("max_iters", "batch_size", "eval_every", "log_every"):
            check(getattr(self, k) >= 1, f"trainer.{k}", "an integer >= 1", getattr(self, k))
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "trainer.device",
              "auto, cpu, cuda or cuda:N", self.device)
        check(self.progress_bar in ("auto", "on", "off"), "trainer.progress_bar", "auto, on or off",
              self.progress_bar)
        check(self.num_threads is None or self.num_threads >= 1, "trainer.num_threads", "null or an integer >= 1",
              self.num_threads)
        # at a logging step the running sums are empty, so a checkpoint needs no metric state
        check(self.checkpoint_every >= 0 and self.checkpoint_every % self.log_every == 0,
              "trainer.checkpoint_every", f"0 or a multiple of trainer.log_every ({self.log_every})",
              self.checkpoint_every)


@dataclass
class MlflowConfig:
    enabled: bool = True
    tracking_uri: str = MISSING  # default sqlite:///<project root>/mlflow.db
    experiment_name: str = "segsweep"
    run_name: str | None = None
    plots: bool = True  # the run's figures and the study summary's plots (matplotlib: ~2 s a run, ~10 s a study)
    # Reach the store before training and stop in seconds when it does not answer (a study's sweeper checks it
    # for its jobs). false: train anyway; what the store missed waits for `python -m segsweep.sync <run dir>`.
    preflight: bool = True


@dataclass
class Config:
    loss: LossConfig = MISSING
    weighting: WeightingConfig = MISSING
    dataset_mix: DatasetMixConfig = MISSING
    model: Any = MISSING  # instantiated with hydra.utils.instantiate; schemas in segsweep.models
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    objective: Any = metrics.MIOU  # the metric train.py returns (last evaluation); a list for multi-objective studies
    output_dir: str = "."  # the run directory (Hydra's runtime.output_dir)

    def __post_init__(self) -> None:
        check(self.study.repeats >= 1, "study.repeats", "an integer >= 1", self.study.repeats)
        check(self.study.seeds is None or len(self.study.seeds) >= self.study.repeats, "study.seeds",
              f"null or a list of at least study.repeats ({self.study.repeats}) seeds", self.study.seeds)
        allowed = metrics.OBJECTIVES
        names = [self.objective] if isinstance(self.objective, str) else list(self.objective)
        check(len(names) >= 1 and all(n in allowed for n in names), "objective",
              f"one of {list(allowed)} or a list of them", self.objective)
        plan = plan_sources(self.data, self.dataset_mix)
        counts = batch_counts([p.share for p in plan], self.trainer.batch_size)
        for p, k in zip(plan, counts):
            check(p.share == 0 or k > 0, f"dataset_mix.sources.{p.name}.share", "a share that gives the source at "
                  f"least one sample in a batch of trainer.batch_size={self.trainer.batch_size}", round(p.share, 6))
        counted = counted_sources(self.weighting.source, plan)
        check(bool(counted) or self.weighting.method == "none", "weighting.source",
              f"sources that are trained on ({[p.name for p in plan if p.share > 0]}) or a domain that has one",
              self.weighting.source)


def project_root() -> str:
    """``${project_root:}`` in the config tree: $SEGSWEEP_ROOT (set by train.py) or the current directory."""
    return os.environ.get("SEGSWEEP_ROOT") or os.getcwd()


def register_configs() -> None:
    """Register the schema (named in conf/config.yaml's defaults list) and the ``project_root`` resolver."""
    from hydra.core.config_store import ConfigStore

    from segsweep.models import register_model_schemas

    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_resolver("project_root", project_root)
    if not OmegaConf.has_resolver("num_classes"):  # ${num_classes:} in model configs: the label set's size
        OmegaConf.register_resolver("num_classes", lambda *, _root_: len(_root_.data.labels.classes))
    cs = ConfigStore.instance()
    # dataset_mix.sources takes keys without '+' (dataset_mix.sources.synthia.loss_weight=0.3, also from a study's
    # search space): the names are data.sources', which the schema cannot list; plan_sources checks them.
    schema = OmegaConf.structured(Config)
    schema.dataset_mix = DatasetMixConfig()  # the dataset_mix group's file merges into it
    OmegaConf.set_struct(schema.dataset_mix.sources, False)
    cs.store(name="segsweep_schema", node=schema, replace=True)
    register_model_schemas(cs)


def validate(cfg: DictConfig) -> Config:
    """Resolve interpolations and build the dataclasses, running every range check."""
    model = cfg.model
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, Config)
    typed.model = model  # keep the model node as a DictConfig for instantiate
    return typed
