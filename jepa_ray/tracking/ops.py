"""The MLflow writes of a sweep as typed messages on picklable data, so that the writer can run
them in another thread or another process (jepa_ray.tracking.writer). Each operation is a frozen
dataclass naming its run and its fields, and applies itself to a client: what an operation is
called and what it does cannot drift apart, and the writer dispatches on nothing but the type.
The control messages (Flush, Stop) and the writer's replies (Flushed, Failed) are typed too."""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from jepa_ray.contract import PARENT, PRECISION, RESUMED, TRIAL_ID
from jepa_ray.tracking import store
from jepa_ray.tracking.plots import activation_plot
from jepa_ray.train import checkpoint as ckpt_lib

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from jepa_ray.config import DataConfig

logger = logging.getLogger(__name__)

_handles = itertools.count()


@dataclass(frozen=True)
class RunRef:
    """A run the writer creates (known by its handle until the writer's side has its id) or one
    that exists (its id)."""

    run_id: str | None = None
    handle: int = field(default_factory=lambda: next(_handles))

    def __repr__(self) -> str:
        return f"RunRef({self.run_id or self.handle})"

    @property
    def key(self) -> Hashable:
        """What identifies the run among queued operations: its id, else (a run the writer is
        to create) its handle; two references to one existing run share the key."""
        return self.run_id or ("handle", self.handle)


@dataclass(frozen=True)
class Op:
    """One write to the run `ref`; subclasses say what it writes."""

    ref: RunRef

    def apply(self, c: MlflowClient, run_id: str | None) -> str | None:
        """Write to the run `run_id` (None only for a run not created yet); the id of a run it
        created, else None."""
        raise NotImplementedError

    def again(self, c: MlflowClient, run_id: str | None) -> str | None:
        """Apply after a try that failed, perhaps only on the client's side (a request that timed
        out may still have been carried out): metric, param and tag writes repeat harmlessly
        (MLflow drops an identical metric), so by default it is simply applied again."""
        return self.apply(c, run_id)


@dataclass(frozen=True)
class CreateRun(Op):
    """A new run in the experiment `exp_id`; the writer knows it by `ref`'s handle from then on."""

    exp_id: str
    run_name: str
    tags: dict[str, str]

    def apply(self, c: MlflowClient, run_id: str | None) -> str:
        return c.create_run(self.exp_id, run_name=self.run_name, tags=self.tags).info.run_id

    def again(self, c: MlflowClient, run_id: str | None) -> str:
        """The run an earlier try made (its reply lost) is taken, not made twice."""
        return created_run(c, self.exp_id, self.run_name, self.tags) or self.apply(c, run_id)


@dataclass(frozen=True)
class Reopen(Op):
    """A resumed trial's run, RUNNING again under its new trial's tags, without the failure tags
    the stopped sweep gave it (`failure_tags`: the reason and its kind)."""

    failure_tags: tuple[str, ...]
    tags: dict[str, str]

    def apply(self, c: MlflowClient, run_id: str | None) -> None:
        for tag in self.failure_tags:
            c.delete_tag(run_id, tag)
        c.update_run(run_id, status="RUNNING")
        set_tags(c, run_id, {RESUMED: "true", **self.tags})


@dataclass(frozen=True)
class LogParams(Op):
    """The trial's flattened config as params."""

    params: dict[str, Any]

    def apply(self, c: MlflowClient, run_id: str | None) -> None:
        store.log_params(c, run_id, self.params)


@dataclass(frozen=True)
class LogConfig(Op):
    """The trial's resolved config as the artifact config.json."""

    config: dict[str, Any]

    def apply(self, c: MlflowClient, run_id: str | None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(self.config, indent=2, sort_keys=True))
            c.log_artifact(run_id, str(path))


@dataclass(frozen=True)
class DatasetInput(Op):
    """The trial's data and its split sizes as the run's dataset input."""

    data: DataConfig
    train_images: int
    test_images: int

    def apply(self, c: MlflowClient, run_id: str | None) -> None:
        store.log_dataset_input(c, run_id, self.data, self.train_images, self.test_images)


@dataclass(frozen=True)
class SetTags(Op):
    """Tags on the run."""

    tags: dict[str, str]

    def apply(self, c: MlflowClient, run_id: str | None) -> None:
        set_tags(c, run_id, self.tags)


@dataclass(frozen=True)
class LogBatch(Op):
    """Metric entities (tracking.store.metric_entities); the writer joins a run's queued ones."""

    metrics: list[Metric]

    def apply(self, c: MlflowClient, run_id: str | None) -> None:
        store.log_metric_entities(c, run_id, self.metrics)

    def joined(self, later: LogBatch) -> LogBatch:
        """This write and a later one to the same run, as one write (on this one's reference)."""
        return replace(self, metrics=self.metrics + later.metrics)


@dataclass(frozen=True)
class Finish(Op):
    """A trial's end: its tags, its checkpoint's artifacts (`checkpoint` given), its status."""

    tags: dict[str, str]
    checkpoint: str | None
    target_density: float | None
    status: str

    def apply(self, c: MlflowClient, run_id: str | None) -> None:
        set_tags(c, run_id, self.tags)
        if self.checkpoint:
            checkpoint_artifacts(c, run_id, self.checkpoint, self.target_density)
        c.set_terminated(run_id, self.status)


def created_run(c: MlflowClient, exp_id: str, run_name: str, tags: dict[str, str]) -> str | None:
    """The run an earlier try of CreateRun made with these tags (its reply lost), found by its
    sweep's and its Tune trial's ids; None if there is none or the tags name neither."""
    if PARENT not in tags or TRIAL_ID not in tags:
        return None
    query = f"tags.`{PARENT}` = '{tags[PARENT]}' AND tags.`{TRIAL_ID}` = '{tags[TRIAL_ID]}'"
    runs = c.search_runs([exp_id], query, max_results=1)
    return runs[0].info.run_id if runs else None


def set_tags(c: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Each tag with its own request (MLflow's set_tag)."""
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def checkpoint_artifacts(c: MlflowClient, run_id: str, uri: str, target_density: float | None) -> None:
    """The activation-rate plot (from the checkpoint's metrics), the checkpoint's metrics.json and
    config.json (what trained: the precision `auto` resolved to, also tagged); the weights stay
    in Ray storage, referenced by the checkpoint tag."""
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


# What travels to and from the writer besides the operations (jepa_ray.tracking.writer).


@dataclass(frozen=True)
class Flush:
    """Asks the writer to answer `Flushed(token)` once everything queued before it is written."""

    token: int


@dataclass(frozen=True)
class Stop:
    """Ends the writer once what was queued before it is written."""


@dataclass(frozen=True)
class Flushed:
    """The writer's answer to `Flush(token)`."""

    token: int


@dataclass(frozen=True)
class Failed:
    """The writer stopped writing: the one line saying why."""

    error: str


Message = Union[Op, Flush, Stop]
"""What goes to the writer."""
Reply = Union[Flushed, Failed]
"""What comes back from it."""
