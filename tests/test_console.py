"""The console: the training line's format and width, log lines above the progress bar (never on its line), and
train.py --help listing the groups and studies from the files."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from segsweep.tracking.writers import ConsoleWriter, ProgressBar

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_training_line_is_short_and_carries_the_domain_monitors(caplog):
    writer = ConsoleWriter(1200, ["ce", "dice", "ce_0", "dice_0"], ("real", "synthetic", "gta5"))
    metrics = {"train/loss": 0.50371, "train/ce": 0.44361, "train/dice": 0.594, "train/ce_0": 0.7, "train/dice_0": 0.8,
               "train/ce_real": 0.5101, "train/dice_real": 0.6628, "train/ce_synthetic": 0.488,
               "train/dice_synthetic": 0.7752, "train/ce_gta5": 0.4, "train/lr": 7.554e-4, "train/time": 0.119,
               "train/data_time": 0.002}
    with caplog.at_level(logging.INFO, logger="segsweep"):
        writer.write(1000, metrics)
        writer.write(1200, {"val/mIoU": 0.55431, "val/pixel_acc": 0.9102, "val/mIoU_rare": 0.39251})
    train, val = [r.getMessage() for r in caplog.records]
    # 200 iterations left at 0.119 s: 23.8 s -> 0:24; aux terms and per-source monitors stay in jsonl/MLflow
    assert train == ("[1000/1200] eta 0:24 loss 0.504 ce 0.444 dice 0.594 real 0.510/0.663 syn 0.488/0.775 "
                     "lr 7.6e-4 0.12s/it")
    assert val == "[1200] val mIoU 0.5543 rare 0.393 pixel acc 0.910"
    assert len("[08:12:03][INFO] " + train) <= 120


@pytest.mark.unit
def test_log_lines_go_above_an_active_progress_bar(capsys):
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        bar = ProgressBar(10, mode="on")
        # while the bar shows, console handlers are tqdm's (tqdm.write: a line of its own above the bar)
        assert handler not in root.handlers
        assert any(type(h).__name__ == "_TqdmLoggingHandler" for h in root.handlers)
        bar.write(5, {"train/loss": 1.0})
        bar.close()
        assert handler in root.handlers  # restored once the bar is gone
    finally:
        root.removeHandler(handler)


def test_help_lists_the_groups_and_studies_without_internal_schemas():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "  model: deeplabv3, smp, torchvision_deeplabv3, torchvision_lraspp, unet*" in out
    assert "  sweeps: baselines, default*," in out and "three_sources" in out
    assert "_schema" not in out and "data/labels: cityscapes19" in out
