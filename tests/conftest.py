import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from needs import require_system


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM cluster (scripts/slurm_cluster.py) for the session, SLURM_CONF pointing at it."""
    spec = importlib.util.spec_from_file_location(
        "slurm_cluster", Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    require_system(f"the SLURM packages ({', '.join(c for c in module.COMMANDS if not shutil.which(c))})",
                   all(shutil.which(c) for c in module.COMMANDS), "python scripts/slurm_cluster.py install (as root)")
    cluster = module.SlurmCluster(tmp_path_factory.mktemp("slurm"))
    saved = os.environ.get("SLURM_CONF")
    try:
        try:
            os.environ.update(cluster.up())
            error = None
        except module.ClusterError as e:
            error = str(e)
        if error:  # fail, not skip: a cluster that silently isn't there would hide failures
            pytest.fail(f"SLURM test cluster did not come up: {error}", pytrace=False)
        yield cluster
    finally:
        cluster.down()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved

