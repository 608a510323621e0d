"""Sweep efficiency, per-trial overhead and the l0 knob on the default sweep; the bare cost of
a trial inside Ray Tune.

1. The default sweep, as a user runs it (`python sweeps/rectified.py`, its own local Ray
   instance, a temporary MLflow store and Ray storage), read back from MLflow:
   - efficiency = (sum over trials of the time inside the training loops, the per-epoch
     `time/epoch_s`) / (wall time x concurrency), with the sweep's wall time (its parent run,
     from Ray connected to the front printed) and with the whole command's (Ray start and
     imports included); every trial's loop counts, those the collapse guard stopped too, and
     the count over finished trials only is printed beside it;
   - per-trial overhead = trial wall time minus its training-loop time, median; the wall time
     runs from the searcher's suggestion (Tune asks for a trial when a slot is free: the
     Optuna trial's start) to the searcher hearing of the end (the Optuna trial's completion).
     Where it goes, from the driver's MLflow timestamps (medians): the actor's start (to the
     MLflow run's creation), the setup before the first epoch (imports, data, model), the work
     between epochs (online probe, checkpoint), the final evaluation, and what follows the
     final result (the checkpoint's artifacts);
   - Spearman correlation of target_l0_density and measured l0_density over the trials, and
     the span of the Pareto front (its densest and sparsest l0_density), with the sweep's
     objectives (linear_acc of the backbone) and with the probe on z (linear_acc_z).
2. The bare cost of a trial in Tune (one at a time, per-trial wall from creation to end,
   median): an empty function trial (baseline), one that fits an empty one-worker
   TorchTrainer (what a multi-worker trial pays), and one that imports the trainer and loads
   the digits (what every in-process trial pays before its first step).

Prints one JSON object per line (docs/design.md format).

`python benchmarks/sweep.py [--num-samples N] [--epochs E] [--bare-trials 3] [--skip-sweep] [--skip-bare] [--keep DIR]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "bench-sweep"
BENCH = "sweep"


def emit(case: str, metric: str, value: float | None, baseline: float | None = None) -> None:
    row = {"bench": BENCH, "case": case, "metric": metric, "value": None if value is None else round(value, 4)}
    if baseline is not None and value is not None:
        row.update(baseline=round(baseline, 4), ratio=round(value / baseline, 4))
    row["device"] = "cpu"
    print(json.dumps(row), flush=True)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------------
# 1. The default sweep


def run_default_sweep(workdir: Path, extra: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run sweeps/rectified.py into workdir; returns (start epoch time, wall seconds, process)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "rectified.py"),
        "--address",
        "local",
        "--experiment",
        EXPERIMENT,
        "--tracking-uri",
        f"sqlite:///{workdir}/mlflow.db",
        "--storage-path",
        str(workdir / "ray"),
        *extra,
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    return start, time.time() - start, proc


def trial_timeline(run, epochs: list, optuna_trial) -> dict[str, float]:
    """Where a finished trial's wall time went, from its Optuna trial's start and end and its
    `time/epoch_s` history. Not split further by phase: epochs are written to MLflow once a
    checkpoint covers them (together, at the end of a trial without epoch checkpoints), so their
    timestamps are not when the epochs ended."""
    loop = sum(m.value for m in epochs)
    asked, told = optuna_trial.datetime_start.timestamp(), optuna_trial.datetime_complete.timestamp()
    start = run.info.start_time / 1000
    return {"wall": told - asked, "loop": loop, "overhead": told - asked - loop, "actor_start": start - asked}


def sweep_case(args) -> None:
    import optuna
    from scipy import stats

    from jepa_ray import pareto, tracking

    extra = []
    if args.num_samples:
        extra += ["--num-samples", str(args.num_samples)]
    if args.epochs:
        extra += ["--epochs", str(args.epochs)]
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="bench_sweep_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started, wall, proc = run_default_sweep(workdir, extra)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the sweep failed with exit code {proc.returncode}")
    uri = f"sqlite:///{workdir}/mlflow.db"
    c = tracking.client(uri)
    exp_id = c.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = tracking.find_sweep_run(uri, exp_id)
    children = tracking.trial_runs(uri, exp_id, parent.info.run_id)
    history = {
        r.info.run_id: sorted(c.get_metric_history(r.info.run_id, "time/epoch_s"), key=lambda m: m.step)
        for r in children
    }
    finished = [r for r in children if r.info.status == "FINISHED"]
    concurrency = int(parent.data.tags["jepa_ray.max_concurrent"])
    sweep_wall = (parent.info.end_time - parent.info.start_time) / 1000
    study = optuna.load_study(
        study_name=parent.data.tags[tracking.SWEEP_NAME], storage=parent.data.tags["jepa_ray.optuna_storage"]
    )
    by_tune_id = {t.user_attrs.get("tune_trial_id"): t for t in study.get_trials() if t.state.is_finished()}
    timelines = [
        trial_timeline(r, history[r.info.run_id], by_tune_id[r.data.tags[tracking.TRIAL_ID]]) for r in finished
    ]
    # Trials the collapse guard stopped (or that failed) also trained until they stopped.
    loop_total = sum(m.value for epochs in history.values() for m in epochs)
    loop_finished = sum(t["loop"] for t in timelines)

    case = f"default sweep ({len(children)} trials, concurrency {concurrency}{', ' + ' '.join(extra) if extra else ''})"
    emit(case, "efficiency", loop_total / (sweep_wall * concurrency))
    emit(case, "efficiency_with_ray_start", loop_total / (wall * concurrency))
    emit(case, "efficiency_finished_trials_only", loop_finished / (sweep_wall * concurrency))
    emit(case, "trial_overhead_median_s", median([t["overhead"] for t in timelines]))
    emit(case, "overhead_actor_start_median_s", median([t["actor_start"] for t in timelines]))
    emit(case, "trial_wall_median_s", median([t["wall"] for t in timelines]))
    emit(case, "trial_loop_median_s", median([t["loop"] for t in timelines]))
    emit(case, "sweep_wall_s", sweep_wall)
    emit(case, "startup_s", parent.info.start_time / 1000 - started)
    emit(case, "total_wall_s", wall)
    emit(case, "finished_trials", len(finished))
    emit(case, "failed_trials", len(children) - len(finished))

    target = [r.data.metrics.get("target_l0_density") for r in finished]
    measured = [r.data.metrics.get("l0_density") for r in finished]
    pairs = [(t, m) for t, m in zip(target, measured) if t is not None and m is not None]
    rho = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic if len(pairs) >= 3 else None
    emit(case, "spearman_target_vs_l0_density", None if rho is None else float(rho))
    # The sweep's objectives, then the probe on z instead of the backbone (for comparison).
    for objectives, suffix in ((None, ""), ("linear_acc_z:max,l0_density:min", " (front of linear_acc_z)")):
        result = pareto.extract(uri, EXPERIMENT, sweep_run_ids=[parent.info.run_id], objectives=objectives)
        column = next(o.column for o in result.objectives if o.name == "l0_density")
        emit(case + suffix, "front_size", len(result.front))
        emit(case + suffix, "front_max_l0_density", float(result.front[column].max()))
        emit(case + suffix, "front_min_l0_density", float(result.front[column].min()))
        emit(case + suffix, "hypervolume", result.hypervolume)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 2. The bare cost of a trial in Tune


def empty_trial(config: dict) -> None:
    from ray import tune

    tune.report({"done_work": 1})


def torch_trainer_trial(config: dict) -> None:
    """Fit a TorchTrainer whose one worker does nothing, as a multi-worker sweep trial does."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def nothing(loop_config: dict) -> None:
        return None

    trainer = TorchTrainer(
        nothing,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"empty-{time.time_ns()}", storage_path=config["storage"]),
    )
    trainer.fit()
    tune.report({"done_work": 1})


