"""How long a run or a study takes to stop, with its one line, when a store does not answer (issue 18: <= 10 s).

Each case is the real command (``python train.py ...`` or ``python train.py -m sweeps=smoke ...``) run as a
subprocess, timed from its start to its exit, ``--repeats`` times (the median is printed). The baseline, measured in
the same run, is the same command stopped by a plain config error (``trainer.checkpoint_every`` not a multiple of
``trainer.log_every``), which reaches no store: Python, torch and Hydra starting, the config composed and
validated. ``vs_config_error`` is the ratio; ``store_s`` the difference, what the store check itself costs.

- refused: nobody listens on the port (the kernel answers at once);
- silent: a socket that accepts the connection and never answers (a hung server, a firewall that drops): the
  check's time-out (``segsweep.stores.TIMEOUT_S``) is what it costs;
- read-only: a SQLite store in a folder nobody may write (``/sys/fs``).

    python bench/bench_preflight.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def silent_listener() -> tuple[socket.socket, int]:
    """A socket that accepts connections (the kernel's backlog) and never reads or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, s.getsockname()[1]


def timed(args: list[str], workdir: Path) -> tuple[float, int, list[str]]:
    env = {**os.environ, "SEGSWEEP_CACHE": str(workdir / "cache"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, proc.returncode, [x for x in (proc.stdout + proc.stderr).splitlines() if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    silent, silent_port = silent_listener()
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        mlflow_ok = f"mlflow.tracking_uri=sqlite:///{w}/mlflow.db"
        study = ["-m", "sweeps=smoke", f"hydra.sweep.dir={w}/multirun", mlflow_ok]
        single = ["debug=tiny", f"hydra.run.dir={w}/run"]
        pg = "hydra.sweeper.storage=postgresql+psycopg2://u:pw@127.0.0.1:{}/db"
        cases = {
            "run: config error (baseline)": [*single, "trainer.log_every=3", "trainer.checkpoint_every=2"],
            "run: mlflow http refused": [*single, f"mlflow.tracking_uri=http://127.0.0.1:{closed_port()}"],
            "run: mlflow http silent": [*single, f"mlflow.tracking_uri=http://127.0.0.1:{silent_port}"],
            "run: mlflow sqlite read-only": [*single, "mlflow.tracking_uri=sqlite:////sys/fs/segsweep/mlflow.db"],
            "study: config error (baseline)": [*study, "trainer.checkpoint_every=2"],
            "study: optuna postgresql refused": [*study, pg.format(closed_port())],
            "study: optuna postgresql silent": [*study, pg.format(silent_port)],
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        said: dict[str, str] = {}
        for _ in range(a.repeats):  # rounds alternate the cases: drift on a shared machine hits all alike
            for name, args in cases.items():
                s, rc, out = timed(args, w)
                if rc != 1 or len(out) != 1:
                    raise SystemExit(f"{name}: expected exit 1 with one line, got {rc}:\n" + "\n".join(out[-20:]))
                times[name].append(s)
                said[name] = out[0]
    silent.close()
    print(f"{'case':34s} {'median_s':>8s} {'max_s':>6s} {'vs_config_error':>15s} {'store_s':>7s}")
    for name, ts in times.items():
        base = statistics.median(times[name.split(":")[0] + ": config error (baseline)"])
        med = statistics.median(ts)
        print(f"{name:34s} {med:8.2f} {max(ts):6.2f} {med / base:15.2f} {med - base:7.2f}")
    print()
    for name, line in said.items():
        print(f"{name}:\n  {line.split('] ', 1)[-1]}")


if __name__ == "__main__":
    main()
