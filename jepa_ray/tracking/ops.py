"""The MLflow writes of a sweep as named operations on picklable data, so that the writer can run
them in another thread or another process (jepa_ray.tracking.writer): each takes the client, the
run's id and picklable arguments."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from jepa_ray.contract import FAILURE, PARENT, PRECISION, RESUMED, TRIAL_ID
from jepa_ray.tracking import store

logger = logging.getLogger(__name__)


def create_run(c, run_id, exp_id: str, run_name: str, tags: dict[str, str]) -> str:
    return c.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def created_run(c, exp_id: str, run_name: str, tags: dict[str, str]) -> str | None:
    """The run an earlier try of create_run made with these tags (its reply lost), found by its
    sweep's and its Tune trial's ids; None if there is none or the tags name neither."""
    if PARENT not in tags or TRIAL_ID not in tags:
        return None
    query = f"tags.`{PARENT}` = '{tags[PARENT]}' AND tags.`{TRIAL_ID}` = '{tags[TRIAL_ID]}'"
    runs = c.search_runs([exp_id], query, max_results=1)
    return runs[0].info.run_id if runs else None


def log_config(c, run_id: str, config: dict[str, Any]) -> None:
    """The trial's resolved config as the artifact config.json."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
        c.log_artifact(run_id, str(path))


def set_tags(c, run_id: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def reopen(c, run_id: str, had_failure: bool, tags: dict[str, str]) -> None:
    """A resumed trial's run, RUNNING again under its new trial's tags."""
    if had_failure:
        c.delete_tag(run_id, FAILURE)
    c.update_run(run_id, status="RUNNING")
    set_tags(c, run_id, {RESUMED: "true", **tags})


def finish(c, run_id: str, tags: dict[str, str], checkpoint: str | None, target: float | None, status: str) -> None:
    """A trial's end: its tags, its checkpoint's artifacts, its status."""
    set_tags(c, run_id, tags)
    if checkpoint:
        checkpoint_artifacts(c, run_id, checkpoint, target)
    c.set_terminated(run_id, status)


def checkpoint_artifacts(c, run_id: str, uri: str, target_density: float | None) -> None:
    """The activation-rate plot (from the checkpoint's metrics), the checkpoint's metrics.json and
    config.json (what trained: the precision `auto` resolved to, also tagged); the weights stay
    in Ray storage, referenced by the checkpoint tag."""
    from jepa_ray.tracking.plots import activation_plot
    from jepa_ray.train import checkpoint as ckpt_lib

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "checkpoint"
            for name in ckpt_lib.copy_files(uri, local, (ckpt_lib.METRICS_FILE, ckpt_lib.CONFIG_FILE)):
                c.log_artifact(run_id, str(local / name), "checkpoint")
                if name == ckpt_lib.CONFIG_FILE:
                    c.set_tag(run_id, PRECISION, json.loads((local / name).read_text())["system"]["precision"])
            rates = ckpt_lib.read_text(uri, ckpt_lib.ACTIVATION_FILE)
            if rates is not None:
                png = activation_plot(
                    json.loads(rates),
                    Path(tmp) / "activation_rates.png",
                    "activation rate of each z dimension (test split)",
                    target_density=target_density,
                )
                c.log_artifact(run_id, str(png))
    except Exception as err:  # artifacts are a convenience: never fail the sweep for them
        logger.warning("could not log artifacts of %s for run %s: %s", uri, run_id, err)


OPS = {
    **{f.__name__: f for f in (create_run, log_config, set_tags, reopen, finish)},
    "log_params": store.log_params,
    "dataset_input": store.log_dataset_input,
    "log_batch": store.log_metric_entities,
}
