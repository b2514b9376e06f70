"""bench/bench_study.py's replay of trial lengths on independent slots, against schedules worked out by hand."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

spec = importlib.util.spec_from_file_location("bench_study", Path(__file__).parents[1] / "bench" / "bench_study.py")
bench_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_study)


@pytest.mark.parametrize("lengths, slots, lockstep, expected", [
    ([10, 1, 1, 1], 2, True, 11.0),    # batches (10, 1) and (1, 1): 10 + 1
    ([10, 1, 1, 1], 2, False, 10.0),   # slot A: 10; slot B: 1, 1, 1 -> 3
    ([3, 5, 2, 4, 1], 2, True, 10.0),  # (3, 5) + (2, 4) + (1): 5 + 4 + 1
    ([3, 5, 2, 4, 1], 2, False, 9.0),  # A: 3, then 2 (3 -> 5); at 5 both free: 4 (5 -> 9) and 1 (5 -> 6)
    ([4, 4, 4], 1, True, 12.0),
    ([4, 4, 4], 1, False, 12.0),
])
def test_makespan(lengths, slots, lockstep, expected):
    assert bench_study.makespan(lengths, slots, lockstep) == expected
