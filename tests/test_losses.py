"""Losses against independent float64 references written here (plain loops over pixels and classes for the
values, a direct torch formula for the gradients); none of them calls segsweep.losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segsweep.config import DatasetMixConfig, LossConfig
from segsweep.losses import SegmentationCriterion, per_sample_ce, per_sample_dice, softmax_stats

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

C, IGNORE = 5, 255
REAL, SYN = 0, 1


def make_batch(seed=0, B=6, H=4, W=5, fully_ignored=(2,), dtype=torch.float64):
    """Random logits; targets with ~25% ignored pixels, class 4 absent everywhere, some samples fully ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(B, C, H, W, generator=g)).to(dtype)
    target = torch.randint(0, C - 1, (B, H, W), generator=g)
    target[torch.rand(B, H, W, generator=g) < 0.25] = IGNORE
    for i in fully_ignored:
        target[i] = IGNORE
    return logits, target


MIXED = dict(sw=[1.0, 1.0, 0.5, 0.5, 0.0, 1.0], domain=[REAL, REAL, SYN, SYN, SYN, REAL])
REAL_ONLY = dict(sw=[1.0, 0.5, 1.0, 1.0, 0.0, 1.0], domain=[REAL] * 6)
SYN_ONLY = dict(sw=[0.5, 0.5, 0.5, 1.0, 0.0, 0.5], domain=[SYN] * 6)
CLASS_W = [0.5, 2.0, 1.0, 1.5, 0.7]


# ---------------------------------------------------------------- references (numpy loops, float64)

def ref_stats(logits, target):
    """Per pixel loops: nll per class, I = sum p_y, P = sum p, P2 = sum p^2, Y = count, all (B, C)."""
    x, t = logits.detach().double().numpy(), target.numpy()
    B, _, H, W = x.shape
    out = {k: np.zeros((B, C)) for k in ("nll", "I", "P", "P2", "Y")}
    for i in range(B):
        for h in range(H):
            for w in range(W):
                y = t[i, h, w]
                if y == IGNORE:
                    continue
                z = x[i, :, h, w]
                m = max(z)
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                p = [math.exp(v - lse) for v in z]
                out["nll"][i, y] += lse - z[y]
                out["I"][i, y] += p[y]
                out["Y"][i, y] += 1
                for c in range(C):
                    out["P"][i, c] += p[c]
                    out["P2"][i, c] += p[c] ** 2
    return out


def ref_ce(st, cw):
    L, valid = [], []
    for i in range(st["Y"].shape[0]):
        num = sum(cw[c] * st["nll"][i, c] for c in range(C))
        den = sum(cw[c] * st["Y"][i, c] for c in range(C))
        L.append(num / den if den > 0 else 0.0)
        valid.append(den > 0)
    return np.array(L), np.array(valid)


def ref_dice_value(inter, P, Y, cw, smooth):
    total = 0.0
    for c in range(C):
        dice = (2 * inter[c] + smooth) / (P[c] + Y[c] + smooth)
        total += cw[c] * (1 - dice)
    return total / sum(cw)


def ref_dice(st, cw, smooth, squared):
    P = st["P2"] if squared else st["P"]
    L, valid = [], []
    for i in range(P.shape[0]):
        ok = st["Y"][i].sum() > 0
        L.append(ref_dice_value(st["I"][i], P[i], st["Y"][i], cw, smooth) if ok else 0.0)
        valid.append(ok)
    return np.array(L), np.array(valid)


def ref_reduce_parts(L, valid, sw, reduction):
    num = sum(w * v for w, v, ok in zip(sw, L, valid, strict=True) if ok)
    if reduction == "mean":
        den = sum(1.0 for ok in valid if ok)
    else:
        den = sum(w for w, ok in zip(sw, valid, strict=True) if ok)
    return num, den


def ref_reduce(L, valid, sw, reduction):
    num, den = ref_reduce_parts(L, valid, sw, reduction)
    return num / den if den > 0 else 0.0


def ref_pooled(st, cw, smooth, squared, weights):
    P = st["P2"] if squared else st["P"]
    agg = [sum(weights[i] * a[i] for i in range(len(weights))) for a in (st["I"], P, st["Y"])]
    return ref_dice_value(*agg, cw, smooth)


def ref_monitor(L, valid, domain, which):
    vals = [v for v, ok, d in zip(L, valid, domain, strict=True) if ok and d == which]
    return sum(vals), len(vals)


