"""`python -m jepa_ray.pareto` (`jepa-pareto`): `--experiment NAME --out DIR [--tracking-uri URI]
[--sweep RUN_ID] [--objectives linear_acc:max,l0_density:min] [--filter EXPR]
[--reference name=value,...] [--register MODEL_NAME] [--overwrite]`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jepa_ray.cluster import check_tracking_uri
from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.errors import UsageError, one_line
from jepa_ray.pareto.columns import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from jepa_ray.pareto.export import check_out_dir, export, log_to_parent
from jepa_ray.pareto.front import ParetoResult, extract
from jepa_ray.pareto.objectives import parse_filter, parse_objectives, parse_reference
from jepa_ray.pareto.report import format_table


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m jepa_ray.pareto", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name (default %(default)s)")
    p.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or %(default)s)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="only the trials of this sweep parent run (repeatable: several sweeps together)",
    )
    p.add_argument(
        "--objectives", default=DEFAULT_OBJECTIVES, help="name:max|min, comma separated (default %(default)s)"
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="feasibility condition NAME OP NUMBER, e.g. linear_acc>=0.5 (repeatable)",
    )
    p.add_argument(
        "--reference",
        default="",
        metavar="NAME=VALUE,...",
        help="hypervolume reference point (default: 0 for accuracies, 1 for densities, else worst)",
    )
    p.add_argument(
        "--register",
        default=None,
        metavar="MODEL_NAME",
        help="register the exported encoders in the MLflow Model Registry under this name",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    p.add_argument("--no-log", action="store_true", help="do not log the plot and table to the sweep parent runs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        objectives = parse_objectives(args.objectives)
        filters = [parse_filter(f) for f in args.filter]
        reference = parse_reference(args.reference, objectives)
        out = check_out_dir(args.out, args.overwrite)
        check_tracking_uri(args.tracking_uri, multi_node=False, existing=True)
        result = extract(
            args.tracking_uri,
            args.experiment,
            sweep_run_ids=args.sweep or None,
            objectives=objectives,
            filters=filters,
            reference=reference,
        )
        out = export(result, out, overwrite=args.overwrite, register=args.register, tracking_uri=args.tracking_uri)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _is_mlflow_error(exc):
            raise
        print(f"error: MLflow at {args.tracking_uri}: {one_line(exc)}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"wrote {out / 'pareto.parquet'}, {out / 'pareto.png'} and {out / 'checkpoints'}")
    if not args.no_log:
        _log_to_parents(result, args.tracking_uri, [out / "pareto.png", out / "pareto.txt", out / "pareto.parquet"])
    return 0


def _log_to_parents(result: ParetoResult, tracking_uri: str, files: list[Path]) -> None:
    """The --sweep runs, else every sweep with a trial in the result; a failure only warns
    (the export is already written)."""
    parents = result.sweep_run_ids or sorted({s for s in result.trials["sweep_run_id"] if isinstance(s, str) and s})
    for parent in parents:
        try:
            log_to_parent(result, tracking_uri, parent, files)
        except Exception as exc:
            if not _is_mlflow_error(exc):
                raise
            print(f"warning: could not log the front to sweep run {parent}: {one_line(exc)}", file=sys.stderr)


def _is_mlflow_error(exc: BaseException) -> bool:
    errors = sys.modules.get("mlflow.exceptions")  # if mlflow was never imported, it raised nothing
    return errors is not None and isinstance(exc, errors.MlflowException)
