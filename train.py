"""Train one model: ``python train.py loss=combined weighting=sqrt_inv_freq`` (see conf/config.yaml).

Returns the objective (validation mIoU by default) so that ``python train.py -m ...`` sweeps can use it.
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from segsweep.config import ConfigError, register_configs

# The project root anchors the default MLflow store and data cache, wherever the command is run from.
os.environ.setdefault("SEGSWEEP_ROOT", str(Path(__file__).resolve().parent))
register_configs()


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from segsweep.data.paired import DatasetError
    from segsweep.run import run  # imported here: `--help` and config errors stay fast

    try:
        return run(cfg)
    except (ConfigError, DatasetError) as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed, with this message
        logging.getLogger("segsweep").error("%s", e)  # one clear line instead of a traceback
        sys.exit(1)


if __name__ == "__main__":
    main()