def run(crit, logits, target, mix, aux=None):
    sw = torch.tensor(mix["sw"], dtype=torch.float32)
    domain = torch.tensor(mix["domain"])
    outputs = {"out": logits} if aux is None else {"out": logits, "aux": aux}
    return crit(outputs, target, sw, domain)


# ---------------------------------------------------------------- per-sample values

@pytest.mark.parametrize("cw", [None, CLASS_W])
def test_ce_per_sample_matches_loop_reference(cw):
    logits, target = make_batch()
    L, valid = per_sample_ce(logits, target, None if cw is None else torch.tensor(cw, dtype=torch.float64))
    ref_L, ref_valid = ref_ce(ref_stats(logits, target), cw or [1.0] * C)
    np.testing.assert_allclose(L.detach().numpy(), ref_L, rtol=1e-10, atol=1e-12)
    assert valid.tolist() == ref_valid.tolist() == [True, True, False, True, True, True]


def test_ce_per_sample_equals_torch_cross_entropy():
    logits, target = make_batch()
    w = torch.tensor(CLASS_W, dtype=torch.float64)
    for cw in (None, w):
        L, valid = per_sample_ce(logits, target, cw)
        for i in range(logits.shape[0]):
            if valid[i]:
                expect = F.cross_entropy(logits[i:i + 1], target[i:i + 1], weight=cw, ignore_index=IGNORE)
                assert L[i].item() == pytest.approx(expect.item(), rel=1e-10)
            else:
                assert L[i].item() == 0.0


