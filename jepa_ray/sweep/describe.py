"""What a sweep tells the user besides its progress lines: the parent run's description, the
front it found (printed and logged to the parent run), and how to open the runs in MLflow."""

from __future__ import annotations

import logging

from jepa_ray import pareto
from jepa_ray.cluster import attach_hint, sqlite_path
from jepa_ray.sweep.options import SweepOptions

logger = logging.getLogger("jepa_ray.sweep")


def print_front(opts: SweepOptions, objectives, parent_id: str):
    """The front of this sweep, printed as a table and logged to the sweep's parent run
    (the same code as `python -m jepa_ray.pareto`)."""
    try:
        result = pareto.extract(opts.tracking_uri, opts.experiment, sweep_run_ids=[parent_id], objectives=objectives)
    except (ValueError, LookupError) as err:  # UsageError included
        print(f"no Pareto front: {err}")
        return None
    print()
    print(pareto.format_table(result))
    try:
        pareto.log_to_parent(result, opts.tracking_uri, parent_id)
    except Exception as err:  # the table was printed; the artifact is a convenience
        logger.warning("could not log the front to the sweep run: %s", err)
    return result


def sweep_description(opts: SweepOptions, objectives, sampler: str) -> str:
    """The parent run's description (MLflow's run page shows it): how to read the sweep."""
    goals = ", ".join(f"{o.name} ({'higher' if o.direction == 'max' else 'lower'} is better)" for o in objectives)
    scheduler = (
        f"the {opts.scheduler} scheduler stops trials early (their runs end KILLED, tag `jepa_ray.stopped` says where)"
        if opts.scheduler != "fifo"
        else "every trial runs to its last epoch unless the collapse guard stops it"
    )
    replay = f" Its trials replay the recorded curves of {opts.replay} (no training)." if opts.replay else ""
    return (
        f"Sweep of the `{opts.space}` space with the {sampler} sampler; objectives {goals}.{replay} "
        f"Each nested run is one trial: its params are the resolved config, its per-epoch metrics "
        f"are at step = epoch, its final metrics are the objectives; {scheduler}.\n\n"
        f"This run's metric `sweep/hypervolume` is the hypervolume of the finished trials (reference "
        f"point: 0 for an accuracy, 1 for a density, else the worst value seen) at step = trial-epochs "
        f"spent. The Pareto front is in this run's artifacts (`pareto/`: table, plot, calibration of "
        f"measured against target l0); export its checkpoints with "
        f"`python -m jepa_ray.pareto --experiment {opts.experiment} --out DIR`."
    )


def mlflow_ui_command(tracking_uri: str, exp_id: str | None = None) -> str:
    """How to look at the sweep in MLflow. With the experiment, the link to its runs: MLflow
    3.17 opens an experiment on its GenAI overview unless the browser's view switch says
    otherwise (whatever the experiment's tags), and `workflowType=machine_learning` says so."""
    runs = f"#/experiments/{exp_id}/runs?workflowType=machine_learning" if exp_id else ""
    if tracking_uri.startswith("http"):
        return f"open {tracking_uri.rstrip('/')}/{runs} (or: {attach_hint()})"
    path = sqlite_path(tracking_uri)
    if path is not None:  # absolute: the command works from any directory
        tracking_uri = f"sqlite:///{path.resolve()}"
    command = f"mlflow ui --backend-store-uri {tracking_uri}"
    return f"{command}, then open http://127.0.0.1:5000/{runs}" if runs else command
