"""The study report: the answer with its interval and paired test, recomputed from the stored per-seed values.

    python -m segsweep.report multirun/<study> [multirun/<other> ...] [--out DIR]
    python -m segsweep.report --storage sqlite:///multirun/default/optuna.db --study default [--study other]

writes ``report.md`` and a self-contained ``report.html`` (figures embedded as base64 PNG) into ``--out`` (default:
``<sweep dir>/study_summary/`` for one study directory, beside the sweep's summary, ``./report/`` otherwise). The
sweep writes the same files there (``segsweep.sweep.summary``) and logs them as ``study/report.*`` on the parent
run. Every number comes from the trials' records written by ``segsweep.seeds`` (``seed_values``, ``seed_iou``,
``seed_monitors``: ``segsweep.sweep.record``) through ``segsweep.stats``, so anyone with the storage can recompute
it: ``numbers`` builds them once (``build``), ``render`` lays them out (Markdown, HTML), ``parent_run_record``
gives the study's MLflow tags. The verdict is drawn from the confirmation trials (fresh seeds,
``segsweep.sweep.confirm``) when the study has them, else from the search (and says so).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import optuna

from segsweep.report.numbers import StudyReport, build, fmt_ci, parent_run_record
from segsweep.report.render import blocks, write_report

__all__ = ["StudyReport", "blocks", "build", "fmt_ci", "main", "parent_run_record", "write_report"]


def _from_dir(path: Path) -> optuna.Study:
    db = path / "optuna.db"
    if not db.exists():
        raise SystemExit(f"{db} does not exist: give a sweep directory (multirun/<study>) or --storage/--study")
    storage = f"sqlite:///{db.resolve()}"
    names = optuna.study.get_all_study_names(storage)
    name = path.name if path.name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise SystemExit(f"{db} holds the studies {names}: name one with --storage {storage} --study NAME")
    return optuna.load_study(study_name=name, storage=storage)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m segsweep.report", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path, help="sweep directories (multirun/<study>)")
    ap.add_argument("--storage", help="an Optuna storage URL")
    ap.add_argument("--study", action="append", default=[], help="a study in --storage (repeatable)")
    ap.add_argument("--out", type=Path, help="where report.md and report.html go")
    ap.add_argument("--min-effect", type=float, help="the smallest difference worth having (default: the study's "
                    "study.min_effect)")
    a = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = [_from_dir(d) for d in a.dirs]
    if a.study and not a.storage:
        ap.error("--study needs --storage")
    studies += [optuna.load_study(study_name=n, storage=a.storage) for n in a.study]
    if not studies:
        ap.error("give a sweep directory or --storage URL --study NAME")
    one_dir = len(studies) == 1 and len(a.dirs) == 1
    out = a.out or (a.dirs[0] / "study_summary" if one_dir else Path("report"))
    summary = a.dirs[0] / "study_summary" if one_dir else None
    reports = [build(s, a.min_effect) for s in studies]
    paths = write_report(studies, out, summary, reports=reports)
    print("\n".join(r.answer for r in reports))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0
