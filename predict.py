"""Run a trained model on images: ``python predict.py ckpt=<run dir or model_final.pt> input=<folder or file>
output=<folder>``.

For every image (a file, or every image under a folder), writes ``<output>/<name>_pred.png`` (the prediction in
the label set's colours) and ``<output>/<name>_panel.png`` (image | prediction). ``input=split:<name>`` predicts a
split of the run's validation source instead, and the panels add its ground truth (image | ground truth |
prediction). Images are predicted whole, at their own resolution.
"""

import logging
import os
from pathlib import Path

os.environ.setdefault("SEGSWEEP_ROOT", str(Path(__file__).resolve().parent))
logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
log = logging.getLogger("segsweep")


def main(argv: list[str]) -> list[Path]:
    import numpy as np
    import torch
    from PIL import Image

    from segsweep.infer import as_rgb, colorize, input_images, load_run, panel, parse_args, predict, read_rgb
    from segsweep.io import atomic_path

    args, overrides = parse_args(argv, {"ckpt": None, "input": None, "output": None, "device": "cpu"})
    run = load_run(args["ckpt"], overrides)
    device = torch.device(args["device"])
    model = run.model.to(device)
    out = Path(args["output"]).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(array: np.ndarray, name: str) -> None:
        with atomic_path(out / name) as tmp:
            Image.fromarray(array).save(tmp)
        written.append(out / name)

    if args["input"].startswith("split:"):
        from segsweep.data.build import eval_loader

        split = args["input"].removeprefix("split:")
        _, dataset = eval_loader(run.typed.data, run.typed.dataset_mix, run.labels, split)
        for i in range(len(dataset)):
            sample = dataset[i]
            image = as_rgb(sample["image"])
            pred = colorize(predict(model, image, device), run.labels)
            name = dataset.image_paths[i].stem
            save(pred, f"{name}_pred.png")
            save(panel(image, colorize(sample["label"].numpy(), run.labels), pred), f"{name}_panel.png")
    else:
        for path in input_images(args["input"]):
            image = read_rgb(path)
            pred = colorize(predict(model, image, device), run.labels)
            save(pred, f"{path.stem}_pred.png")
            save(panel(image, pred), f"{path.stem}_panel.png")
    log.info("wrote %d predictions and their panels to %s", len(written) // 2, out)
    return written


if __name__ == "__main__":
    from segsweep.infer import cli

    cli(main)
