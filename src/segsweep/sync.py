"""``python -m segsweep.sync <run dir or multirun dir> [--dry-run]``: send MLflow what runs logged while it was away.

A run that ended with its tracking store away left ``mlflow_unsent.json`` in its directory
(``segsweep.tracking.outbox``): the calls the store never took, in order (the run's creation when it never existed,
params, tags, metric steps, artifacts, the final status). Sync sends them into the same run (created, under the
study's parent run, when it never was), then every value of the run's ``metrics.jsonl`` that MLflow still lacks
at its step (those the writer held back when too many waited), and removes the marker. Every call may be sent
twice without changing anything (see ``outbox``), and the run's id is written to the marker as soon as it is
created: a sync cut short is run again; a second sync finds no marker and sends nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segsweep.checks import ConfigError
from segsweep.stores import check_mlflow, redact
from segsweep.tracking import outbox
from segsweep.tracking.mlflow_writer import open_client, retry, send


def marked(root: Path) -> list[Path]:
    """The markers of ``root`` (a run directory) or of every run directory under it (a multirun directory)."""
    own = root / outbox.MARKER
    return [own] if own.is_file() else sorted(root.rglob(outbox.MARKER))


def hint(root: Path) -> str | None:
    """The line a study's end prints when some of its runs owe MLflow calls."""
    n = len(marked(root))
    return f"MLflow lacks what {n} run(s) logged while it was away: python -m segsweep.sync {root}" if n else None


def from_mirror(client, run: outbox.RunId, marker: Path, mirror: str | None, since_ms: int) -> list[list]:
    """The metric values of the run's mirror file (metrics.jsonl) that MLflow lacks; none without one."""
    if not mirror:
        return []
    return retry(lambda: outbox.missing_metrics(client, run.run_id, marker.parent / mirror, since_ms))


def sync_run(marker: Path, dry_run: bool = False) -> str:
    """Send one run's owed calls; returns the line that says what was (or would be) sent."""
    run, ops, mirror, since_ms = outbox.load(marker)
    check_mlflow(True, run.tracking_uri, run.experiment_name)  # one line, in seconds, if the store is still away
    client = open_client(run.tracking_uri)
    if run.run_id is not None:
        ops = [op for op in ops if op[0] != "create"]  # created by the writer or by an earlier sync
    body, ends = [op for op in ops if op[0] != "end"], [op for op in ops if op[0] == "end"]
    if dry_run:
        queued = {(k, s) for kind, data in ops if kind == "metrics" for k, _, _, s in data}
        n = sum((k, s) not in queued for k, _, _, s in from_mirror(client, run, marker, mirror, since_ms))
        return (f"{marker.parent}: would send {outbox.describe(ops)}"
                f"{f' and {n} metric value(s) from {mirror}' if n else ''} to {redact(run.tracking_uri)}")
    for op in body:
        if op[0] == "artifact" and not Path(op[1][0]).exists():
            print(f"{marker.parent}: artifact {op[1][0]} is gone; not sent", file=sys.stderr)
            continue
        retry(lambda op=op: send(client, run, op))
        if op[0] == "create":  # from now on this run is the one: a second sync must not create another
            outbox.save(marker.parent, run, ops, mirror, since_ms / 1000)
    extra = from_mirror(client, run, marker, mirror, since_ms)
    for i in range(0, len(extra), outbox.BATCH):
        retry(lambda chunk=extra[i : i + outbox.BATCH]: send(client, run, ("metrics", chunk)))
    for op in ends:
        retry(lambda op=op: send(client, run, op))
    marker.unlink()
    return (f"{marker.parent}: sent {outbox.describe(ops)}"
            f"{f' and {len(extra)} metric value(s) from {mirror}' if extra else ''} to run {run.run_id} "
            f"in {redact(run.tracking_uri)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m segsweep.sync", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path, help="a run directory, or a multirun (study) directory")
    ap.add_argument("--dry-run", action="store_true", help="list what would be sent; send nothing")
    a = ap.parse_args(argv)
    if not a.path.is_dir():
        ap.error(f"{a.path} is not a directory")
    markers = marked(a.path)
    if not markers:
        print(f"nothing to sync under {a.path}: no run directory holds {outbox.MARKER}")
        return 0
    try:
        for m in markers:
            print(sync_run(m, a.dry_run))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
