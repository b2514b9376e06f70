"""Per-sample segmentation losses (class-weighted CE and soft Dice), sample-weighted reduction, split monitors.

Everything is built from four (B, C) statistics of each image, computed in one fused pass over the logits:

    nll[i, c]   = sum over valid pixels of class c of -log softmax(z)[c]
    inter[i, c] = sum over valid pixels of class c of p_c                 (Dice intersection, y is one-hot)
    psum[i, c]  = sum over valid pixels of p_c                            (or p_c^2 with a squared denominator)
    count[i, c] = number of valid pixels of class c                       (no gradient)

so CE_i = nll_i . w / count_i . w and Dice_ic = (2 inter + s) / (psum + count + s) (y^2 = y for one-hot y).
The fused autograd Function writes d/dlogits analytically in two passes over (B, C, H*W); the loss formulas
on the (B, C) statistics use ordinary autograd. Nothing in forward synchronises with the host.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from segsweep.config import DatasetMixConfig, LossConfig
from segsweep.data.plan import DOMAINS

REDUCTIONS = ("mean", "weight_normalized")
POOLINGS = ("image", "batch")
_TINY = 1e-12


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar, the optimised loss
    terms: dict[str, torch.Tensor]  # each term after the sample-weighted reduction, before its weight-dict factor
    monitors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "<term>_<group>" (domain or source) -> (sum, count)
    # Each term as (numerator, denominator) of its reduction, detached: summed over steps and ranks, their ratio
    # is the term over all those samples (a batch-pooled Dice is (value, 1): a mean over steps and ranks).
    term_parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # the factor of each term in total


def weighted_total(weights: dict[str, float], terms: dict):
    """The optimised loss from its terms: ``sum_k weights[k] * terms[k]`` (tensors in the step, floats in the logs)."""
    return sum(weights[k] * terms[k] for k in weights)


class SoftmaxStats(NamedTuple):
    nll: torch.Tensor  # (B, C)
    inter: torch.Tensor  # (B, C)
    psum: torch.Tensor  # (B, C): sum p, or sum p^2 when squared
    count: torch.Tensor  # (B, C), no grad


class _FusedSoftmaxStats(torch.autograd.Function):
    """logits (B, C, N), y (B, N) int64 with ignored pixels set to 0, valid (B, N) float -> SoftmaxStats.

    Backward, per pixel with p = softmax(z), v = valid, y its class and gN/gI/gP the (B, C) incoming grads:
        dz_c = v * (p_c * (g_c - S + gN_y - gI_y p_y) + [c = y] * (gI_y p_y - gN_y)),
        g_c = dL/dp_c = gP_c (or 2 gP_c p_c when squared),  S = sum_c p_c g_c  (the softmax Jacobian).
    Two passes over (B, C, N) instead of autograd's chain; checked with gradcheck in tests/test_losses.py.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, squared: bool):
        B, C, _ = z.shape
        idx = y.unsqueeze(1)
        logp = torch.log_softmax(z, dim=1)
        nll_pix = logp.gather(1, idx).squeeze(1).neg_().mul_(valid)
        pv = logp.exp_().mul_(valid.unsqueeze(1))  # reuses logp's memory; ignored pixels become 0 everywhere
        py = pv.gather(1, idx).squeeze(1)
        nll = z.new_zeros(B, C).scatter_add_(1, y, nll_pix)
        inter = z.new_zeros(B, C).scatter_add_(1, y, py)
        count = z.new_zeros(B, C).scatter_add_(1, y, valid)
        psum = (pv * pv).sum(2) if squared else pv.sum(2)
        ctx.save_for_backward(pv, py, y, valid)
        ctx.squared = squared
        ctx.mark_non_differentiable(count)
        return nll, inter, psum, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_nll: torch.Tensor, g_inter: torch.Tensor, g_psum: torch.Tensor, _g_count: torch.Tensor):
        pv, py, y, valid = ctx.saved_tensors
        onehot = (g_inter.gather(1, y) * py - g_nll.gather(1, y)) * valid  # gI_y p_y - gN_y, 0 where ignored
        if ctx.squared:
            g = pv * (2 * g_psum).unsqueeze(2)  # dpsum/dp = 2p
            s = (g * pv).sum(1)
        else:
            g = g_psum.unsqueeze(2)
            s = torch.bmm(g_psum.unsqueeze(1), pv).squeeze(1)  # sum_c p_c gP_c without a (B, C, N) temporary
        dz = (g + (-onehot - s).unsqueeze(1)).mul_(pv)
        dz.scatter_add_(1, y.unsqueeze(1), onehot.unsqueeze(1))
        return dz, None, None, None


