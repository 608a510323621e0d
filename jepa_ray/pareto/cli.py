"""`python -m jepa_ray.pareto` (`jepa-pareto`): `--experiment NAME --out DIR [--tracking-uri URI]
[--sweep RUN_ID] [--objectives linear_acc:max,l0_density:min] [--filter EXPR]
[--reference name=value,...] [--register MODEL_NAME] [--overwrite]`; `--experiment` and `--sweep`
repeat to compare several fronts on one plot (`--group-by`), `--l0-scale` and `--no-labels`
shape the plots."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jepa_ray import tracking
from jepa_ray.cluster import check_tracking_uri
from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.errors import UsageError, one_line
from jepa_ray.pareto.columns import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from jepa_ray.pareto.comparison import GROUP_BY, Comparison, compare
from jepa_ray.pareto.export import OUTPUT_FILES, check_out_dir, export, log_to_parent
from jepa_ray.pareto.objectives import parse_filter, parse_objectives, parse_reference
from jepa_ray.pareto.plot import L0_SCALES
from jepa_ray.pareto.report import format_comparison


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m jepa_ray.pareto", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--experiment",
        action="append",
        default=None,
        metavar="NAME",
        help=f"MLflow experiment name (repeatable: fronts compared; default: the --sweep runs' experiments, "
        f"else {DEFAULT_EXPERIMENT})",
    )
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
        help="only the trials of this sweep parent run (repeatable: one front per sweep, see --group-by)",
    )
    p.add_argument(
        "--all-sweeps",
        action="store_true",
        help="pool every sweep of the experiment, a config trained twice with the same seed shown once "
        "(default without --sweep: the newest sweep of one experiment; every sweep of several)",
    )
    p.add_argument(
        "--group-by",
        choices=GROUP_BY,
        default="auto",
        help="one front per experiment, per sweep, or one pooled front (none); auto: per experiment when several "
        "--experiment are given, else per sweep when several --sweep are, else none (default %(default)s)",
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
        help="hypervolume reference point, one for all fronts (default: 0 for accuracies, 1 for densities, "
        "else the worst value over all of them)",
    )
    p.add_argument(
        "--register",
        default=None,
        metavar="MODEL_NAME",
        help="register the exported encoders in the MLflow Model Registry under this name",
    )
    p.add_argument(
        "--l0-scale",
        choices=L0_SCALES,
        default="auto",
        help="scale of the l0-density axes: auto is log when the values span a decade or more (default %(default)s)",
    )
    p.add_argument("--no-labels", action="store_true", help="do not label front points with their key params")
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
        if args.all_sweeps and args.sweep:
            raise UsageError("--all-sweeps and --sweep exclude each other: pool every sweep, or name the ones")
        pooled = args.all_sweeps or len(args.experiment or []) > 1  # several experiments: each one's every sweep
        sweeps = args.sweep or ([] if pooled else newest_sweeps(args.tracking_uri, args.experiment))
        result = compare(
            args.tracking_uri,
            args.experiment,
            sweeps,
            group_by=args.group_by,
            objectives=objectives,
            filters=filters,
            reference=reference,
            dedupe=pooled,
        )
        out = export(
            result,
            out,
            overwrite=args.overwrite,
            register=args.register,
            tracking_uri=args.tracking_uri,
            l0_scale=args.l0_scale,
            labels=not args.no_labels,
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _is_mlflow_error(exc):
            raise
        print(f"error: MLflow at {args.tracking_uri}: {one_line(exc)}", file=sys.stderr)
        return 2
    _mark_training_experiments(args.tracking_uri, result)
    print(format_comparison(result))
    written = [out / name for name in OUTPUT_FILES if (out / name).is_file()]
    print(f"wrote {', '.join(map(str, written))} and {out / 'checkpoints'}")
    if not args.no_log:
        _log_to_parents(result, args.tracking_uri, written)
    return 0


def newest_sweeps(tracking_uri: str, experiments: list[str] | None) -> list[str]:
    """The newest sweep's parent run of each experiment (said on stdout; --all-sweeps pools them
    all). An experiment without sweeps: none (its trials are read as they are)."""
    found = []
    for name in experiments or [DEFAULT_EXPERIMENT]:
        exp_id = tracking.find_experiment(tracking_uri, name)
        parent = tracking.find_sweep_run(tracking_uri, exp_id) if exp_id else None
        if parent is not None:
            label = parent.data.tags.get(tracking.SWEEP_NAME, parent.info.run_name)
            print(f"exporting the newest sweep of {name}: {label} ({parent.info.run_id}); --all-sweeps pools them all")
            found.append(parent.info.run_id)
    return found


def _log_to_parents(result: Comparison, tracking_uri: str, files: list[Path]) -> None:
    """The --sweep runs, else every sweep with a trial in the result; a failure only warns
    (the export is already written)."""
    trials = result.overall.trials
    parents = result.overall.sweep_run_ids or sorted({s for s in trials["sweep_run_id"] if isinstance(s, str) and s})
    for parent in parents:
        try:
            log_to_parent(result, tracking_uri, parent, files)
        except Exception as exc:
            if not _is_mlflow_error(exc):
                raise
            print(f"warning: could not log the front to sweep run {parent}: {one_line(exc)}", file=sys.stderr)


def _mark_training_experiments(tracking_uri: str, result: Comparison) -> None:
    """Tag the exported experiments as training experiments (older sweeps left them untagged,
    so MLflow 3 opened them on its GenAI overview); a failure only warns."""
    c = tracking.client(tracking_uri)
    for name in sorted({e for e in result.overall.trials["experiment"] if isinstance(e, str) and e}):
        try:
            exp = c.get_experiment_by_name(name)
            if exp is not None:
                tracking.mark_training_experiment(c, exp)
        except Exception as exc:
            if not _is_mlflow_error(exc):
                raise
            print(f"warning: could not tag experiment {name!r}: {one_line(exc)}", file=sys.stderr)


def _is_mlflow_error(exc: BaseException) -> bool:
    errors = sys.modules.get("mlflow.exceptions")  # if mlflow was never imported, it raised nothing
    return errors is not None and isinstance(exc, errors.MlflowException)
