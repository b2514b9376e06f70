"""The tests' poll loop (tests/polling.py) fails fast: an ended process and a broken predicate are reported at once,
not after the time-out; only "not there yet" errors are polled through, and a time-out names the last one."""

import json
import subprocess
import sys
import time

import optuna
import pytest
from polling import NotYet, not_yet, wait_for

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)


def test_an_ended_process_fails_at_once_with_its_exit_code_and_output(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print('the last words'); sys.exit(3)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.wait(timeout=30)
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)ended \(exit code 3\) before the file.*the last words"):
        wait_for(lambda: (tmp_path / "never").read_text(), proc, "the file", timeout=60)
    assert time.monotonic() - t0 < 5
    log = tmp_path / "run.log"
    log.write_text("line 1\nTraceback: boom\n")
    with pytest.raises(AssertionError, match=r"(?s)exit code 3.*Traceback: boom"):
        wait_for(lambda: False, proc, "anything", timeout=60, log=log)


def test_a_broken_predicate_raises_at_once():
    def predicate():
        return {}.missing  # a bug: not "not there yet"

    t0 = time.monotonic()
    with pytest.raises(AttributeError):
        wait_for(predicate, what="a bug", timeout=60)
    with pytest.raises(KeyError):  # a plain KeyError is a bug too (only optuna's missing study is not yet)
        wait_for(lambda: {}["trial"], what="a bug", timeout=60)
    assert time.monotonic() - t0 < 5


def test_not_yet_errors_are_polled_through_and_the_last_is_named_on_time_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    calls = []

    def predicate():
        calls.append(1)
        if len(calls) == 3:
            path.write_text('{"iteration": 2}\n')
        if len(calls) == 5:
            path.write_text('{"iteration": 2}\n{"itera')  # a line half written
        return [json.loads(line) for line in path.read_text().splitlines()][1:]

    with pytest.raises(AssertionError, match=r"timed out after 1 s waiting for a second line \(the last 'not yet' "
                                             r"error: JSONDecodeError"):
        wait_for(predicate, what="a second line", timeout=1, interval=0.01)
    assert len(calls) > 5

    later = tmp_path / "later.txt"

    def appears():
        calls.append(1)
        if len(calls) == 8:
            later.write_text("done")
        return later.read_text()  # FileNotFoundError until then
    calls.clear()
    assert wait_for(appears, what="a file", timeout=5, interval=0.01) == "done" and len(calls) == 8
    with pytest.raises(AssertionError, match="the last 'not yet' error: NotYet: trial 0 is WAITING"):
        wait_for(lambda: (_ for _ in ()).throw(NotYet("trial 0 is WAITING")), what="trial 0", timeout=0.1)


def test_optunas_missing_study_is_not_yet_and_other_key_errors_are_not(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"  # this test's own store: no process to race
    with pytest.raises(KeyError) as missing:
        optuna.load_study(study_name="smoke", storage=storage)
    assert not_yet(missing.value)
    assert not not_yet(KeyError("Record does not exist."))  # the same words, raised outside optuna
    assert not not_yet(ValueError("no such table"))
