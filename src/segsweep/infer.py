"""Use a trained model afterwards: load a run (its resolved config, label set and final weights), evaluate it on a
split, predict images, and draw colour-coded predictions and panels. ``eval.py`` and ``predict.py`` are thin
command lines over this module; every run draws its validation panels with ``val_panels``.

Arguments are ``key=value``: ``ckpt`` (a run directory or its ``model_final.pt``) and the command's own keys;
any other is an override of the run's config: a config group (``data=cityscapes_gta5``) or a key
(``data.val_batch_size=2``). Predictions are argmax train ids painted in the label set's colours (ignored: black).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from segsweep.checks import ConfigError
from segsweep.config import Config, validate
from segsweep.data.labels import IGNORE, LabelSet, label_set
from segsweep.data.paired import DatasetError, open_image
from segsweep.data.transforms import normalize, to_tensor
from segsweep.models import build_model, load_state
from segsweep.models.outputs import main_logits

log = logging.getLogger("segsweep")
CPU = torch.device("cpu")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv: list[str], own: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` arguments -> (the command's own keys, with defaults; the config overrides)."""
    mine, overrides = {k: v for k, v in own.items() if v is not None}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r}: expected key=value (e.g. ckpt=outputs/<date>/<time>)")
        if key in own:
            mine[key] = value
        else:
            overrides.append(arg)
    missing = [k for k, v in own.items() if v is None and k not in mine]
    if missing:
        raise ConfigError(f"config key '{missing[0]}': expected a value, e.g. {missing[0]}=...")
    return mine, overrides


@dataclass
class TrainedRun:
    cfg: DictConfig
    typed: Config
    labels: LabelSet
    model: torch.nn.Module
    run_dir: Path
    ckpt: Path


def _files(ckpt: str) -> tuple[Path, Path]:
    path = Path(ckpt).expanduser()
    run_dir, model_file = (path, path / "model_final.pt") if path.is_dir() else (path.parent, path)
    if not path.exists():
        raise ConfigError(f"config key 'ckpt': {path} does not exist (expected a run directory holding "
                          "model_final.pt, or the model_final.pt file)")
    if not model_file.is_file():
        raise ConfigError(f"config key 'ckpt': {run_dir} holds no model_final.pt (a run that did not finish? its "
                          "checkpoint.pt resumes training with the same train.py command)")
    if not (run_dir / "config_resolved.yaml").is_file():
        raise ConfigError(f"config key 'ckpt': no config_resolved.yaml beside {model_file} (expected the run "
                          "directory train.py wrote)")
    return run_dir, model_file


def _override(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A group option (``data=toycity``, ``data/labels=cityscapes19``) replaces the run's node with the option as
    composed from conf/; any other ``key=value`` sets that key."""
    from hydra import compose, initialize_config_dir

    from segsweep.config import project_root, register_configs

    conf = Path(project_root()) / "conf"  # eval.py and predict.py set $SEGSWEEP_ROOT, as train.py does
    for arg in overrides:
        key, _, value = arg.partition("=")
        if (conf / key).is_dir():
            register_configs()
            with initialize_config_dir(config_dir=str(conf)):
                composed = compose("config", overrides=[arg])
            node = key.replace("/", ".")
            OmegaConf.update(cfg, node, OmegaConf.to_container(OmegaConf.select(composed, node), resolve=True),
                             merge=False)
        else:
            try:
                OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, merge=False)
            except Exception as e:  # a wrong type or key: OmegaConf names it
                raise ConfigError(f"config key '{key}': {str(e).splitlines()[0]}") from None
    return cfg


def load_run(ckpt: str, overrides: list[str] = ()) -> TrainedRun:
    """The run's config (with ``overrides``), label set and model with its final weights, on the CPU."""
    from segsweep.config import register_configs

    run_dir, model_file = _files(ckpt)
    register_configs()  # the ${num_classes:} resolver
    schema = OmegaConf.structured(Config)
    cfg = _override(OmegaConf.merge(schema, OmegaConf.load(run_dir / "config_resolved.yaml")), list(overrides))
    cfg.model.weights = None  # the run's starting weights; the final ones come from model_file
    typed = validate(cfg)
    labels = label_set(typed.data.labels, typed.data.eval_classes)
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"config key 'ckpt': cannot read {model_file}: {str(e).splitlines()[0]}") from None
    trained = state.get("labels", {}).get("classes") if isinstance(state, dict) else None
    if trained is not None and list(trained) != list(labels.classes):
        raise ConfigError(f"config key 'ckpt': {model_file} was trained on {len(trained)} classes {trained[:6]}..., "
                          f"but data.labels has {labels.num_classes} {list(labels.classes)[:6]}...; evaluate it on "
                          "data with its label set")
    model = build_model(typed.model)
    load_state(model, state.get("model", state) if isinstance(state, dict) else state,
               f"config key 'ckpt': {model_file} does not fit the model of its config ({typed.model._target_})",
               "; was the model config overridden?")
    return TrainedRun(cfg, typed, labels, model.eval(), run_dir, model_file)


def colorize(pred: np.ndarray, labels: LabelSet) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 in the label set's colours; ignored (255) and unknown ids black."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: labels.num_classes] = labels.colors
    palette[IGNORE] = 0
    return palette[pred]


def panel(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 images side by side with white gaps."""
    h = max(im.shape[0] for im in images)
    parts = []
    for k, im in enumerate(images):
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=1)


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray | Image.Image, device: torch.device = CPU,
            amp: bool = False) -> np.ndarray:
    """(H, W) uint8 train ids: the argmax of the main head at the image's resolution (no resize, no crop)."""
    chw = image if isinstance(image, Image.Image) else torch.from_numpy(np.array(image)).permute(2, 0, 1)
    x = normalize(to_tensor(chw))
    x = x.unsqueeze(0).to(device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    with ctx:
        logits = main_logits(model(x), x.shape[-2:])
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def val_panels(model: torch.nn.Module, dataset, labels: LabelSet, path: Path, n: int = 4,
               device: torch.device = CPU, amp: bool = False) -> Path | None:
    """The first ``n`` images of a validation dataset, one row each: image | ground truth | prediction."""
    rows = []
    was_training = model.training
    model.eval()
    try:
        for i in range(min(n, len(dataset))):
            sample = dataset[i]
            image = as_rgb(sample["image"])
            truth = sample["label"].numpy().astype(np.uint8)
            rows.append(panel(image, colorize(truth, labels), colorize(predict(model, image, device, amp), labels)))
    finally:
        model.train(was_training)
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def as_rgb(image: Image.Image | torch.Tensor | np.ndarray) -> np.ndarray:
    """A loader's decoded image (PIL, uint8 3xHxW tensor or HxWx3 array) as an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy()
    return np.asarray(image, np.uint8)


def input_images(where: str) -> list[Path]:
    path = Path(where).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"config key 'input': {path} does not exist (expected an image file or a folder of images)")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"config key 'input': no image ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    return files


def read_rgb(path: Path) -> np.ndarray:
    try:
        return np.asarray(open_image(path).convert("RGB"))
    except DatasetError as e:
        raise ConfigError(str(e)) from None


def cli(main) -> None:
    """Run ``main(sys.argv[1:])``; a config or data error ends with its one line and exit code 1."""
    import sys

    try:
        main(sys.argv[1:])
    except (ConfigError, DatasetError) as e:
        log.error("%s", e)
        sys.exit(1)