def softmax_stats(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                  squared: bool = False) -> SoftmaxStats:
    """The (B, C) statistics of one head, in float32 (float64 stays float64) whatever the logits' dtype."""
    B, C = logits.shape[:2]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    t = target.reshape(B, -1)
    is_valid = t != ignore_index
    y = torch.where(is_valid, t, 0)
    z = logits.to(dtype=dtype, memory_format=torch.contiguous_format).view(B, C, -1)  # one copy at most (bf16,
    # channels_last), and log_softmax over dim 1 is fastest on a contiguous (B, C, N)
    return SoftmaxStats(*_FusedSoftmaxStats.apply(z, y, is_valid.to(dtype), squared))


def _div0(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den = 0: every caller has num = 0 whenever den = 0, so clamping den suffices
    (no NaN in the value or the gradient, and no torch.where)."""
    return num / den.clamp_min(_TINY)


def _weights(class_weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_ones(like.shape[-1]) if class_weight is None else class_weight.to(like.dtype)


def ce_from_stats(stats: SoftmaxStats, class_weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample class-weighted CE, sum_p w[y_p] nll_p / sum_p w[y_p]; (L, valid), L = 0 where invalid."""
    w = _weights(class_weight, stats.nll)
    den = stats.count @ w
    return _div0(stats.nll @ w, den), den > 0


def _dice_loss(inter: torch.Tensor, psum: torch.Tensor, count: torch.Tensor, w: torch.Tensor,
               smooth: float) -> torch.Tensor:
    """sum_c w_c (1 - dice_c) / sum_c w_c over the last axis (y^2 = y, so count is also sum y^2).

    With smooth = 0 an absent class has dice 0 (loss 1) however small its predicted mass; an exactly empty
    denominator (all p underflowed) gives the same value, its limit, instead of NaN."""
    dice = _div0(2 * inter + smooth, psum + count + smooth)
    return _div0((1 - dice) @ w, w.sum())


def dice_from_stats(stats: SoftmaxStats, class_weight: torch.Tensor | None,
                    smooth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image soft Dice loss over all C classes; (L, valid), L = 0 for an image without a valid pixel."""
    valid = stats.count.sum(1) > 0
    loss = _dice_loss(stats.inter, stats.psum, stats.count, _weights(class_weight, stats.inter), smooth)
    return torch.where(valid, loss, 0.0), valid


def pooled_dice_from_stats(stats: SoftmaxStats, class_weight: torch.Tensor | None, smooth: float,
                           sample_weight: torch.Tensor) -> torch.Tensor:
    """One Dice loss for the batch, I and D summed over the samples with their weights (sum_i w_i I_ic)."""
    sw = sample_weight.to(stats.inter.dtype)
    w = _weights(class_weight, stats.inter)
    return _dice_loss(sw @ stats.inter, sw @ stats.psum, sw @ stats.count, w, smooth)


def reduce_samples(loss: torch.Tensor, valid: torch.Tensor, sample_weight: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """Sample-weighted reduction over the last axis, over the samples for which the loss is defined (``valid``).

    'mean': (1/N) sum_i w_i L_i with N the number of valid samples (not B: a crop with only ignored pixels must
    not dilute the batch); 'weight_normalized': sum_i w_i L_i / sum_{valid i} w_i. 0, never NaN, when undefined.
    """
    return _div0(*reduction_parts(loss, valid, sample_weight, reduction))


def reduction_parts(loss: torch.Tensor, valid: torch.Tensor, sample_weight: torch.Tensor,
                    reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """``reduce_samples`` as (numerator, denominator): sums of these over batches and ranks reduce them exactly."""
    sw = sample_weight.to(loss.dtype) * valid
    den = valid.sum(-1).to(loss.dtype) if reduction == "mean" else sw.sum(-1)
    return (sw * loss).sum(-1), den


def group_monitors(loss: torch.Tensor, valid: torch.Tensor,
                   member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts, (..., G), of the unweighted finite per-sample values of each group's samples (``member``:
    (B, G) 0/1, no data-dependent shape); detached."""
    loss = loss.detach()
    keep = valid & torch.isfinite(loss)
    member = member.to(loss.dtype)
    return torch.where(keep, loss, 0.0) @ member, keep.to(loss.dtype) @ member


def per_sample_ce(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None = None,
                  ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    return ce_from_stats(softmax_stats(logits, target, ignore_index), class_weight)


def per_sample_dice(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None = None,
                    smooth: float = 1.0, squared_denominator: bool = False,
                    ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    stats = softmax_stats(logits, target, ignore_index, squared_denominator)
    return dice_from_stats(stats, class_weight, smooth)


def check_class_weight(class_weight: torch.Tensor, num_classes: int | None = None) -> None:
    """Refuse, before training, class weights the loss cannot use: not a vector (of ``num_classes`` entries), a
    negative or non-finite entry, or all zero. (One host read, at construction.)"""
    w = class_weight.detach().double().cpu()
    n = num_classes if num_classes is not None else w.numel()
    if w.dim() != 1 or w.numel() != n:
        raise ValueError(f"class weights: expected a vector of {n} numbers (one per class), got shape "
                         f"{tuple(w.shape)}")
    bad = (~torch.isfinite(w)) | (w < 0)
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(f"class weights: expected finite numbers >= 0, got {w[k].item()} for class {k}")
    if not (w > 0).any():
        raise ValueError("class weights: every weight is 0; at least one class must have a positive weight")


class SegmentationCriterion(torch.nn.Module):
    """Weighted CE + soft Dice on the main head and every auxiliary head, with per-sample weights and monitors.

    Terms: ``ce``, ``dice`` for ``outputs["out"]``, ``ce_{k}``, ``dice_{k}`` for ``outputs["aux"][k]``; a term whose
    factor in ``weight_dict`` is 0 is not computed. ``total = sum_k weight_dict[k] * terms[k]``. Monitors
    ``<term>_<group>`` are (sum, count) tensors (same dtype, so they can be stacked and all-reduced together), from
    the same per-sample values as the term; count 0 means absent this step. Every sample carries its source (its
    position in ``data.sources``); ``source_groups`` (S, G) says which monitor groups each source belongs to: by
    default two sources, real (0) and synthetic (1), each its own group.
    """

    def __init__(self, *, ce_weight: float, dice_weight: float, aux_weight: float = 0.4,
                 class_weight: torch.Tensor | None = None, smooth: float = 1.0, squared_denominator: bool = False,
                 dice_pooling: str = "image", reduction: str = "mean", ignore_index: int = 255,
                 num_aux: int = 0, num_classes: int | None = None,
                 groups: tuple[str, ...] = DOMAINS, source_groups: torch.Tensor | None = None) -> None:
        super().__init__()
        if class_weight is not None:
            check_class_weight(class_weight, num_classes)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
        if dice_pooling not in POOLINGS:
            raise ValueError(f"dice_pooling must be one of {list(POOLINGS)}, got {dice_pooling!r}")
        for name, v in (("ce_weight", ce_weight), ("dice_weight", dice_weight), ("aux_weight", aux_weight),
                        ("smooth", smooth)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if not ce_weight + dice_weight > 0:
            raise ValueError("ce_weight + dice_weight must be > 0")
        self.ce_weight, self.dice_weight, self.aux_weight = float(ce_weight), float(dice_weight), float(aux_weight)
        self.smooth, self.squared_denominator = float(smooth), squared_denominator
        self.dice_pooling, self.reduction, self.ignore_index = dice_pooling, reduction, ignore_index
        self.num_aux = num_aux  # auxiliary heads; names the aux terms in weight_dict before the first forward
        self.groups = tuple(groups)
        membership = torch.eye(len(groups)) if source_groups is None else source_groups.detach().float().clone()
        if membership.dim() != 2 or membership.shape[1] != len(groups):
            raise ValueError(f"source_groups must be (sources, {len(groups)}), got {tuple(membership.shape)}")
        self.register_buffer("source_groups", membership, persistent=False)
        # not persistent: the weights come from the data (and their cache), not from a checkpoint
        cw = None if class_weight is None else class_weight.detach().float().clone()
        self.register_buffer("class_weight", cw, persistent=False)
        # A class of weight 0 is not trained on: its pixels count as unlabelled in every term (one rule for CE,
        # whose weight already drops them, and Dice, which would otherwise still see them), so a sample whose
        # labelled pixels all have weight 0 has no valid pixel and is left out of N. One gather per pixel, and
        # only when some weight is 0.
        remap = None
        if cw is not None and bool((cw == 0).any()):
            if not 0 <= ignore_index:
                raise ValueError(f"ignore_index must be >= 0 with zero class weights, got {ignore_index}")
            remap = torch.arange(max(cw.numel(), ignore_index + 1))
            remap[: cw.numel()][cw.cpu() == 0] = ignore_index
        self.register_buffer("target_map", remap, persistent=False)

    @classmethod
    def from_config(cls, loss: LossConfig, mix: DatasetMixConfig, class_weight: torch.Tensor | None,
                    num_classes: int | None = None, groups: tuple[str, ...] = DOMAINS,
                    source_groups: torch.Tensor | None = None) -> SegmentationCriterion:
        return cls(ce_weight=loss.ce_weight, dice_weight=loss.dice_weight, aux_weight=loss.aux_weight,
                   class_weight=class_weight, smooth=loss.smooth, squared_denominator=loss.squared_denominator,
                   dice_pooling=loss.dice_pooling, reduction=mix.reduction, num_classes=num_classes, groups=groups,
                   source_groups=source_groups)

    def _head_weights(self, suffix: str, factor: float) -> dict[str, float]:
        terms = {f"ce{suffix}": factor * self.ce_weight, f"dice{suffix}": factor * self.dice_weight}
        return {k: v for k, v in terms.items() if v > 0}

    def weight_dict_for(self, num_aux: int) -> dict[str, float]:
        """The factor of every computed term for a model with ``num_aux`` auxiliary heads."""
        out = self._head_weights("", 1.0)
        for k in range(num_aux):
            out.update(self._head_weights(f"_{k}", self.aux_weight))
        return out

    @property
    def weight_dict(self) -> dict[str, float]:
        """Factors of the terms for ``num_aux`` auxiliary heads (set at construction, updated by forward)."""
        return self.weight_dict_for(self.num_aux)

    @property
    def term_names(self) -> list[str]:
        return list(self.weight_dict)

    def forward(self, outputs: dict[str, torch.Tensor | list[torch.Tensor]], target: torch.Tensor,
                sample_weight: torch.Tensor, source: torch.Tensor) -> LossOutput:
        heads = [outputs["out"], *(outputs.get("aux") or [])]
        self.num_aux = len(heads) - 1
        if self.target_map is not None:
            target = self.target_map[target]
        weights = self.weight_dict
        member = self.source_groups.index_select(0, source)  # (B, G): the monitors each sample counts in
        terms: dict[str, torch.Tensor] = {}
        parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        monitors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # bf16 autocast would run the small matmuls in bf16; the loss is computed in float32 throughout
        dev = target.device.type
        with torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else nullcontext():
            for k, logits in enumerate(heads):
                ce, dice = (f"ce_{k - 1}", f"dice_{k - 1}") if k else ("ce", "dice")
                ce, dice = (ce if ce in weights else None), (dice if dice in weights else None)
                if ce or dice:
                    self._head(logits, target, sample_weight, member, ce, dice, terms, parts, monitors)
            total = weighted_total(weights, terms)
        return LossOutput(total=total, terms=terms, monitors=monitors, term_parts=parts, weights=weights)

    def _head(self, logits, target, sample_weight, member, ce_name, dice_name, terms, parts, monitors) -> None:
        """Adds the head's terms and monitors; a name that is None is not computed."""
        pooled = dice_name is not None and self.dice_pooling == "batch"
        stats = softmax_stats(logits, target, self.ignore_index, self.squared_denominator and dice_name is not None)
        per_sample = []
        if ce_name:
            per_sample.append((ce_name, *ce_from_stats(stats, self.class_weight)))
        if dice_name and not pooled:
            per_sample.append((dice_name, *dice_from_stats(stats, self.class_weight, self.smooth)))
        if per_sample:  # all per-sample terms of the head reduced and monitored together, (T, B) at once
            loss = torch.stack([x[1] for x in per_sample])
            valid = torch.stack([x[2] for x in per_sample])
            nums, dens = reduction_parts(loss, valid, sample_weight, self.reduction)
            reduced = _div0(nums, dens).unbind()
            sums, counts = group_monitors(loss, valid, member)
            for (name, _, _), term, num, den, s, c in zip(per_sample, reduced, nums.detach(), dens, sums, counts,
                                                          strict=True):
                terms[name], parts[name] = term, (num, den)
                for g, group in enumerate(self.groups):
                    monitors[f"{name}_{group}"] = (s[g], c[g])
        if pooled:
            self._pooled_dice(stats, sample_weight, member, dice_name, terms, parts, monitors)

    def _pooled_dice(self, stats, sample_weight, member, name, terms, parts, monitors) -> None:
        valid = stats.count.sum(1) > 0
        value = pooled_dice_from_stats(stats, self.class_weight, self.smooth, sample_weight)
        if self.reduction == "mean":  # times the mean sample weight, so uniform weights act as they do per image
            value = value * _div0((sample_weight * valid).sum(), valid.sum().to(value.dtype))
        terms[name] = torch.where(valid.any(), value, 0.0)
        parts[name] = (terms[name].detach(), torch.ones_like(value))
        # monitors: the unweighted pooled Dice of each group's samples, (value, 1) when it has a valid sample
        member = member.t().to(value.dtype)  # (G, B)
        dice = pooled_dice_from_stats(stats, self.class_weight, self.smooth, member).detach()  # (G,)
        has = ((member * valid) > 0).any(1) & torch.isfinite(dice)
        dice, has = torch.where(has, dice, 0.0), has.to(dice.dtype)
        for g, group in enumerate(self.groups):
            monitors[f"{name}_{group}"] = (dice[g], has[g])
