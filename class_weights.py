"""Print the class-weight table of any data config, without training:

    python class_weights.py weighting=median_freq
    python class_weights.py data=cityscapes_gta5 weighting=effective_num weighting.source=real

Takes the same overrides as train.py; counts are cached like a training run's.
"""

import logging
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from segsweep.config import register_configs, validate

ROOT = Path(__file__).resolve().parent


def main(overrides: list[str]) -> None:
    os.environ.setdefault("SEGSWEEP_ROOT", str(ROOT))
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[*overrides, "output_dir=.", "mlflow.enabled=false"])
    typed = validate(cfg)

    from segsweep.class_weights import format_table
    from segsweep.data.build import build_train_val
    from segsweep.data.labels import CLASS_NAMES
    from segsweep.run import class_weights_for

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _, _, sets = build_train_val(typed.data, typed.dataset_mix, typed.trainer.batch_size, typed.trainer.seed,
                                 pin_memory=False)
    weights, counts = class_weights_for(typed, sets)
    print(f"class weights: method={typed.weighting.method} source={typed.weighting.source} "
          f"fraction={typed.weighting.fraction} data={typed.data.name}")
    print(format_table(counts, weights, list(CLASS_NAMES)))


if __name__ == "__main__":
    main(sys.argv[1:])
