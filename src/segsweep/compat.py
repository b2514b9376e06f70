"""Every private name of another library that segsweep uses, in one place.

A new release of Hydra, its Optuna sweeper plugin, Optuna or torch may rename what is not public API; then this
file is the one to change, and ``tests/test_compat.py`` names what went missing. Nothing outside this module
reaches into another library's private names (``tests/test_compat.py`` greps ``src/`` and the root scripts).
Written for the versions in ``WRITTEN_FOR``; pyproject's dependency ranges keep installs within reach of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WRITTEN_FOR = {"hydra-core": "1.4.0rc3", "hydra-optuna-sweeper": "1.4.0rc3", "optuna": "5.1.0", "torch": "2.14.1"}

# ---- Hydra and its Optuna sweeper plugin ---------------------------------------------------------------------
# The plugin keeps its search-space parsing and trial configuration in a private module, ``_impl``; segsweep's
# sweeper keeps the plugin's documented keys and reuses those helpers rather than copying them.

# Loggers whose INFO lines announce every job ("Launching 1 jobs locally", "#0 : loss=..."): segsweep prints
# its own launch lines instead (segsweep.sweep.progress).
LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher")


def search_space(overrides: Sequence[str]) -> tuple[dict, dict, list]:
    """(searched distributions, fixed values, other overrides) of sweeper-style overrides such as
    ``loss.ce_weight=interval(0.2,1.0)``, parsed as the Optuna sweeper plugin does."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    return create_params_from_overrides(list(overrides))


def grid_choices(distribution: Any) -> list:
    """The grid points of one distribution, as the plugin builds a GridSampler's grid."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    return OptunaSweeperImpl._to_grid_sampler_choices(distribution)


class PluginSweeper:
    """The plugin's sweeper, for its reading of ``direction`` and its trial → overrides translation."""

    def __init__(self, *args: Any) -> None:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        self._impl = OptunaSweeperImpl(*args)

    def setup(self, config: Any) -> None:
        self._impl.config = config

    def directions(self) -> list:
        return self._impl._get_directions()

    def trial_overrides(self, trial: Any, space: dict, fixed: dict, fixed_overrides: list) -> list[str]:
        (overrides,) = self._impl._configure_trials([trial], space, fixed, fixed_overrides)
        return list(overrides)


def is_basic_launcher(launcher: Any) -> bool:
    """Hydra's default launcher (one job at a time, in this process)."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    return isinstance(launcher, BasicLauncher)


def job_error(job_return: Any) -> object:
    """What a finished Hydra job returned, or the exception it raised, without re-raising it (``JobReturn``'s
    public ``return_value`` raises)."""
    return getattr(job_return, "_return_value", None)  # None for anything but a JobReturn


# ---- Optuna --------------------------------------------------------------------------------------------------
# segsweep runs its own ask/tell loop across processes: a job addresses its trial by the storage's trial id,
# which Optuna keeps private on Trial and FrozenTrial.

def trial_id(trial: Any) -> int:
    """The storage's id of a ``Trial`` or ``FrozenTrial`` (what a job is told, ``study.trial_id``)."""
    return trial._trial_id


def stored_trial(study: Any, trial_id: int) -> Any:
    """One trial, fresh from the study's storage (``study.trials`` reads them all)."""
    return study._storage.get_trial(trial_id)


def stale_trial_ids(storage: Any, study: Any) -> list[int]:
    """Ids of the study's RUNNING trials whose heartbeat is older than the storage's grace period. (Optuna's
    public ``fail_stale_trials`` fails every one of them at once; segsweep skips trials whose SLURM job waits
    in the queue after a requeue, and records why each one failed.)"""
    return storage._get_stale_trial_ids(study._study_id)


def cached_storage(rdb: Any) -> Any:
    """Optuna's cache over an RDB storage (what ``optuna.create_study(storage=url)`` builds from a URL): finished
    trials are read from the database once."""
    from optuna.storages._cached_storage import _CachedStorage

    return _CachedStorage(rdb)


# ---- torch ---------------------------------------------------------------------------------------------------

def stop_loader_workers(loader: Any) -> None:
    """End a DataLoader's persistent worker processes now (torch ends them only when the iterator is garbage
    collected, which a traceback can postpone past interpreter exit); workers still alive after torch's join
    timeout (they ignore SIGTERM) are killed."""
    it = getattr(loader, "_iterator", None)  # where torch keeps the persistent workers' iterator
    loader._iterator = None
    if it is None or not hasattr(it, "_workers"):
        return
    it._shutdown_workers()
    for w in it._workers:
        if w.is_alive():
            w.kill()
            w.join(timeout=5)


def missing() -> list[str]:
    """The private names above that the installed libraries no longer have (empty when all is well)."""
    import optuna
    from optuna.storages import RDBStorage

    gone = []
    try:
        from hydra_plugins.hydra_optuna_sweeper import _impl
        for name in ("create_params_from_overrides", "OptunaSweeperImpl"):
            if not hasattr(_impl, name):
                gone.append(f"hydra_plugins.hydra_optuna_sweeper._impl.{name}")
        for name in ("_to_grid_sampler_choices", "_get_directions", "_configure_trials"):
            if not hasattr(getattr(_impl, "OptunaSweeperImpl", object), name):
                gone.append(f"OptunaSweeperImpl.{name}")
    except ImportError:
        gone.append("hydra_plugins.hydra_optuna_sweeper._impl")
    try:
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher  # noqa: F401
    except ImportError:
        gone.append("hydra._internal.core_plugins.basic_launcher.BasicLauncher")
    from hydra.core.utils import JobReturn

    if "_return_value" not in getattr(JobReturn, "__dataclass_fields__", {}):
        gone.append("hydra.core.utils.JobReturn._return_value")
    study = optuna.create_study()
    trial = study.ask()
    for obj, name in ((trial, "_trial_id"), (study, "_storage"), (study, "_study_id")):
        if not hasattr(obj, name):
            gone.append(f"optuna {type(obj).__name__}.{name}")
    if not hasattr(RDBStorage, "_get_stale_trial_ids"):
        gone.append("optuna.storages.RDBStorage._get_stale_trial_ids")
    try:
        from optuna.storages._cached_storage import _CachedStorage  # noqa: F401
    except ImportError:
        gone.append("optuna.storages._cached_storage._CachedStorage")
    from torch.utils.data import dataloader

    if not hasattr(dataloader._MultiProcessingDataLoaderIter, "_shutdown_workers"):
        gone.append("torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers")
    return gone