def test_ce_is_invariant_to_scaling_the_class_weights():
    logits, target = make_batch()
    w = torch.tensor(CLASS_W, dtype=torch.float64)
    a, _ = per_sample_ce(logits, target, w)
    b, _ = per_sample_ce(logits, target, 7.3 * w)
    torch.testing.assert_close(a, b)
    # the property comes from torch's definition, which the per-sample CE follows
    ta = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE)
    tb = F.cross_entropy(logits, target, weight=7.3 * w, ignore_index=IGNORE)
    torch.testing.assert_close(ta, tb)
    # while the per-sample values do depend on the relative weights
    c, _ = per_sample_ce(logits, target, w * torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("cw", [None, CLASS_W])
def test_dice_per_sample_matches_loop_reference(squared, smooth, cw):
    logits, target = make_batch(seed=1)
    cwt = None if cw is None else torch.tensor(cw, dtype=torch.float64)
    L, valid = per_sample_dice(logits, target, cwt, smooth=smooth, squared_denominator=squared)
    ref_L, ref_valid = ref_dice(ref_stats(logits, target), cw or [1.0] * C, smooth, squared)
    np.testing.assert_allclose(L.detach().numpy(), ref_L, rtol=1e-10, atol=1e-12)
    assert valid.tolist() == ref_valid.tolist()
    assert L[2].item() == 0.0 and not valid[2]  # the fully ignored sample: 0, invalid, no NaN


def test_stats_are_float32_for_low_precision_logits():
    logits, target = make_batch(dtype=torch.bfloat16)
    st = softmax_stats(logits, target)
    assert st.nll.dtype == torch.float32
    ref = softmax_stats(logits.float(), target)
    torch.testing.assert_close(st.nll, ref.nll)


# ---------------------------------------------------------------- criterion: terms, reductions, monitors

def criterion(**kw):
    base = dict(ce_weight=0.6, dice_weight=0.4, class_weight=torch.tensor(CLASS_W))
    return SegmentationCriterion(**(base | kw))


@pytest.mark.parametrize("mix", [MIXED, REAL_ONLY, SYN_ONLY], ids=["mixed", "real_only", "synthetic_only"])
@pytest.mark.parametrize("reduction", ["mean", "weight_normalized"])
@pytest.mark.parametrize("squared,smooth", [(False, 1.0), (True, 0.0)])
def test_image_dice_criterion_terms_total_and_monitors(mix, reduction, squared, smooth):
    logits, target = make_batch(seed=2, dtype=torch.float32)
    crit = criterion(reduction=reduction, squared_denominator=squared, smooth=smooth)
    out = run(crit, logits, target, mix)
    st = ref_stats(logits, target)
    ce_L, ce_v = ref_ce(st, CLASS_W)
    dice_L, dice_v = ref_dice(st, CLASS_W, smooth, squared)
    ce = ref_reduce(ce_L, ce_v, mix["sw"], reduction)
    dice = ref_reduce(dice_L, dice_v, mix["sw"], reduction)
    assert set(out.terms) == {"ce", "dice"}
    assert out.terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out.terms["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert out.total.item() == pytest.approx(0.6 * ce + 0.4 * dice, rel=1e-5)
    assert out.weights == {"ce": 0.6, "dice": 0.4}
    assert set(out.monitors) == {"ce_real", "ce_synthetic", "dice_real", "dice_synthetic"}
    for name, (L, v) in {"ce": (ce_L, ce_v), "dice": (dice_L, dice_v)}.items():
        # (numerator, denominator) of the reduction: what sums over steps and data-parallel ranks need
        num, den = out.term_parts[name]
        ref_num, ref_den = ref_reduce_parts(L, v, mix["sw"], reduction)
        assert num.item() == pytest.approx(ref_num, rel=1e-5, abs=1e-7) and den.item() == pytest.approx(ref_den)
        assert not num.requires_grad
        for which, label in ((REAL, "real"), (SYN, "synthetic")):
            s, n = out.monitors[f"{name}_{label}"]
            ref_s, ref_n = ref_monitor(L, v, mix["domain"], which)
            assert n.item() == ref_n  # 0 when the batch has no sample of this domain
            assert s.item() == pytest.approx(ref_s, rel=1e-5, abs=1e-7)
            assert not s.requires_grad and not n.requires_grad


@pytest.mark.parametrize("mix", [MIXED, REAL_ONLY, SYN_ONLY], ids=["mixed", "real_only", "synthetic_only"])
@pytest.mark.parametrize("reduction", ["mean", "weight_normalized"])
@pytest.mark.parametrize("squared,smooth", [(False, 0.0), (True, 1.0)])
def test_batch_pooled_dice(mix, reduction, squared, smooth):
    logits, target = make_batch(seed=3, dtype=torch.float32)
    out = run(criterion(reduction=reduction, squared_denominator=squared, smooth=smooth, dice_pooling="batch"),
              logits, target, mix)
    st = ref_stats(logits, target)
    valid = st["Y"].sum(1) > 0
    pooled = ref_pooled(st, CLASS_W, smooth, squared, mix["sw"])
    if reduction == "mean":
        pooled *= np.mean([w for w, ok in zip(mix["sw"], valid, strict=True) if ok])
    assert out.terms["dice"].item() == pytest.approx(pooled, rel=1e-5)
    for which, label in ((REAL, "real"), (SYN, "synthetic")):
        member = [1.0 if d == which else 0.0 for d in mix["domain"]]
        s, n = out.monitors[f"dice_{label}"]
        if any(m and ok for m, ok in zip(member, valid, strict=True)):
            assert (s.item(), n.item()) == (pytest.approx(ref_pooled(st, CLASS_W, smooth, squared, member)), 1)
        else:
            assert (s.item(), n.item()) == (0.0, 0.0)


def test_uniform_sample_weights_scale_pooled_dice_like_per_image_dice():
    logits, target = make_batch(seed=4, dtype=torch.float32)
    ones = dict(sw=[1.0] * 6, domain=MIXED["domain"])
    halves = dict(sw=[0.5] * 6, domain=MIXED["domain"])
    crit = criterion(dice_pooling="batch", smooth=0.0)  # with smooth > 0 the pooled ratio itself moves
    assert run(crit, logits, target, halves).terms["dice"].item() == pytest.approx(
        0.5 * run(crit, logits, target, ones).terms["dice"].item(), rel=1e-6)


def test_weight_zero_synthetic_sample_still_counts_in_the_synthetic_monitor():
    logits, target = make_batch(seed=5, fully_ignored=(), dtype=torch.float32)
    mix = dict(sw=[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], domain=[REAL, REAL, REAL, SYN, SYN, SYN])
    out = run(criterion(), logits, target, mix)
    ce_L, _ = ref_ce(ref_stats(logits, target), CLASS_W)
    s, n = out.monitors["ce_synthetic"]
    assert n.item() == 3 and s.item() == pytest.approx(ce_L[3:].sum(), rel=1e-5)
    # and the synthetic samples do not move the optimised term: 'mean' divides by all 6 valid samples
    assert out.terms["ce"].item() == pytest.approx(ce_L[:3].sum() / 6, rel=1e-5)


def test_monitors_skip_non_finite_samples():
    logits, target = make_batch(seed=6, fully_ignored=(), dtype=torch.float32)
    logits[0, 0, 0, 0] = float("nan")
    out = run(criterion(), logits, target, MIXED)
    ce_L, _ = ref_ce(ref_stats(logits[1:], target[1:]), CLASS_W)
    s, n = out.monitors["ce_real"]
    assert n.item() == 2 and s.item() == pytest.approx(ce_L[0] + ce_L[4], rel=1e-5)  # samples 1 and 5


def test_domain_comes_from_the_domain_tensor_not_the_weight():
    logits, target = make_batch(seed=7, fully_ignored=(), dtype=torch.float32)
    mix = dict(sw=[1.0] * 6, domain=[REAL, SYN, REAL, SYN, REAL, SYN])
    out = run(criterion(), logits, target, mix)
    ce_L, _ = ref_ce(ref_stats(logits, target), CLASS_W)
    assert out.monitors["ce_synthetic"][0].item() == pytest.approx(ce_L[1::2].sum(), rel=1e-5)
    assert out.monitors["ce_synthetic"][1].item() == 3


def test_aux_heads_and_weight_dict():
    logits, target = make_batch(seed=8, dtype=torch.float32)
    aux = [make_batch(seed=9, dtype=torch.float32)[0], make_batch(seed=10, dtype=torch.float32)[0]]
    crit = criterion(aux_weight=0.25)
    out = run(crit, logits, target, MIXED, aux=aux)
    assert crit.weight_dict == pytest.approx({"ce": 0.6, "dice": 0.4, "ce_0": 0.15, "dice_0": 0.1,
                                              "ce_1": 0.15, "dice_1": 0.1})
    assert crit.term_names == list(out.terms)
    total = 0.0
    for suffix, z, in (("", logits), ("_0", aux[0]), ("_1", aux[1])):
        st = ref_stats(z, target)
        ce = ref_reduce(*ref_ce(st, CLASS_W), MIXED["sw"], "mean")
        dice = ref_reduce(*ref_dice(st, CLASS_W, 1.0, False), MIXED["sw"], "mean")
        assert out.terms[f"ce{suffix}"].item() == pytest.approx(ce, rel=1e-5)
        assert out.terms[f"dice{suffix}"].item() == pytest.approx(dice, rel=1e-5)
        factor = 0.25 if suffix else 1.0
        total += factor * (0.6 * ce + 0.4 * dice)
        assert f"ce{suffix}_real" in out.monitors and f"dice{suffix}_synthetic" in out.monitors
    assert out.total.item() == pytest.approx(total, rel=1e-5)


def test_terms_with_weight_zero_are_absent():
    logits, target = make_batch(seed=11, dtype=torch.float32)
    aux = [logits.clone()]
    out = run(criterion(dice_weight=0.0), logits, target, MIXED, aux=aux)
    assert set(out.terms) == {"ce", "ce_0"} and set(out.monitors) == {"ce_real", "ce_synthetic", "ce_0_real",
                                                                      "ce_0_synthetic"}
    out = run(criterion(ce_weight=0.0, aux_weight=0.0), logits, target, MIXED, aux=aux)
    assert set(out.terms) == {"dice"}
    assert out.total.item() == pytest.approx(0.4 * out.terms["dice"].item())


def test_from_config():
    crit = SegmentationCriterion.from_config(
        LossConfig(name="combined", ce_weight=0.7, dice_weight=0.3, smooth=0.5, squared_denominator=True,
                   dice_pooling="batch", aux_weight=0.2),
        DatasetMixConfig(reduction="weight_normalized"), torch.tensor(CLASS_W))
    assert (crit.ce_weight, crit.dice_weight, crit.aux_weight, crit.smooth) == (0.7, 0.3, 0.2, 0.5)
    assert crit.squared_denominator and crit.dice_pooling == "batch" and crit.reduction == "weight_normalized"
    torch.testing.assert_close(crit.class_weight, torch.tensor(CLASS_W))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="reduction"):
        criterion(reduction="sum")
    with pytest.raises(ValueError, match="dice_pooling"):
        criterion(dice_pooling="class")


@pytest.mark.parametrize("weight,match", [
    ([1.0] * (C - 1), "vector of 5 numbers"), ([[1.0] * C], "vector of 5 numbers"),
    ([1.0, -0.5, 1.0, 1.0, 1.0], "-0.5 for class 1"), ([1.0, 1.0, float("nan"), 1.0, 1.0], "nan for class 2"),
    ([1.0, 1.0, 1.0, float("inf"), 1.0], "inf for class 3"), ([0.0] * C, "every weight is 0")])
def test_bad_class_weights_are_refused_at_construction(weight, match):
    with pytest.raises(ValueError, match=match):
        SegmentationCriterion(ce_weight=0.6, dice_weight=0.4, class_weight=torch.tensor(weight), num_classes=C)


@pytest.mark.parametrize("pooling", ["image", "batch"])
def test_pixels_of_zero_weight_classes_count_as_unlabelled_in_every_term(pooling):
    """The rule: a class of weight 0 is not trained on. Its pixels are ignored by CE and Dice alike, and a sample
    whose labelled pixels all have weight 0 has no valid pixel: out of N for every term, absent from the monitors.
    Reference: the same batch with those pixels relabelled 255, and the plain (positive) weights."""
    logits, target = make_batch(seed=4, dtype=torch.float32)
    cw = [0.5, 2.0, 0.0, 1.5, 0.7]  # class 2 not trained on
    target[0] = torch.where(target[0] == IGNORE, IGNORE, 2)  # sample 0: only class-2 pixels
    crit = criterion(class_weight=torch.tensor(cw), dice_pooling=pooling, num_classes=C)
    out = run(crit, logits, target, MIXED)
    masked = torch.where(target == 2, IGNORE, target)
    st = ref_stats(logits, masked)
    ce_L, ce_v = ref_ce(st, cw)
    assert not ce_v[0]
    assert out.terms["ce"].item() == pytest.approx(ref_reduce(ce_L, ce_v, MIXED["sw"], "mean"), rel=1e-5)
    assert out.term_parts["ce"][1].item() == sum(ce_v)  # N: samples with a pixel of positive weight
    if pooling == "image":
        dice_L, dice_v = ref_dice(st, cw, 1.0, False)
        assert list(dice_v) == list(ce_v)  # one N for both terms
        assert out.terms["dice"].item() == pytest.approx(ref_reduce(dice_L, dice_v, MIXED["sw"], "mean"), rel=1e-5)
        assert out.term_parts["dice"][1].item() == sum(dice_v)
        s, n = out.monitors["dice_real"]  # sample 0 is real: left out of the real monitor
        ref_s, ref_n = ref_monitor(dice_L, dice_v, MIXED["domain"], REAL)
        assert n.item() == ref_n and s.item() == pytest.approx(ref_s, rel=1e-5)
    else:
        valid = [st["Y"][i].sum() > 0 for i in range(len(MIXED["sw"]))]
        mean_w = sum(w for w, ok in zip(MIXED["sw"], valid) if ok) / sum(valid)
        ref = ref_pooled(st, cw, 1.0, False, MIXED["sw"]) * mean_w
        assert out.terms["dice"].item() == pytest.approx(ref, rel=1e-5)
    assert crit.target_map is not None and criterion().target_map is None  # remapping only with a zero weight


# ---------------------------------------------------------------- gradients

def torch_reference_total(x, target, sw, domain, cw, *, ce_weight, dice_weight, smooth, squared, pooling,
                          reduction):
    """The recipe written directly with float64 torch ops (one-hot masks, sums), independent of the module."""
    valid = target != IGNORE
    onehot = (target.unsqueeze(1) == torch.arange(C).view(1, C, 1, 1)) & valid.unsqueeze(1)
    onehot = onehot.double()
    logp = torch.log_softmax(x, 1)
    p = logp.exp() * valid.unsqueeze(1)
    cwv = cw.view(1, C, 1, 1)
    has = valid.flatten(1).any(1)

    def reduce(L, ok):
        w = sw * ok
        den = ok.sum() if reduction == "mean" else w.sum()
        return (w * L).sum() / den if den > 0 else (w * L).sum() * 0

    num = -(onehot * cwv * logp).sum((1, 2, 3))
    den = (onehot * cwv).sum((1, 2, 3))
    ce_ok = den > 0
    ce = reduce(torch.where(ce_ok, num / torch.where(ce_ok, den, 1.0), 0.0), ce_ok)
    inter = (p * onehot).sum((2, 3))
    psum = (p * p if squared else p).sum((2, 3))
    ysum = onehot.sum((2, 3))
    if pooling == "image":
        den = torch.where(has.unsqueeze(1), psum + ysum + smooth, 1.0)  # no 0/0 in the branch where() drops
        dice_i = (1 - (2 * inter + smooth) / den) @ cw / cw.sum()
        dice = reduce(torch.where(has, dice_i, 0.0), has)
    else:
        agg = [sw @ a for a in (inter, psum, ysum)]
        dice = (1 - (2 * agg[0] + smooth) / (agg[1] + agg[2] + smooth)) @ cw / cw.sum()
        if reduction == "mean":
            dice = dice * (sw * has).sum() / has.sum()
    return ce_weight * ce + dice_weight * dice


@pytest.mark.parametrize("pooling", ["image", "batch"])
@pytest.mark.parametrize("reduction", ["mean", "weight_normalized"])
@pytest.mark.parametrize("squared,smooth", [(False, 0.0), (True, 1.0), (False, 1.0)])
def test_gradient_matches_float64_reference(pooling, reduction, squared, smooth):
    logits, target = make_batch(seed=12)
    sw = torch.tensor(MIXED["sw"], dtype=torch.float64)
    domain = torch.tensor(MIXED["domain"])
    cw = torch.tensor(CLASS_W, dtype=torch.float64)
    kw = dict(ce_weight=0.6, dice_weight=0.4, smooth=smooth)
    crit = SegmentationCriterion(**kw, class_weight=cw, squared_denominator=squared, dice_pooling=pooling,
                                 reduction=reduction)
    x = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(crit({"out": x}, target, sw, domain).total, x)
    xr = logits.clone().requires_grad_(True)
    ref = torch_reference_total(xr, target, sw, domain, cw, squared=squared, pooling=pooling, reduction=reduction,
                                **kw)
    (g_ref,) = torch.autograd.grad(ref, xr)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-10)
    assert (g[2] == 0).all()  # the fully ignored sample gets no gradient


