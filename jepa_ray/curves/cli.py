"""`python -m jepa_ray.curves`: record a grid's learning curves into a table, list the grids."""

from __future__ import annotations

import argparse
import signal
import sys

from jepa_ray.curves.grids import GRIDS, grid
from jepa_ray.curves.record import Recorder
from jepa_ray.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jepa_ray.curves",
        description="Record real learning curves into a Parquet table (resumable: rows already in "
        "the table are skipped), or list the recording grids.",
        allow_abbrev=False,
    )
    sub = p.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train a grid's trials into TABLE", allow_abbrev=False)
    rec.add_argument("--grid", required=True, help="a recording grid (see `list`)")
    rec.add_argument("--table", required=True, help="the Parquet table to create or extend")
    rec.add_argument(
        "--data-dir", help="the dataset's directory, for grids that read one (e.g. ../shared/data/cifar10)"
    )
    rec.add_argument("--jobs", type=int, default=2, help="trials trained at a time, one thread each (default 2)")
    rec.add_argument("--limit", type=int, help="record at most this many new rows, then stop")
    rec.add_argument(
        "--work-dir", help="where the trials' checkpoints and logs go while they train (default: a temp dir)"
    )
    rec.add_argument(
        "--mix", action="store_true", help="add to a table recorded with another grid, setting or training revision"
    )
    sub.add_parser("list", help="the recording grids", allow_abbrev=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for g in GRIDS.values():
            n = len(g.points())
            print(f"{g.name:14s} {n:3d} trials ({len(g.configurations())} configurations): {g.doc}")
        return 0
    try:
        recorder = Recorder(
            grid(args.grid),
            args.table,
            data_dir=args.data_dir,
            jobs=args.jobs,
            mix=args.mix,
            limit=args.limit,
            work_dir=args.work_dir,
            log=lambda m: print(m, flush=True),
        )
        recorder.prepare()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_now)
    # A job started in the background (`cmd &`) inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt: `kill -INT` would do nothing instead of draining.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        recorder.run()
    except (KeyboardInterrupt, SystemExit):
        print("stopped: the rows recorded so far are in the table; run again to resume", file=sys.stderr)
        return 130
    if recorder.drained:
        print("stopped after the rows in flight: they are in the table; run again to resume", file=sys.stderr)
        return 130
    return 0


def _stop_now(signum: int, frame) -> None:
    """SIGTERM stops at once, as a second Ctrl-C does: the trainers in flight are killed."""
    raise SystemExit(128 + signum)
