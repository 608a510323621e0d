"""The body of one Tune trial (it runs in the trial's actor) and what Tune reserves for it."""

from __future__ import annotations

from typing import Any

from jepa_ray import config as config_lib
from jepa_ray.config import TrialConfig
from jepa_ray.contract import RESULT_FAILURE, RESULT_FAILURE_KIND, FailureKind
from jepa_ray.errors import UsageError, storage_full
from jepa_ray.placement import TRIAL_ACTOR_CPUS
from jepa_ray.sweep.spaces import trial_config
from jepa_ray.trial_spec import TrialSpec


def trial_dir(storage: str, sweep: str, number: int) -> str:
    """Where trial `number` of a sweep keeps its checkpoints (a jepa_ray.train.store.TrialStore)."""
    return f"{storage.rstrip('/')}/{sweep}/trials/{number:05d}"


def trial_main(
    trial: dict[str, Any], *, base: dict, storage: str, sweep: str, resume_map: dict[str, str], fault=None
) -> None:
    """A Tune function trial: train one config with `run_trial` and report per-epoch then final
    metrics. One worker trains in this actor and reports through tune.report; several train
    under a TorchTrainer whose controller forwards rank 0's reports to this trial
    (TuneReportCallback: a report reaches Tune only once Ray Train registered it). A full disk
    is reported as the trial's `unfinished` failure (jepa_ray.errors.StorageFull's line), which
    stops the sweep."""
    from ray import tune

    from jepa_ray.train import TrialFailure, run_trial  # torch: only the trial's actor trains

    spec = TrialSpec.from_config(trial)
    cfg = trial_config(config_lib.from_dict(base), spec)
    callbacks = []
    if cfg.system.workers > 1:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks = [TuneReportCallback()]
    try:
        run_trial(
            cfg,
            trial_dir(storage, sweep, spec.number or 0),
            resume_from=resume_map.get(spec.trial_key),
            report=tune.report,
            fault=fault,
            ray_callbacks=callbacks,
        )
    except TrialFailure as err:
        tune.report({RESULT_FAILURE: str(err), RESULT_FAILURE_KIND: err.kind.value})
    except UsageError as err:  # a config the data refuses (a batch larger than the split)
        tune.report({RESULT_FAILURE: str(err), RESULT_FAILURE_KIND: FailureKind.FAILED.value})
    except Exception as err:  # a full disk is no fault of the trial: it ends unfinished, the sweep stops
        full = storage_full(err, storage)
        if full is None:
            raise
        tune.report({RESULT_FAILURE: str(full), RESULT_FAILURE_KIND: FailureKind.UNFINISHED.value})


def trial_resources(cfg: TrialConfig) -> dict[str, float]:
    """What Tune reserves for a trial: the worker itself when it trains in-process; next to
    nothing when a TorchTrainer reserves its workers separately (both must fit: see
    placement.check_trial_fits)."""
    if cfg.system.workers == 1:
        res = {"CPU": cfg.system.cpus_per_worker}
        if cfg.system.gpus_per_worker:
            res["GPU"] = cfg.system.gpus_per_worker
        return res
    return {"CPU": TRIAL_ACTOR_CPUS}
