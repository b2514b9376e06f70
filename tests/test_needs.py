"""tests/needs.require: a missing optional package skips a test with the install command, and fails it under CI."""

import pytest
from needs import require


def test_a_present_module_is_returned():
    assert require("json", "pip install nothing").dumps([1]) == "[1]"


def test_missing_module_skips_outside_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no_such_module_x is missing .*install it with: pip install x"):
        require("no_such_module_x", "pip install x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install it with: pip install x"):
        require("no_such_module_x", "pip install x")
