"""segsweep.io: a file is replaced whole or left as it was; a lock holds other processes off until released."""

import multiprocessing as mp
import time

import pytest

from segsweep.io import atomic_path, atomic_write, file_lock

pytestmark = pytest.mark.unit


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    atomic_write(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target  # the format's suffix is kept
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def _hold(path, seconds, started):
    with file_lock(path):
        started.set()
        time.sleep(seconds)


def test_file_lock_waits_for_the_process_holding_it(tmp_path):
    lock = tmp_path / "sub" / ".lock"  # its folder is created
    started = mp.get_context("spawn").Event()
    holder = mp.get_context("spawn").Process(target=_hold, args=(lock, 1.0, started))
    holder.start()
    try:
        assert started.wait(60)
        t0 = time.monotonic()
        with file_lock(lock):
            waited = time.monotonic() - t0
        assert waited > 0.5, waited  # held off until the holder released it (~1 s after it took it)
    finally:
        holder.join(30)
