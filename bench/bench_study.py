"""Always-full runner vs a lock-step loop (study.lockstep=true): the same study (same sampler seed, same number of
trials, tiny toycity trials of uneven length: the median pruner stops some at their first evaluations) run both ways,
each in a directory of its own, and each one's slot utilisation and wall time, read from the trials' own start and end
times in the Optuna storage:

    utilisation = sum of trial durations / (n_jobs * (last trial end - first trial start))

    python bench/bench_study.py                              # local processes (submitit_local), 4 slots
    python bench/bench_study.py --launcher slurm --slots 4   # the test SLURM cluster (scripts/slurm_cluster.py)

Prints one JSON object: per mode the utilisation, the study's wall time, the trial states and the best value,
and the lock-step / always-full wall-time ratio (goal: utilisation >= 0.95 with >= 4 slots, ratio >= 1.3).

On a small CPU machine the slots share its cores, so a trial runs faster while its lock-step partners idle and
the measured wall times hide what a free slot costs on GPU nodes. ``replay`` therefore also schedules the
always-full run's measured trial lengths (in asking order) both ways on 1 to 16 independent slots, where a
trial's length does not depend on what else runs; ``--replay URL STUDY`` does only that, for any stored study
(e.g. the default study's search):

    python bench/bench_study.py --replay sqlite:///multirun/optuna.db default
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
# Trials long enough that training, not process start-up, sets their length: pruning at the first evaluations
# (every 40 iterations) makes them uneven, as in the default study.
STUDY = ["sweeps=smoke", "hydra.sweeper.sampler.seed=0", "trainer.max_iters=240", "trainer.eval_every=40",
         "trainer.log_every=40", "trainer.num_threads=1", "model.base_channels=8",
         "pruner=median", "study.pruner.n_startup_trials=2"]
SLURM = ["hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20"]


def utilisation(study: optuna.Study, n_jobs: int) -> dict:
    trials = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    wall = (end - start).total_seconds()
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    states = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    done = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"utilisation": round(busy / (n_jobs * wall), 3), "wall_s": round(wall, 1),
            "mean_trial_s": round(busy / len(trials), 1), "states": states,
            "best_value": round(max(done), 4) if done else None}


def makespan(lengths: list[float], slots: int, lockstep: bool) -> float:
    """Wall time of trials of these lengths, asked in this order, on ``slots`` independent slots: lock-step runs
    them in batches of ``slots`` (a batch lasts as long as its longest trial); always-full gives each trial the
    slot that frees first."""
    if lockstep:
        return sum(max(lengths[i:i + slots]) for i in range(0, len(lengths), slots))
    free = [0.0] * slots  # when each slot frees (a heap)
    for length in lengths:
        heapq.heappush(free, heapq.heappop(free) + length)
    return max(free)


def replay(study: optuna.Study) -> dict:
    """Lock-step / always-full wall-time ratio of the study's search trials' measured lengths, per slot count."""
    lengths = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
               if t.datetime_start and t.datetime_complete and t.user_attrs.get("stage") != "confirm"]
    return {"trials": len(lengths), "lockstep_over_always_full": {
        n: round(makespan(lengths, n, True) / makespan(lengths, n, False), 2) for n in (1, 2, 4, 8, 16)}}


def run(mode: str, work: Path, args, extra: list[str]) -> dict:
    d = work / mode
    d.mkdir(parents=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *STUDY, *extra,
           f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.n_jobs={args.slots}",
           f"study.lockstep={'true' if mode == 'lockstep' else 'false'}",
           f"mlflow.tracking_uri=sqlite:///{d}/mlflow.db", f"hydra.sweep.dir={d}/multirun"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=d, capture_output=True, text=True,
                          env={**os.environ, "SEGSWEEP_CACHE": str(work / "cache")})
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: the study failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{d}/multirun/optuna.db")
    out = {**utilisation(study, args.slots), "command_s": round(time.perf_counter() - t0, 1)}
    return {**out, "replay": replay(study)} if mode == "always_full" else out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--slots", type=int, default=4, help="n_jobs: trials in flight")
    p.add_argument("--trials", type=int, default=24, help="n_trials of each study")
    p.add_argument("--keep", action="store_true", help="keep the studies' directories")
    p.add_argument("--replay", nargs=2, metavar=("STORAGE_URL", "STUDY"),
                   help="only replay a stored study's trial lengths on independent slots")
    args = p.parse_args()
    if args.replay:
        print(json.dumps(replay(optuna.load_study(study_name=args.replay[1], storage=args.replay[0]))))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_study_"))
    extra = ["hydra/launcher=submitit_local"]
    cluster = None
    if args.launcher == "slurm":
        sys.path.insert(0, str(ROOT / "scripts"))
        from slurm_cluster import SlurmCluster

        cluster = SlurmCluster(work / "slurm", cpus=args.slots)  # one job slot per trial in flight
        os.environ.update(cluster.up())
        extra = SLURM
    try:
        out = {"launcher": args.launcher, "slots": args.slots, "trials": args.trials, "cpus": os.cpu_count()}
        for mode in ("lockstep", "always_full"):  # the same study, each in its own directory
            out[mode] = run(mode, work, args, extra)
            print(f"# {mode}: {out[mode]}", file=sys.stderr, flush=True)
        out["wall_ratio_lockstep_over_always_full"] = round(out["lockstep"]["wall_s"] / out["always_full"]["wall_s"], 2)
        print(json.dumps(out))
    finally:
        if cluster is not None:
            cluster.down()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
