"""Running one trial, the one way for the command line and the sweep alike: one worker trains
in this process; several train under a Ray Train TorchTrainer (DDP), whose controller can
forward rank 0's reports to a Tune trial. Both keep their checkpoints in the trial's store
(jepa_ray.train.store) and resume from it."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jepa_ray.config import from_dict, to_dict
from jepa_ray.contract import CHECKPOINT_URI, FINAL_RESULT, FailureKind
from jepa_ray.errors import StorageFull, one_line
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train.faults import Fault
from jepa_ray.train.guard import TrialFailure
from jepa_ray.train.loop import CheckpointWriter, fit
from jepa_ray.train.store import TrialStore, restorable_checkpoint

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig


class StoreReporter:
    """A worker's reporter: restores from the trial's newest checkpoint (else from
    `resume_from`, the store of an interrupted earlier run of the same trial), and reports by
    letting rank 0 write the checkpoint into the trial's store, then sending the metrics (with
    `checkpoint_uri` on rank 0 when a checkpoint was written) through `send` on every rank.

    The restore point is whatever the store holds, not what Ray Train last registered: a worker
    killed after writing a checkpoint but before the controller polled its report resumes
    after that epoch, so a lost worker costs at most the epoch in flight."""

    def __init__(
        self,
        store: TrialStore,
        *,
        send: Callable[[dict], None] | None = None,
        resume_from: str | None = None,
        is_main: bool = True,
    ):
        self.store, self.send, self.resume_from, self.is_main = store, send, resume_from, is_main

    def restore_point(self) -> str | None:
        say = _warn if self.is_main else None  # every rank checks the same files; one says so
        restored = self.store.restorable(say)
        return restored or (restorable_checkpoint(self.resume_from, say) if self.resume_from else None)

    def report(self, metrics: dict[str, Any], write: CheckpointWriter | None, *, final: bool) -> None:
        out = dict(metrics)
        if final:
            out[FINAL_RESULT] = True
        if write is not None and self.is_main:
            out[CHECKPOINT_URI] = (
                self.store.save_final(write) if final else self.store.save_epoch(int(metrics["epoch"]) + 1, write)
            )
        if self.send is not None:
            self.send(out)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LocalReporter(StoreReporter):
    """An in-process run into the directory `out_dir` (its store); `callback(metrics,
    checkpoint_uri or None)` is called for each report."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        resume_from: str | None = None,
        callback: Callable[[dict, str | None], None] | None = None,
    ):
        send = (lambda m: callback(m, m.get(CHECKPOINT_URI))) if callback is not None else None
        super().__init__(TrialStore(out_dir), send=send, resume_from=resume_from)


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train worker function: `fit` on this worker's share, reporting through
    ray.train.report (a TuneReportCallback on the controller forwards rank 0's reports to a
    Tune trial). A TrialFailure is recorded in the store by rank 0 and ends the worker
    normally: raising would make Ray Train restart the worker group in vain."""
    import ray.train

    cfg = from_dict(loop_config["trial_config"])
    store = TrialStore(loop_config["trial_dir"])
    rank = ray.train.get_context().get_world_rank()
    reporter = StoreReporter(
        store, send=lambda m: ray.train.report(m), resume_from=loop_config.get("resume_from"), is_main=rank == 0
    )
    try:
        fit(cfg, reporter, fault=loop_config.get("fault"))
    except TrialFailure as err:
        print(f"[jepa_ray] trial failed: {err}", file=sys.stderr, flush=True)
        if rank == 0:
            store.write_failure(json.dumps({"message": str(err), "kind": err.kind.value}))


def scaling_config(cfg: TrialConfig):
    from ray.train import ScalingConfig

    use_gpu = cfg.system.gpus_per_worker > 0
    resources = {"CPU": cfg.system.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.system.gpus_per_worker
    return ScalingConfig(num_workers=cfg.system.workers, use_gpu=use_gpu, resources_per_worker=resources)


def run_trial(
    cfg: TrialConfig,
    trial_dir: str,
    *,
    resume_from: str | None = None,
    report: Callable[[dict], None] | None = None,
    fault: Fault | None = None,
    ray_callbacks: list | None = None,
) -> tuple[dict, str]:
    """Train one trial into the store `trial_dir` and return (final metrics, final checkpoint
    URI). One worker trains in this process (`report` receives every epoch's metrics); several
    train under a TorchTrainer whose run state lives in TRIAL_DIR/ray (its reports reach a
    Tune trial through `ray_callbacks`). Both resume from the store's newest checkpoint, else
    from `resume_from`. Raises TrialFailure when the trial failed or ended without a result."""
    store = TrialStore(trial_dir)
    store.clear_failure()
    if cfg.system.workers == 1:
        final = fit(cfg, StoreReporter(store, send=report, resume_from=resume_from), fault=fault)
        return final, store.final()
    _fit_torch_trainer(cfg, store, resume_from, fault, ray_callbacks or [])
    recorded = store.failure()
    if recorded is not None:
        failure = json.loads(recorded)
        raise TrialFailure(failure["message"], FailureKind(failure["kind"]))
    uri = store.final()
    if uri is None:
        raise TrialFailure("the trial ended without final metrics")
    return json.loads(ckpt_lib.read_text(uri, ckpt_lib.METRICS_FILE)), uri


def _fit_torch_trainer(
    cfg: TrialConfig, store: TrialStore, resume_from: str | None, fault: Fault | None, callbacks: list
) -> None:
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.system.gpus_per_worker > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "trial_config": to_dict(cfg),
            "trial_dir": store.uri,
            "resume_from": resume_from,
            "fault": fault,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=store.child("ray"),
            failure_config=FailureConfig(max_failures=cfg.system.max_failures),
            callbacks=callbacks,
        ),
    )
    try:
        trainer.fit()
    except Exception as err:  # TrainingFailedError: workers kept failing
        full = StorageFull.find(str(err))  # rank 0 found the store's disk full: no fault of the trial
        if full is not None:
            raise full from err
        raise TrialFailure(f"training failed: {one_line(err, 500)}") from err
