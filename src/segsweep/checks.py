"""The one error type for a wrong config value, and the check that raises it naming the key."""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what was expected."""


def check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {got!r}")


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
