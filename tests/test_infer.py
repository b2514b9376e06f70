"""Using a trained model afterwards: eval.py reproduces the run's own final evaluation exactly and records a
nested MLflow run; predict.py writes the files it says, in the label set's colours; bad checkpoints and inputs
get one line each."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segsweep.checks import ConfigError
from segsweep.data.labels import LabelSet
from segsweep.infer import colorize, panel, predict
from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run (model_final.pt, config_resolved.yaml, metrics.jsonl) recorded in its own MLflow store."""
    tmp = tmp_path_factory.mktemp("trained")
    env = {**os.environ, "SEGSWEEP_CACHE": str(tmp / "cache")}
    uri = f"sqlite:///{tmp}/mlflow.db"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "debug=tiny", "model.base_channels=4",
                           "model.depth=2", f"mlflow.tracking_uri={uri}", f"hydra.run.dir={tmp}/run"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / "run", uri


def test_eval_reproduces_the_runs_final_evaluation_and_nests_its_mlflow_run(trained):
    run_dir, uri = trained
    metrics = script("eval").main([f"ckpt={run_dir}"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "val/mIoU" in r][-1]
    expected = {k: v for k, v in final.items() if k.startswith("val/")}
    assert metrics == expected  # exactly: the same weights, data, transform and evaluation
    written = json.loads((run_dir / "eval" / "val" / "metrics.json").read_text())
    assert written == expected
    assert (run_dir / "eval" / "val" / "confusion.png").is_file()
    client = open_client(uri)
    runs = client.search_runs([client.get_experiment_by_name("segsweep").experiment_id])
    (train_run,) = [r for r in runs if r.data.tags.get("segsweep.output_dir") == str(run_dir.resolve())]
    (eval_run,) = [r for r in runs if r.info.run_name == "eval-val"]
    assert eval_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    assert eval_run.data.metrics["eval/mIoU"] == pytest.approx(expected["val/mIoU"])
    # every run logs validation panels (image | ground truth | prediction) beside its other plots
    assert (run_dir / "plots" / "val_panels.png").is_file()


def test_hand_made_logits_become_the_label_sets_colours():
    labels = LabelSet(("sky", "tree", "road"), np.array([[0, 0, 255], [0, 128, 0], [128, 64, 128]], np.uint8))

    class Fixed(torch.nn.Module):  # logits chosen by hand: argmax tree, road / sky, tree
        def forward(self, x):
            z = torch.zeros(1, 3, 2, 2)
            z[0, 1, 0, 0] = z[0, 2, 0, 1] = z[0, 0, 1, 0] = z[0, 1, 1, 1] = 5.0
            return {"out": z}

    pred = predict(Fixed(), np.zeros((2, 2, 3), np.uint8))
    assert pred.tolist() == [[1, 2], [0, 1]]
    painted = colorize(np.array([[1, 2], [0, 255]], np.uint8), labels)
    assert painted.tolist() == [[[0, 128, 0], [128, 64, 128]], [[0, 0, 255], [0, 0, 0]]]  # ignored: black
    side = panel(np.zeros((2, 2, 3), np.uint8), painted, gap=1)
    assert side.shape == (2, 5, 3) and side[:, 2].tolist() == [[255, 255, 255]] * 2


def test_predict_writes_colour_predictions_and_panels(trained, tmp_path):
    run_dir, _ = trained
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / f"{name}.png")
    written = script("predict").main([f"ckpt={run_dir}", f"input={images}", f"output={tmp_path}/out"])
    assert sorted(p.name for p in written) == ["a_panel.png", "a_pred.png", "b_panel.png", "b_pred.png"]
    palette = {tuple(c) for c in LabelSet.from_dict(torch.load(run_dir / "model_final.pt")["labels"]).colors.tolist()}
    pred = np.asarray(Image.open(tmp_path / "out" / "a_pred.png"))
    assert pred.shape == (40, 56, 3) and {tuple(c) for c in pred.reshape(-1, 3).tolist()} <= palette
    assert np.asarray(Image.open(tmp_path / "out" / "a_panel.png")).shape == (40, 56 * 2 + 4, 3)
    # a split of the run's validation source: panels with the ground truth
    written = script("predict").main([f"ckpt={run_dir}", "input=split:val", f"output={tmp_path}/val"])
    panels = [p for p in written if p.name.endswith("_panel.png")]
    assert len(panels) == 4  # debug=tiny: 4 validation images of 64x128
    assert np.asarray(Image.open(panels[0])).shape == (64, 3 * 128 + 2 * 4, 3)


def test_bad_checkpoints_and_inputs_get_one_line(trained, tmp_path):
    run_dir, _ = trained
    evaluate, pred = script("eval").main, script("predict").main
    with pytest.raises(ConfigError, match="config key 'ckpt': .*nowhere does not exist"):
        evaluate([f"ckpt={tmp_path}/nowhere"])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ConfigError, match="holds no model_final.pt"):
        evaluate([f"ckpt={tmp_path}/empty_run"])
    with pytest.raises(ConfigError, match=r"was trained on 19 classes .* but data.labels has 3"):
        evaluate([f"ckpt={run_dir}", "data.labels.classes=[a,b,c]", "data.labels.colors=null",
                  "data.labels.rare=[]", "data.labels.subsets={}"])
    with pytest.raises(ConfigError, match="does not fit the model of its config"):
        evaluate([f"ckpt={run_dir}", "model.base_channels=8"])
    (tmp_path / "no_images").mkdir()
    with pytest.raises(ConfigError, match="config key 'input': no image"):
        pred([f"ckpt={run_dir}", f"input={tmp_path}/no_images", f"output={tmp_path}/o"])
    with pytest.raises(ConfigError, match="config key 'output': expected a value"):
        pred([f"ckpt={run_dir}", f"input={tmp_path}/no_images"])
    done = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={tmp_path}/nowhere"], capture_output=True,
                          text=True, timeout=120)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "does not exist" in lines[0], lines
