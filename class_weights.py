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
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from segsweep.checks import ConfigError
from segsweep.config import register_configs, validate

ROOT = Path(__file__).resolve().parent


def main(overrides: list[str]) -> None:
    """Print the table; a bad override, config value or data file ends with one line naming it (exit 1)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from segsweep.data.paired import DatasetError

    try:
        table(overrides)
    except (HydraException, OmegaConfBaseException, ConfigError, DatasetError) as e:
        logging.getLogger("segsweep").error("%s", one_line(e))  # as train.py: the message, no traceback
        sys.exit(1)


def one_line(e: BaseException) -> str:
    """The error and its cause (Hydra wraps the reason of a bad override), without Hydra's search-path listing."""
    text = str(e).split("Config search path:")[0]
    if e.__cause__ is not None and str(e.__cause__) not in text:
        text += f": {e.__cause__}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def table(overrides: list[str]) -> None:
    os.environ.setdefault("SEGSWEEP_ROOT", str(ROOT))
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[*overrides, "output_dir=.", "mlflow.enabled=false"])
    typed = validate(cfg)

    from segsweep.class_weights import format_table
    from segsweep.data.build import build_train_val
    from segsweep.data.labels import label_set
    from segsweep.run import class_weights_for

    labels = label_set(typed.data.labels, typed.data.eval_classes)
    tv = build_train_val(typed.data, typed.dataset_mix, labels, typed.trainer.batch_size, typed.trainer.seed,
                         pin_memory=False)
    weights, counts = class_weights_for(typed, tv, labels)
    print(f"class weights: method={typed.weighting.method} source={typed.weighting.source} "
          f"fraction={typed.weighting.fraction} data={typed.data.name}")
    print(format_table(counts, weights, list(labels.classes)))


if __name__ == "__main__":
    main(sys.argv[1:])