@pytest.mark.parametrize("squared", [False, True])
def test_fused_statistics_pass_gradcheck(squared):
    logits, target = make_batch(seed=13, B=2, H=2, W=3, fully_ignored=())
    target[1, 0] = IGNORE
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: tuple(softmax_stats(z, target, squared=squared))[:3], (x,))


def test_whole_criterion_passes_gradcheck():
    logits, target = make_batch(seed=14, B=3, H=2, W=3, fully_ignored=(1,))
    sw = torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64)
    domain = torch.tensor([REAL, SYN, SYN])
    crit = SegmentationCriterion(ce_weight=0.6, dice_weight=0.4, aux_weight=0.5,
                                 class_weight=torch.tensor(CLASS_W, dtype=torch.float64), smooth=0.0)
    x = logits.clone().requires_grad_(True)
    a = logits.flip(0).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z, y: crit({"out": z, "aux": [y]}, target, sw, domain).total, (x, a),
                                    fast_mode=True)


def test_fully_ignored_batch_gives_zero_loss_and_zero_gradient():
    logits, target = make_batch(seed=15, fully_ignored=range(6), dtype=torch.float32)
    for kw in (dict(smooth=0.0), dict(smooth=0.0, dice_pooling="batch", reduction="weight_normalized")):
        x = logits.clone().requires_grad_(True)
        out = run(criterion(**kw), x, target, MIXED)
        out.total.backward()
        assert out.total.item() == 0.0 and (x.grad == 0).all()
        assert all(n.item() == 0 for _, n in out.monitors.values())


