"""Segmentation models in plain torch, built with ``hydra.utils.instantiate`` from the ``model`` group.

Every model maps images (B, 3, H, W) to ``{"out": logits (B, C, H, W)}`` and, with an auxiliary head,
``{"aux": [logits, ...]}`` whose loss terms carry their own weight (``loss.aux_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

from segsweep.models.deeplab import DeepLabV3
from segsweep.models.unet import UNet

__all__ = ["UNet", "DeepLabV3", "UNetConfig", "DeepLabV3Config", "register_model_schemas"]


@dataclass
class UNetConfig:
    _target_: str = "segsweep.models.UNet"
    base_channels: int = 16  # channels of the first stage, doubled at each pooling
    depth: int = 3  # number of poolings
    aux_head: bool = False  # deep supervision from the bottleneck


@dataclass
class DeepLabV3Config:
    _target_: str = "segsweep.models.DeepLabV3"
    depth: int = 50  # ResNet-50 or ResNet-101 trunk
    width: int = 64  # channels of the stem (64 in the standard ResNet)
    aux_head: bool = True  # FCN head on layer3, as in torchvision's deeplabv3


def register_model_schemas(cs) -> None:  # cs: hydra ConfigStore
    cs.store(group="model", name="unet_schema", node=UNetConfig, replace=True)
    cs.store(group="model", name="deeplabv3_schema", node=DeepLabV3Config, replace=True)
