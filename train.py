"""Train one model: ``python train.py loss=combined weighting=sqrt_inv_freq`` (see conf/config.yaml).

Returns the objective (validation mIoU by default) so that ``python train.py -m ...`` sweeps can use it.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from segsweep.config import register_configs

# The project root anchors the default MLflow store and data cache, wherever the command is run from.
os.environ.setdefault("SEGSWEEP_ROOT", str(Path(__file__).resolve().parent))
register_configs()


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from segsweep.run import run  # imported here: `--help` and config errors stay fast

    return run(cfg)


if __name__ == "__main__":
    main()
