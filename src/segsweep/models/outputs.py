"""One shape for every model's output: ``{"out": logits, "aux": [logits, ...]}`` at the labels' resolution.

Models answer in many ways: a tensor (segmentation_models_pytorch), a dict with ``out`` and ``aux`` (torchvision),
a tuple or list (main output first, auxiliary heads after), or an object with ``.logits`` (Hugging Face). Logits
at a lower resolution than the labels (a stride-4 head) are upsampled bilinearly (align_corners=False) before the
loss and the evaluation. Shapes are host-side metadata: nothing here synchronises with the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


class ModelOutputError(ValueError):
    """The model's output is not something segsweep can read as logits; the message says what it got."""


def split_heads(output: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main logits, auxiliary logits) of any supported output form."""
    if isinstance(output, torch.Tensor):
        return output, []
    if isinstance(output, Mapping):
        main = output.get("out", output.get("logits"))
        if main is None:
            raise ModelOutputError(f"the model returned a dict with keys {sorted(output)}; expected 'out' (and "
                                   "optionally 'aux')")
        aux = output.get("aux")
        return main, [] if aux is None else [aux] if isinstance(aux, torch.Tensor) else list(aux)
    if isinstance(output, Sequence) and output and all(isinstance(o, torch.Tensor) for o in output):
        return output[0], list(output[1:])
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits, []
    raise ModelOutputError(f"the model returned {type(output).__name__}; expected a tensor of logits, a dict with "
                           "'out' (and 'aux'), a tuple (main first) or an object with .logits")


def fit(logits: torch.Tensor, size: tuple[int, int] | torch.Size, what: str = "output") -> torch.Tensor:
    """(B, C, h, w) logits at ``size`` (bilinear upsampling when h, w differ)."""
    if logits.dim() != 4:
        raise ModelOutputError(f"the model's {what} has shape {tuple(logits.shape)}; expected (B, C, H, W) logits")
    if logits.shape[-2:] != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def standardize(output: Any, size: tuple[int, int] | torch.Size) -> dict[str, Any]:
    """``{"out": logits, "aux": [logits, ...]}`` at ``size``, for the criterion."""
    main, aux = split_heads(output)
    return {"out": fit(main, size), "aux": [fit(a, size, f"auxiliary output {k}") for k, a in enumerate(aux)]}


def main_logits(output: Any, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The main head's logits at ``size``, for evaluation and prediction (auxiliary heads are not upsampled)."""
    return fit(split_heads(output)[0], size)
