"""Pareto fronts of finished sweep trials read from MLflow (objectives, dominance, the readers,
the front, the table and plot, the export of Pareto-optimal checkpoints) and
`python -m jepa_ray.pareto` (`jepa-pareto`)."""

from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.pareto.cli import build_parser, main
from jepa_ray.pareto.columns import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, KEY_PARAMS
from jepa_ray.pareto.dominance import hypervolume, knee_point, non_dominated, nondominated_ranks
from jepa_ray.pareto.export import (
    check_out_dir,
    export,
    log_to_parent,
    prepare_out_dir,
    register_encoders,
    write_parquet,
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
from jepa_ray.pareto.reader import read_params, read_trials
from jepa_ray.pareto.report import format_table, write_plot

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_OBJECTIVES",
    "DEFAULT_TRACKING_URI",
    "Filter",
    "KEY_PARAMS",
    "Objective",
    "ParetoResult",
    "build_parser",
    "check_out_dir",
    "compute_front",
    "default_reference",
    "export",
    "extract",
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
    "prepare_out_dir",
    "read_params",
    "read_trials",
    "register_encoders",
    "write_parquet",
    "write_plot",
]
