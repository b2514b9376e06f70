"""The GPU code paths of the training loop (bf16 autocast, channels_last, torch.compile) run on the CPU too, and the
step never reads a device value back to the host outside logging.

Each option goes through the real loop (``segsweep.engine.trainer.train``) with the fused loss. References are
independent: a float64 loss written here with plain autograd (no fused Function), or the same loop without the
option under test.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from needs import require
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import segsweep.engine.trainer as trainer_module
from segsweep.config import OptimConfig, TrainerConfig, register_configs
from segsweep.data.labels import LabelSet
from segsweep.engine.optim import build_optimizer, build_scheduler
from segsweep.engine.trainer import TrainState, train
from segsweep.losses import SegmentationCriterion
from segsweep.models import UNet
from segsweep.seeds import run
from segsweep.tracking.storage import MetricAccumulator

C = 5
NAMES = LabelSet.of([str(c) for c in range(C)])
CLASS_WEIGHT = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8])
LOSS = dict(ce_weight=0.6, dice_weight=0.4, aux_weight=0.4, smooth=1.0)


def make_batches(n: int = 4, b: int = 4, size: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        label = torch.randint(0, C, (b, size, size), generator=g)
        label[:, :3] = 255  # some ignored pixels
        out.append({"image": torch.randn(b, 3, size, size, generator=g), "label": label,
                    "source": torch.tensor([0, 0, 1, 1]), "loss_weight": torch.tensor([1.0, 1.0, 0.5, 0.5])})
    return out


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(C, base_channels=4, depth=1, aux_head=True)  # BatchNorm, a transposed conv, two heads


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.setdefault(step, {}).update(metrics)

    def close(self) -> None:
        pass


def run_loop(model: torch.nn.Module, steps: int, *, log_every: int = 1, val=(), criterion=None,
             optim: OptimConfig | None = None, **options) -> Recorder:
    optim = optim or OptimConfig(warmup_iters=0)
    criterion = criterion or SegmentationCriterion(class_weight=CLASS_WEIGHT, num_classes=C, **LOSS)
    opt = build_optimizer(model, optim)
    state = TrainState(model, criterion, opt, build_scheduler(opt, steps, optim))
    options = {"amp": False, "channels_last": False, **options}  # only what the test asks for
    cfg = TrainerConfig(max_iters=steps, log_every=log_every, eval_every=steps, progress_bar="off", **options)
    rec = Recorder()
    batches = make_batches()
    train(state, iter(batches[i % len(batches)] for i in range(steps)), list(val), cfg, torch.device("cpu"),
          [rec], NAMES)
    return rec


# --- an independent float64 reference of the loss recipe (plain autograd, no fused Function) -------------------

def reference_head(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor, smooth: float):
    """Per-sample class-weighted CE and soft Dice, and which samples have a valid pixel, in float64."""
    z = logits.double()
    w = w.double()
    valid = target != 255
    y = torch.where(valid, target, 0)
    logp = F.log_softmax(z, 1)
    onehot = F.one_hot(y, C).permute(0, 3, 1, 2).double() * valid[:, None]
    wpix = (onehot * w[None, :, None, None]).sum(1)  # w[y_p] on valid pixels, 0 elsewhere
    nll = -(logp * onehot).sum(1)
    ce = (wpix * nll).sum((1, 2)) / wpix.sum((1, 2)).clamp_min(1e-300)
    p = logp.exp() * valid[:, None]
    inter, denom = (p * onehot).sum((2, 3)), (p + onehot).sum((2, 3))
    dice = (1 - (2 * inter + smooth) / (denom + smooth)) @ w / w.sum()
    return ce, dice, valid.flatten(1).any(1)


def reference_total(outputs: dict, target, sample_weight, w=CLASS_WEIGHT, ce_weight=0.6, dice_weight=0.4,
                    aux_weight=0.4, smooth=1.0) -> torch.Tensor:
    """(1/N) sum_i w_i L_i for each term, N = samples with a valid pixel; alpha CE + beta Dice, aux heads scaled."""
    total = torch.zeros((), dtype=torch.float64)
    for k, logits in enumerate([outputs["out"], *outputs.get("aux", [])]):
        ce, dice, valid = reference_head(logits, target, w, smooth)
        sw = sample_weight.double() * valid
        n = valid.sum()
        head = ce_weight * (sw * ce).sum() / n + dice_weight * (sw * dice).sum() / n
        total = total + (aux_weight if k else 1.0) * head
    return total


# --- each option through the real loop ------------------------------------------------------------------------

def test_compiled_training_matches_eager_training():
    """trainer.compile=true compiles the model and the criterion (its fused autograd Function included); a few
    steps give the same losses, monitors and parameters as eager training. SGD, because AdamW divides by sqrt(v)
    and turns float rounding in gradients near 0 into updates of size lr: a difference of the optimiser, not of
    compile (compile does not touch the optimiser step)."""
    eager_model, compiled_model = tiny_model(), tiny_model()
    sgd = OptimConfig(name="sgd", lr=0.05, warmup_iters=0)
    eager = run_loop(eager_model, 4, optim=sgd)
    compiled = run_loop(compiled_model, 4, optim=sgd, compile=True)
    assert eager.rows.keys() == compiled.rows.keys() == {1, 2, 3, 4}
    for step, row in eager.rows.items():
        keys = [k for k in row if k.startswith("train/") and k not in ("train/time", "train/data_time")]
        assert "train/ce_0_synthetic" in keys  # aux head terms and monitors are compared too
        got = compiled.rows[step]
        for k in keys:
            assert got[k] == pytest.approx(row[k], rel=1e-4, abs=1e-6), (step, k)
    eager_state, compiled_state = eager_model.state_dict(), compiled_model.state_dict()
    moved = 0.0
    for k, v in eager_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(compiled_state[k], v, rtol=1e-4, atol=2e-6, msg=k)
            moved = max(moved, (v - tiny_model().state_dict()[k]).abs().max().item())
    assert moved > 1e-3  # the parameters did train (the comparison is not between two untouched models)


def test_compiled_fused_loss_gradients_match_a_float64_reference():
    """The criterion compiled as the loop compiles it: value and d(total)/d(logits) of both heads against the
    float64 reference written above with plain autograd."""
    g = torch.Generator().manual_seed(1)
    b = make_batches(1)[0]
    out = torch.randn(4, C, 16, 16, generator=g, requires_grad=True)
    aux = torch.randn(4, C, 16, 16, generator=g, requires_grad=True)
    label = b["label"].clone()
    label[1] = 255  # a sample without any valid pixel is left out of N
    criterion = torch.compile(SegmentationCriterion(class_weight=CLASS_WEIGHT, num_classes=C, **LOSS))
    loss = criterion({"out": out, "aux": [aux]}, label, b["loss_weight"], b["source"])
    loss.total.backward()
    out64, aux64 = out.detach().double().requires_grad_(), aux.detach().double().requires_grad_()
    ref = reference_total({"out": out64, "aux": [aux64]}, label, b["loss_weight"])
    ref.backward()
    assert loss.total.dtype == torch.float32
    assert loss.total.item() == pytest.approx(ref.item(), rel=1e-5)
    for got, want in ((out.grad, out64.grad), (aux.grad, aux64.grad)):
        assert want.abs().max() > 1e-4
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)
    assert out.grad[1].abs().max() == 0  # the sample without a valid pixel gets no gradient


def test_bf16_autocast_runs_the_model_in_bf16_and_the_loss_in_float32():
    """trainer.amp=true on the CPU: the logits come out in bf16, every loss value (total, terms, monitors) is
    float32, and equals the float64 reference computed from those same bf16 logits (a loss computed in bf16 would
    be off by ~1e-2)."""
    seen = []

    class Spy(SegmentationCriterion):
        def forward(self, outputs, target, sample_weight, domain):
            out = super().forward(outputs, target, sample_weight, domain)
            seen.append((outputs, target, sample_weight, out))
            return out

    rec = run_loop(tiny_model(), 2, amp=True, criterion=Spy(class_weight=CLASS_WEIGHT, num_classes=C, **LOSS),
                   val=[{"image": make_batches(1)[0]["image"], "label": make_batches(1)[0]["label"]}])
    assert len(seen) == 2 and rec.rows[2]["val/pixel_acc"] >= 0  # evaluation ran under autocast too
    for outputs, target, sample_weight, out in seen:
        assert outputs["out"].dtype == outputs["aux"][0].dtype == torch.bfloat16
        values = [out.total, *out.terms.values(), *(t for pair in out.monitors.values() for t in pair)]
        assert {v.dtype for v in values} == {torch.float32}
        ref = reference_total({"out": outputs["out"].detach(), "aux": [outputs["aux"][0].detach()]}, target,
                              sample_weight)
        assert out.total.item() == pytest.approx(ref.item(), rel=1e-5)
    assert rec.rows[1]["train/loss"] == pytest.approx(seen[0][3].total.item(), rel=1e-6)


def test_channels_last_training_matches_contiguous_training():
    """trainer.channels_last=true: the model's 4-d weights and the images it sees are channels_last, and training
    gives the same losses and parameters as in the default layout."""
    images = []
    model_cl, model_plain = tiny_model(), tiny_model()
    model_cl.register_forward_pre_hook(lambda m, args: images.append(args[0]))
    cl = run_loop(model_cl, 3, channels_last=True)
    plain = run_loop(model_plain, 3)
    assert images and all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                          for x in images)
    assert model_cl.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model_cl.stem[0][0].weight.is_contiguous()
    for step in (1, 2, 3):
        assert cl.rows[step]["train/loss"] == pytest.approx(plain.rows[step]["train/loss"], rel=1e-4)
    for k, v in model_plain.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(model_cl.state_dict()[k], v, rtol=1e-4, atol=2e-6, msg=k)


@pytest.mark.slow
def test_all_gpu_options_together_train_and_evaluate():
    """amp + channels_last + compile at once (trainer=gpu, whose compile is off, with trainer.compile=true) trains,
    evaluates, and stays close to the same run in eager mode (bf16 rounding differs between inductor's fused kernels
    and eager, hence the loose tolerance)."""
    val = [{"image": make_batches(1)[0]["image"], "label": make_batches(1)[0]["label"]}]
    opts = dict(amp=True, channels_last=True)
    compiled = run_loop(tiny_model(), 3, val=val, compile=True, **opts)
    eager = run_loop(tiny_model(), 3, val=val, **opts)
    for step in (1, 2, 3):
        assert compiled.rows[step]["train/loss"] == pytest.approx(eager.rows[step]["train/loss"], rel=2e-2)
    assert 0 <= compiled.rows[3]["val/pixel_acc"] <= 1


# --- no host-device synchronisation outside logging -------------------------------------------------------------

aten = torch.ops.aten
# Operations that wait for the device on CUDA: a value read to the host, or an output shape that depends on data.
SYNC_OPS = {aten._local_scalar_dense, aten.is_nonzero, aten.nonzero, aten.masked_select, aten.equal,
            aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.repeat_interleave}
# Indexing with a boolean mask (x[mask], x[mask] = v): nonzero inside the kernel, not a separate operation here.
MASK_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class HostSyncDetector(TorchDispatchMode):
    """Raises on an operation that would synchronise with a CUDA device, outside ``allowed()`` blocks.

    On a CPU every tensor lives on the host, so the detector decides which tensors would be on the device: all of
    them (parameters, gradients, activations, the batch, the loss and its sums) except the optimiser's ``step``
    counters, which torch keeps on the host on CUDA too (AdamW reads them with ``.item()`` every step; on CUDA that
    read costs no sync). ``Tensor.tolist()``/``.cpu()``/``.numpy()`` of a CPU tensor reach no operation at this
    level: ``reads`` (a TorchFunctionMode, entered with this one) catches those calls. ``.to(device)`` is not
    flagged (on CPU the batch's host-to-device copy looks the same); bench/gpu_check.py checks it all on CUDA.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.optimizer, self.depth, self.allowed_hits = optimizer, 0, 0
        self.reads = _HostReads(self)

    @contextlib.contextmanager
    def allowed(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def _host_counter(self, t) -> bool:
        if not isinstance(t, torch.Tensor) or t.dim() != 0:
            return False
        return any(isinstance(s.get("step"), torch.Tensor) and s["step"].data_ptr() == t.data_ptr()
                   for s in self.optimizer.state.values())

    def __enter__(self):
        self.reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.reads.__exit__(*exc)

    def _fail(self, what) -> None:
        where = "".join(traceback.format_stack()[-12:-2])
        raise AssertionError(f"host-device sync outside a logging step: {what}\n{where}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS or (func.overloadpacket in MASK_OPS and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))):
            if self.depth:
                self.allowed_hits += 1
            elif not self._host_counter(args[0]):
                self._fail(func)
        return func(*args, **(kwargs or {}))


class _HostReads(TorchFunctionMode):
    """Tensor-to-host calls of HostSyncDetector's tensors (see there)."""

    def __init__(self, detector: HostSyncDetector) -> None:
        super().__init__()
        self.detector = detector

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS and not self.detector.depth and not self.detector._host_counter(args[0]):
            self.detector._fail(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


HOST_READS = {torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy}


def run_watched(monkeypatch, criterion=None, steps: int = 7, model=None, size: int = 16, **options):
    """The real loop under the detector, logging every 3 steps; flush (the logging read) and evaluation are the
    places allowed to read from the device."""
    model = model or tiny_model()
    optim = OptimConfig(warmup_iters=0)
    criterion = criterion or SegmentationCriterion(class_weight=CLASS_WEIGHT, num_classes=C, **LOSS)
    opt = build_optimizer(model, optim)
    detector = HostSyncDetector(opt)
    flush, evaluate = MetricAccumulator.flush, trainer_module.evaluate
    logged = []

    def watched_flush(self, *a, **k):
        with detector.allowed():
            logged.append(True)
            return flush(self, *a, **k)

    def watched_evaluate(*a, **k):
        with detector.allowed():
            return evaluate(*a, **k)

    monkeypatch.setattr(MetricAccumulator, "flush", watched_flush)
    monkeypatch.setattr(trainer_module, "evaluate", watched_evaluate)
    batches = make_batches(size=size)
    options = {"amp": False, "channels_last": False, **options}
    cfg = TrainerConfig(max_iters=steps, log_every=3, eval_every=steps, progress_bar="off", **options)
    val = [{"image": batches[0]["image"], "label": batches[0]["label"]}]
    rec = Recorder()
    with detector:
        train(TrainState(model, criterion, opt, build_scheduler(opt, steps, optim)),
              iter(batches[i % len(batches)] for i in range(steps)), val, cfg, torch.device("cpu"), [rec], NAMES)
    return rec, logged, detector


@pytest.mark.parametrize("options", [{}, {"amp": True, "channels_last": True}], ids=["fp32", "bf16-channels_last"])
def test_no_host_sync_with_a_segmentation_models_pytorch_model(monkeypatch, options):
    """The loop's guarantee holds for a model it did not write: smp's Unet (a bare tensor of logits, through the
    output adapter) on a ResNet-18 encoder."""
    smp = require("segmentation_models_pytorch", 'pip install -e ".[models]"')
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=C)
    rec, logged, _ = run_watched(monkeypatch, model=model, size=32, **options)
    assert sorted(rec.rows) == [3, 6, 7] and len(logged) == 3 and "val/mIoU" in rec.rows[7]
    assert "train/ce" in rec.rows[3] and "train/ce_0" not in rec.rows[3]  # one head


@pytest.mark.parametrize("options", [{}, {"amp": True, "channels_last": True}], ids=["fp32", "bf16-channels_last"])
def test_no_host_sync_outside_logging_steps(monkeypatch, options):
    rec, logged, detector = run_watched(monkeypatch, **options)
    assert sorted(rec.rows) == [3, 6, 7] and len(logged) == 3  # the loop did log, and evaluated at the end
    assert "val/mIoU" in rec.rows[7]
    assert detector.optimizer.state  # AdamW stepped (and read its step counters, which are exempt)


class ReadsLoss(SegmentationCriterion):
    """A criterion that reads its loss on the host in every step: the kind of change the detector must catch."""

    def __init__(self, how: str) -> None:
        super().__init__(class_weight=CLASS_WEIGHT, num_classes=C, **LOSS)
        self.how = how

    def forward(self, *args):
        out = super().forward(*args)
        if self.how == "item":
            out.total.item()
        elif self.how == "float":
            float(out.terms["ce"])
        elif self.how == "bool":
            bool(out.total > 0)
        elif self.how == "tolist":
            out.total.detach().tolist()
        elif self.how == "cpu":
            out.terms["dice"].detach().cpu()
        elif self.how == "mask":
            args[1][args[1] != 255]  # boolean-mask indexing: an output shape that depends on the data
        return out


@pytest.mark.parametrize("how", ["item", "float", "bool", "tolist", "cpu", "mask"])
def test_the_detector_catches_a_host_read_in_the_step(monkeypatch, how):
    with pytest.raises(AssertionError, match="host-device sync outside a logging step"):
        run_watched(monkeypatch, criterion=ReadsLoss(how), steps=2)


def test_the_detector_exempts_only_the_optimizer_step_counters(monkeypatch):
    """AdamW reads its host-side step counters in every step; the same read of a parameter is caught."""
    rec, _, detector = run_watched(monkeypatch, steps=3)
    steps = [s["step"] for s in detector.optimizer.state.values()]
    assert steps and all(s.device.type == "cpu" and s.dim() == 0 for s in steps)
    param = next(iter(detector.optimizer.state))
    with detector, pytest.raises(AssertionError, match="host-device sync"):
        param[0, 0, 0, 0].item()
    with detector:
        assert steps[0].item() == 3.0



# --- the options from the config, through run() (run.py converts the model before the loop) --------------------

@pytest.mark.parametrize("options", [
    ["trainer.amp=true", "trainer.channels_last=true"],
    pytest.param(["trainer.amp=true", "trainer.channels_last=true", "trainer.compile=true"], marks=pytest.mark.slow),
], ids=lambda o: " ".join(x.split(".")[1] for x in o))
def test_a_run_trains_with_the_gpu_options_on_a_cpu(tmp_path, options):
    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf")):
        cfg = compose("config", overrides=[
            "debug=tiny", "data.toycity.n_real_train=8", "data.toycity.n_real_val=2", "data.toycity.n_synthetic=8",
            "trainer.max_iters=2", "trainer.log_every=1", "trainer.eval_every=2", "trainer.device=cpu",
            "model.base_channels=4", "model.depth=2", "mlflow.enabled=false", f"data.cache_dir={tmp_path}/cache",
            f"output_dir={tmp_path}/run", *options])
    value = run(cfg)
    assert 0.0 <= value <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