def setup_trial(config: dict) -> None:
    """What an in-process sweep trial does before its first step: import the trainer (torch,
    timm), load the digits, build the model."""
    from ray import tune

    from jepa_ray import config as config_lib
    from jepa_ray.data import load_dataset
    from jepa_ray.model import create_model

    cfg = config_lib.resolve(config_lib.preset("digits"))
    load_dataset(cfg.data)
    create_model(cfg)
    tune.report({"done_work": 1})


def trial_walls(trainable, trials: int, resources: dict, storage: str) -> list[float]:
    """Per-trial wall seconds (creation to end) of `trials` trials run one at a time."""
    from ray import tune

    created: dict[str, float] = {}
    walls: list[float] = []

    class Clock(tune.Callback):
        """A trial's creation is the first loop step that lists it (callbacks have no hook
        for it; a step takes milliseconds when nothing happens)."""

        def on_step_begin(self, iteration, trials, **info):
            for trial in trials:
                created.setdefault(trial.trial_id, time.perf_counter())

        on_step_end = on_step_begin

        def on_trial_complete(self, iteration, trials, trial, **info):
            walls.append(time.perf_counter() - created[trial.trial_id])

    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"storage": storage},
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=1, reuse_actors=False),
        run_config=tune.RunConfig(name=f"bare-{time.time_ns()}", storage_path=storage, callbacks=[Clock()], verbose=0),
    )
    tuner.fit()
    return walls


def bare_case(args) -> None:
    import ray

    storage = tempfile.mkdtemp(prefix="bench_bare_")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    try:
        trial_walls(empty_trial, 1, {"CPU": 1}, storage)  # warm Ray's worker pool and caches
        base = median(trial_walls(empty_trial, args.bare_trials, {"CPU": 1}, storage))
        emit(f"bare Tune trial, in process ({args.bare_trials} trials, one at a time)", "trial_wall_median_s", base)
        setup = median(trial_walls(setup_trial, args.bare_trials, {"CPU": 1}, storage))
        emit("Tune trial importing the trainer + loading digits + model", "trial_wall_median_s", setup, base)
        trainer = median(trial_walls(torch_trainer_trial, args.bare_trials, {"CPU": 0.01}, storage))
        emit("Tune trial fitting an empty 1-worker TorchTrainer", "trial_wall_median_s", trainer, base)
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, help="trials of the sweep (default: the default sweep's)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the default sweep's)")
    p.add_argument("--bare-trials", type=int, default=3, help="trials per bare-cost case")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-bare", action="store_true")
    p.add_argument("--keep", help="run the sweep in this directory and keep it")
    args = p.parse_args()
    if not args.skip_sweep:
        sweep_case(args)
    if not args.skip_bare:
        bare_case(args)


if __name__ == "__main__":
    main()
