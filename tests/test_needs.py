"""tests/needs: a missing optional or system package skips a test with the install command; fails it under CI."""

import pytest
from needs import require, require_system

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


def test_a_present_module_is_returned():
    assert require("json", "pip install nothing").dumps([1]) == "[1]"


def test_missing_module_skips_outside_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no_such_module_x is missing .*install it with: pip install x"):
        require("no_such_module_x", "pip install x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install it with: pip install x"):
        require("no_such_module_x", "pip install x")


def test_a_missing_system_package_skips_outside_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    require_system("chromium", True, "apt-get install -y chromium")  # present: nothing happens
    with pytest.raises(pytest.skip.Exception, match=r"^the SLURM packages is missing; install it with: python "):
        require_system("the SLURM packages", False, "python scripts/slurm_cluster.py install")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y postgresql"):
        require_system("PostgreSQL's server", False, "apt-get install -y postgresql")
