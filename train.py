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

from segsweep.checks import ConfigError
from segsweep.config import register_configs

# The project root anchors the default MLflow store and data cache, wherever the command is run from.
os.environ.setdefault("SEGSWEEP_ROOT", str(Path(__file__).resolve().parent))
register_configs()


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from segsweep.data.paired import DatasetError
    from segsweep.seeds import run  # imported here: `--help` and config errors stay fast

    try:
        return run(cfg)
    except (ConfigError, DatasetError) as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed, with this message
        logging.getLogger("segsweep").error("%s", e)  # one clear line instead of a traceback
        sys.exit(1)


HELP = """python train.py [group=option ...] [key=value ...]      one run (see conf/config.yaml)
python train.py -m [sweeps=<study>] [key=value ...]     a study (sweeps/*.yaml), resumed by the same command
python eval.py ckpt=<run dir> | python predict.py ckpt=<run dir> input=<images> output=<folder>

Config groups (group=option; * the default):
{groups}
python train.py --cfg job [overrides]   the composed config;   --hydra-help   Hydra's own options."""


def print_help() -> None:
    """The config groups from the files users edit (conf/ and sweeps/), not Hydra's listing, which also shows
    the internal *_schema entries of the ConfigStore and leaves out the studies."""
    import yaml

    root = Path(__file__).resolve().parent
    defaults = {k: v for d in yaml.safe_load((root / "conf" / "config.yaml").read_text())["defaults"]
                if isinstance(d, dict) for k, v in d.items()}
    groups = {p.parent.relative_to(root / "conf").as_posix(): None for p in sorted((root / "conf").rglob("*.yaml"))
              if p.parent != root / "conf" and not p.parent.relative_to(root / "conf").as_posix().startswith("hydra")}
    def options(group: str, folder: Path) -> str:
        return ", ".join(f.stem + ("*" if defaults.get(group) == f.stem else "") for f in sorted(folder.glob("*.yaml")))

    lines = [f"  {g}: {options(g, root / 'conf' / g)}" for g in groups]
    lines.append(f"  sweeps: {options('sweeps', root / 'sweeps')}   (with -m)")
    print(HELP.format(groups="\n".join(lines)))


if __name__ == "__main__":
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print_help()
        sys.exit(0)
    main()
