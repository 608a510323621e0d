"""The MLflow reads and writes of the sweep driver and the Pareto export: experiments, the sweep
and trial runs (paged searches), params and finite metrics in batches."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jepa_ray.contract import (
    EXPERIMENT_KIND,
    FAILURE,
    FAILURE_KIND,
    PARENT,
    ROLE,
    ROLE_SWEEP,
    SOURCE_COMMIT,
    SOURCE_NAME,
    SOURCE_TYPE,
    SWEEP_NAME,
    TRAINING_KIND,
    FailureKind,
)
from jepa_ray.errors import one_line

SEARCH_PAGE_SIZE = 1000


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    # Against a tracking server MLflow prints "View run ... / View experiment ..." (two lines and a
    # get_run request) whenever a run ends: 2,000 lines in a 1,000-trial sweep, whose console has
    # a line per trial and the experiment's address already.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of the experiment `name`, created when missing (restored when deleted)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, tags={EXPERIMENT_KIND: TRAINING_KIND})
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    mark_training_experiment(c, exp)
    return exp.experiment_id


def find_experiment(tracking_uri: str, name: str) -> str | None:
    """The id of the live experiment `name`, or None; reads only."""
    exp = client(tracking_uri).get_experiment_by_name(name)
    return exp.experiment_id if exp is not None and exp.lifecycle_stage != "deleted" else None


def mark_training_experiment(c, exp) -> None:
    """Tag an experiment made before the tag existed, so that MLflow 3 opens it on its training
    runs rather than on the GenAI overview it infers for untagged experiments."""
    if exp.tags.get(EXPERIMENT_KIND) != TRAINING_KIND:
        c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)


def source_tags(path: str | os.PathLike | None = None) -> dict[str, str]:
    """MLflow's source tags for this process (the Source and Version columns of the runs table):
    the entry point relative to the checkout, and the commit the code runs at."""
    root = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    entry = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    name = "python"
    if entry is not None:
        name = str(entry.relative_to(root)) if entry.is_relative_to(root) else entry.name
    tags = {SOURCE_NAME: name, SOURCE_TYPE: "LOCAL"}
    commit = git_commit(root).removesuffix("-dirty")
    if commit != "unknown":
        tags[SOURCE_COMMIT] = commit
    return tags


def log_dataset_input(c, run_id: str, data, train_images: int, test_images: int) -> None:
    """The trial's data as an MLflow dataset input (the runs table's Dataset column): its name,
    where it comes from, the split sizes, and a digest of what selects the images."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = data.data_dir or f"jepa_ray:{data.dataset}"
    profile = {"train_images": int(train_images), "test_images": int(test_images)}
    selection = [data.dataset, source, data.max_train_samples, data.max_test_samples, train_images, test_images]
    digest = hashlib.sha256(json.dumps(selection).encode()).hexdigest()[:16]
    dataset = Dataset(data.dataset, digest, "local", json.dumps({"uri": source}), profile=json.dumps(profile))
    c.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])])


COMMIT_ENV = "JEPA_RAY_GIT_COMMIT"


def git_commit(path: str | os.PathLike = ".") -> str:
    """The commit of the checkout that runs the sweep; outside git (a `ray job submit` working
    dir, a tree `ray up` synced without .git) `$JEPA_RAY_GIT_COMMIT`, else 'unknown'."""
    fallback = os.environ.get(COMMIT_ENV, "").strip() or "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else fallback
    except (OSError, subprocess.SubprocessError):
        return fallback


def find_sweep_run(tracking_uri: str, exp_id: str, sweep_name: str | None = None):
    """The parent run of a sweep by name, or the newest sweep of the experiment (None if none)."""
    query = f"tags.`{ROLE}` = '{ROLE_SWEEP}'"
    if sweep_name:
        query += f" and tags.`{SWEEP_NAME}` = '{sweep_name}'"
    runs = client(tracking_uri).search_runs([exp_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def start_sweep_run(
    tracking_uri: str, exp_id: str, sweep_name: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    c = client(tracking_uri)
    run = c.create_run(exp_id, run_name=sweep_name, tags={ROLE: ROLE_SWEEP, SWEEP_NAME: sweep_name, **tags})
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def search_all_runs(c, exp_ids: list[str], query: str = "", page_size: int = SEARCH_PAGE_SIZE) -> list:
    """Every run of a search, page after page."""
    runs, token = [], None
    while True:
        page = c.search_runs(exp_ids, query, max_results=page_size, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_runs(tracking_uri: str, exp_id: str, parent_run_id: str, status: str | None = None) -> list:
    """Every child run of a sweep (all statuses, or only those with `status`: MLflow filters them,
    so the others are never loaded)."""
    query = f"tags.`{PARENT}` = '{parent_run_id}'" + (f" AND attributes.status = '{status}'" if status else "")
    return search_all_runs(client(tracking_uri), [exp_id], query)


def fail_running_trials(tracking_uri: str, exp_id: str, parent_run_id: str, why: str) -> int:
    """End the sweep's child runs still RUNNING (trials stopped without a report) as FAILED
    with the reason; returns how many."""
    c = client(tracking_uri)
    # Only the RUNNING ones are read: reading every run of a 1,000-trial sweep at its end loads the
    # store's ORM objects for all of them into the driver's process.
    running = trial_runs(tracking_uri, exp_id, parent_run_id, status="RUNNING")
    for run in running:
        c.set_tag(run.info.run_id, FAILURE, one_line(why))
        c.set_tag(run.info.run_id, FAILURE_KIND, FailureKind.UNFINISHED.value)
        c.set_terminated(run.info.run_id, "FAILED")
    return len(running)


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_text(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def _param_text(value: Any) -> str:
    return ("None" if value is None else str(value))[:6000]


def metric_entities(metrics: dict[str, Any], step: int) -> list:
    """MLflow Metric entities of the numeric, finite values (MLflow rejects NaN in some stores;
    strings and booleans are not metrics)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]


def log_metrics(c, run_id: str, metrics: dict[str, Any], step: int) -> None:
    """Numeric, finite metrics only, in batches."""
    log_metric_entities(c, run_id, metric_entities(metrics, step))


def log_metric_entities(c, run_id: str, items: list) -> None:
    """Metric entities in calls under MLflow's log_batch limit."""
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])
