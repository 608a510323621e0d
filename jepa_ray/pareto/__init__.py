"""Pareto fronts of finished sweep trials read from MLflow (objectives, dominance, the readers,
the front, fronts compared, the tables and plots, the ℓ0 calibration, the export of
Pareto-optimal checkpoints) and `python -m jepa_ray.pareto` (`jepa-pareto`)."""

from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.pareto.calibration import calibration_data, write_calibration_plot
from jepa_ray.pareto.cli import build_parser, main
from jepa_ray.pareto.columns import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, KEY_PARAMS
from jepa_ray.pareto.comparison import Comparison, compare, resolve_scope, sweep_stats
from jepa_ray.pareto.dominance import hypervolume, knee_point, non_dominated, nondominated_ranks
from jepa_ray.pareto.export import (
    check_out_dir,
    export,
    log_to_parent,
    register_encoders,
    write_parquet,
    write_summary,
)
from jepa_ray.pareto.front import ParetoResult, compute_front, extract
from jepa_ray.pareto.objectives import (
    Filter,
    Objective,
    default_reference,
    parse_filter,
    parse_objectives,
    parse_reference,
)
from jepa_ray.pareto.plot import staircase, write_plot
from jepa_ray.pareto.reader import read_params, read_sweeps, read_trials
from jepa_ray.pareto.report import format_comparison, format_table

__all__ = [
    "Comparison",
    "DEFAULT_EXPERIMENT",
    "DEFAULT_OBJECTIVES",
    "DEFAULT_TRACKING_URI",
    "Filter",
    "KEY_PARAMS",
    "Objective",
    "ParetoResult",
    "build_parser",
    "calibration_data",
    "check_out_dir",
    "compare",
    "compute_front",
    "default_reference",
    "export",
    "extract",
    "format_comparison",
    "format_table",
    "hypervolume",
    "knee_point",
    "log_to_parent",
    "main",
    "non_dominated",
    "nondominated_ranks",
    "parse_filter",
    "parse_objectives",
    "parse_reference",
    "read_params",
    "read_sweeps",
    "read_trials",
    "register_encoders",
    "resolve_scope",
    "staircase",
    "sweep_stats",
    "write_calibration_plot",
    "write_parquet",
    "write_plot",
    "write_summary",
]
