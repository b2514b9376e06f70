"""Run a function on N gloo ranks (forked processes on this machine) and collect what each returns."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist


def _rank_main(fn: Callable, rank: int, size: int, rendezvous: str, queue, args: tuple) -> None:
    try:
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=size)
        try:
            queue.put((rank, "ok", fn(rank, size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException as e:  # sent back whole, so the test shows the rank's own error
        queue.put((rank, "error", (type(e).__name__, str(e), traceback.format_exc())))


def run_ranks(fn: Callable[..., Any], size: int, tmp: Path, *args: Any, timeout: float = 120) -> list[tuple]:
    """[(status, value)] per rank; status "ok" with fn's return value, or "error" with (type, message, tb)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    rendezvous = f"file://{tmp}/rendezvous"
    procs = [ctx.Process(target=_rank_main, args=(fn, r, size, rendezvous, queue, args)) for r in range(size)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(size):
        rank, status, value = queue.get(timeout=timeout)
        results[rank] = (status, value)
    for p in procs:
        p.join(timeout=30)
    return [results[r] for r in range(size)]
