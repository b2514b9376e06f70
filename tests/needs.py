"""Optional dependencies of some tests: Python packages (torchvision, smp) and system packages (SLURM, PostgreSQL,
chromium). Missing, such a test is skipped with one line naming what is missing and the command that installs it;
under CI (CI=true, which .ci/run sets) it fails instead, so CI runs every test."""

import importlib
import os

import pytest


def require(module: str, install: str):
    """The imported module, or a skip (a failure under CI) naming it and ``install``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = f"{module} is missing ({e}); install it with: {install}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def require_system(what: str, present: bool, install: str) -> None:
    """Nothing when ``present``; else a skip (a failure under CI) naming ``what`` is missing and ``install``."""
    if present:
        return
    message = f"{what} is missing; install it with: {install}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
