"""The model: any callable that returns an ``nn.Module``, built from the ``model`` config group.

``model._target_`` names the callable (a class or a factory); every other key but ``allow``, ``weights`` and
``weights_into`` is passed to it. ``allow`` lists the trusted import prefixes (a config decides what may be built,
not an accident of what is importable). The class count reaches the model through the argument its config names
(``num_classes: ${num_classes:}``, ``classes: ${num_classes:}`` for segmentation_models_pytorch). ``weights``: a
local state dict loaded into the model (or into its submodule ``weights_into``, e.g. an ImageNet encoder); nothing
is downloaded. segsweep's own models (plain torch) are ``UNet`` and ``DeepLabV3``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from segsweep.checks import ConfigError
from segsweep.models.deeplab import DeepLabV3
from segsweep.models.outputs import ModelOutputError, main_logits, standardize
from segsweep.models.unet import UNet

__all__ = ["UNet", "DeepLabV3", "UNetConfig", "DeepLabV3Config", "register_model_schemas", "build_model",
           "check_outputs", "load_state", "standardize", "main_logits", "DEFAULT_ALLOW"]

DEFAULT_ALLOW = ["segsweep.models", "torchvision.models", "segmentation_models_pytorch"]
RESERVED = ("allow", "weights", "weights_into")  # keys of the model node that are segsweep's, not the model's


@dataclass
class UNetConfig:
    _target_: str = "segsweep.models.UNet"
    num_classes: Any = "${num_classes:}"  # the label set's size
    base_channels: int = 16  # channels of the first stage, doubled at each pooling
    depth: int = 3  # number of poolings
    aux_head: bool = False  # deep supervision from the bottleneck
    allow: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOW))
    weights: str | None = None
    weights_into: str = ""


@dataclass
class DeepLabV3Config:
    _target_: str = "segsweep.models.DeepLabV3"
    num_classes: Any = "${num_classes:}"
    depth: int = 50  # ResNet-50 or ResNet-101 trunk
    width: int = 64  # channels of the stem (64 in the standard ResNet)
    aux_head: bool = True  # FCN head on layer3, as in torchvision's deeplabv3
    allow: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOW))
    weights: str | None = None
    weights_into: str = ""


def register_model_schemas(cs) -> None:  # cs: hydra ConfigStore
    cs.store(group="model", name="unet_schema", node=UNetConfig, replace=True)
    cs.store(group="model", name="deeplabv3_schema", node=DeepLabV3Config, replace=True)


def _allowed(target: str, allow: list[str]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in allow)


def build_model(node: DictConfig) -> torch.nn.Module:
    """Instantiate the model node (after checking its target against ``model.allow``) and load ``model.weights``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = str(node.get("_target_", ""))
    allow = [str(p) for p in node.get("allow", DEFAULT_ALLOW)]
    if not target:
        raise ConfigError("config key 'model._target_': expected the import path of a callable that returns an "
                          "nn.Module, got nothing")
    if not _allowed(target, allow):
        raise ConfigError(f"config key 'model._target_': {target!r} is outside the trusted import prefixes "
                          f"model.allow={allow}; add its package there, e.g. "
                          f"'model.allow=[{','.join(allow + [target.rsplit('.', 1)[0]])}]'")
    kwargs = OmegaConf.to_container(node, resolve=True)
    for k in RESERVED:
        kwargs.pop(k, None)
    try:
        model = instantiate(kwargs, _execution_whitelist_=[f"{p}.*" for p in allow] + allow)
    except (InstantiationException, TypeError, ImportError) as e:  # a wrong key or module: the config's fault
        cause = e.__cause__ or e
        hint = " (pip install -e '.[models]')" if isinstance(cause, ImportError) else ""
        raise ConfigError(f"config key 'model': cannot build {target}: {type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}{hint}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"config key 'model._target_': {target} returned {type(model).__name__}; expected an "
                          "nn.Module")
    if node.get("weights"):
        load_weights(model, str(node.weights), str(node.get("weights_into", "") or ""))
    return model


def load_weights(model: torch.nn.Module, path: str, into: str = "") -> None:
    """Load a local state dict (a bare one, or segsweep's / Lightning's checkpoint holding one under "model" /
    "state_dict") into the model or its submodule ``into``; every key must match, with the same shape."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config key 'model.weights': file {p} does not exist (expected a state dict saved with "
                          "torch.save)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"config key 'model.weights': cannot read {p}: {str(e).splitlines()[0]}") from None
    for k in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
    try:
        target = model.get_submodule(into) if into else model
    except AttributeError:
        raise ConfigError(f"config key 'model.weights_into': the model has no submodule {into!r}") from None
    load_state(target, state, f"config key 'model.weights': {p} does not fit "
                              f"{f'model.{into}' if into else 'the model'}", " (model.weights_into names a submodule)")


def load_state(target: torch.nn.Module, state: dict, what: str, hint: str = "") -> None:
    """Load ``state`` into ``target`` when every key matches with its shape; otherwise one ConfigError line,
    ``what`` followed by the missing, unexpected and reshaped keys and ``hint``."""
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else ""]
        raise ConfigError(f"{what}: keys " + ", ".join(x for x in parts if x) + hint)
    target.load_state_dict(state)


@torch.no_grad()
def check_outputs(model: torch.nn.Module, num_classes: int, size: tuple[int, int] = (64, 64)) -> int:
    """One forward pass on zeros in eval mode (nothing learnt, no statistics updated) before training: the output
    must be readable and have one channel per class. Returns the number of auxiliary heads."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    try:
        out = standardize(model(torch.zeros(1, 3, *size, device=device)), size)
    except ModelOutputError as e:
        raise ConfigError(f"config key 'model': {e}") from None
    finally:
        model.train(was_training)
    for what, logits in (("output", out["out"]), *((f"auxiliary output {k}", a) for k, a in enumerate(out["aux"]))):
        if logits.shape[1] != num_classes:
            raise ConfigError(f"config key 'model': the model's {what} has {logits.shape[1]} channels but "
                              f"data.labels has {num_classes} classes; give the model its class count through the "
                              "argument it takes, e.g. model.num_classes=${num_classes:} (model.classes for "
                              "segmentation_models_pytorch)")
    return len(out["aux"])