def test_bf16_logits_get_a_bf16_gradient_and_float32_loss():
    logits, target = make_batch(seed=16, dtype=torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    out = run(criterion(), x, target, MIXED)
    out.total.backward()
    assert out.total.dtype == torch.float32 and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()


def test_channels_last_logits_give_the_same_loss_and_gradient():
    logits, target = make_batch(seed=17, dtype=torch.float32)
    crit = criterion()
    x = logits.clone().requires_grad_(True)
    y = logits.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    a, b = run(crit, x, target, MIXED).total, run(crit, y, target, MIXED).total
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("pooling", ["image", "batch"])
def test_forward_and_backward_need_no_host_sync(pooling):
    """On the meta device .item(), bool(tensor) and boolean-mask indexing raise, so running there shows the
    criterion never reads a value back to the host (no GPU stall) and creates no data-dependent shape."""
    probe = torch.empty(3, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(probe.sum() > 0)
    with pytest.raises((RuntimeError, NotImplementedError)):
        probe[probe > 0]
    crit = criterion(dice_pooling=pooling, squared_denominator=True).to("meta")
    x = torch.empty(4, C, 6, 6, device="meta", requires_grad=True)
    target = torch.empty(4, 6, 6, dtype=torch.int64, device="meta")
    out = crit({"out": x, "aux": [x]}, target, torch.empty(4, device="meta"),
               torch.empty(4, dtype=torch.int64, device="meta"))
    out.total.backward()
    assert x.grad.shape == x.shape and set(out.monitors) >= {"ce_real", "dice_0_synthetic"}
