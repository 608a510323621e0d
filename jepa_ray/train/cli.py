"""`python -m jepa_ray.train` (`jepa-train`): one trial without a sweep."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from jepa_ray import cluster, placement
from jepa_ray import config as config_lib
from jepa_ray.config import RUNTIME_KEYS, TrialConfig
from jepa_ray.contract import HEADLINE_METRICS, is_final
from jepa_ray.errors import StorageFull, UsageError
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train import faults
from jepa_ray.train.guard import TrialFailure
from jepa_ray.train.runner import run_trial
from jepa_ray.train.store import FINAL_DIR, TrialStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m jepa_ray.train",
        description="Train one Rectified LpJEPA / LpJEPA / LeJEPA trial: in this process "
        "with one worker, under a Ray Train TorchTrainer (DDP) with several.",
    )
    p.add_argument("--preset", default="digits", help=f"one of: {', '.join(config_lib.PRESETS)} (default: %(default)s)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by its flat name (e.g. --set mu=-1 --set p=0.5)",
    )
    p.add_argument("--workers", type=int, help="DDP workers (1: train in this process, no Ray)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (0: CPU)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker (and its torch threads)")
    p.add_argument("--out", help="directory for the final checkpoint, OUT/checkpoint (required unless --list-keys)")
    p.add_argument(
        "--storage-path",
        help="where the trial's checkpoints go (default: OUT; s3://... or a shared path for workers on several nodes)",
    )
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in OUT (or --storage-path)")
    p.add_argument(
        "--address", help="Ray cluster address for several workers (default: connect if one runs, else start one)"
    )
    p.add_argument("--list-keys", action="store_true", help="print every config key with its doc and exit")
    return p


def check_resumable(store: TrialStore, cfg: TrialConfig, resume: bool) -> str | None:
    """The checkpoint a run into `store` resumes from (None: a fresh run). ConfigError when the
    store already holds a run and --resume was not given (it would be overwritten), when
    --resume finds nothing to resume, or when the config differs from the recorded one in
    what it trains (precision=auto matches the recorded precision)."""
    latest, final = store.latest(), store.final()
    if not resume:
        if final or latest:
            what = "a finished trial" if final else "an unfinished trial"
            raise UsageError(
                f"--out/--storage-path {store.uri} already holds {what}; pass --resume to "
                "continue an unfinished one, or choose another directory"
            )
        return None
    if final:
        raise UsageError(f"--resume: {store.uri} holds a finished trial ({final}); nothing to resume")
    if not latest:
        raise UsageError(f"--resume: no checkpoint to resume in {store.uri}; run without --resume")
    recorded = config_lib.flatten(ckpt_lib.read_config(latest))
    given = config_lib.flatten(cfg)
    if given["precision"] == "auto":  # the resumed run keeps the precision it recorded (fit)
        given["precision"] = recorded["precision"]
    changed = sorted(k for k in given if k not in RUNTIME_KEYS and str(given[k]) != str(recorded.get(k)))
    if changed:
        diff = ", ".join(f"{k}={given[k]} (recorded: {recorded.get(k)})" for k in changed)
        raise UsageError(
            f"--resume: the config differs from the run being resumed in {diff}; "
            f"only {', '.join(sorted(RUNTIME_KEYS))} may change"
        )
    return latest


def _print_epoch(cfg: TrialConfig, metrics: dict) -> None:
    if is_final(metrics):
        return
    print(
        f"epoch {metrics['epoch'] + 1}/{cfg.optim.epochs}: loss {metrics['train/loss']:.4g} "
        f"l0 {metrics['train/l0_density']:.3f} online acc {metrics['online/linear_acc']:.3f} "
        f"({metrics['throughput/img_per_s']:.0f} img/s)",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_keys:
        for key in config_lib.LEAVES:
            print(f"{key:20s} {config_lib.field_doc(key)}")
        return 0
    try:
        if not args.out:
            raise UsageError("--out is required: a directory for the final checkpoint")
        cfg = config_lib.build(
            args.preset,
            args.set,
            {"workers": args.workers, "gpus_per_worker": args.gpus_per_worker, "cpus_per_worker": args.cpus_per_worker},
        )
        out = Path(args.out).resolve()
        store = TrialStore(args.storage_path or out)
        check_resumable(store, cfg, args.resume)
        fault = faults.from_env()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    multi = cfg.system.workers > 1
    if args.address and not multi:
        print("note: --address is not used: a one-worker trial trains in this process", file=sys.stderr)
    if multi:
        try:
            cluster.connect(args.address, num_cpus=max(2, math.ceil(cfg.system.workers * cfg.system.cpus_per_worker)))
            placement.check_trial_fits(placement.trial_demand(cfg, in_tune=False), placement.capacity())
            cluster.check_storage_path(store.uri, cluster.max_node_count())
        except UsageError as err:  # nothing fits, an --address that does not answer: bad input
            print(f"error: {err}", file=sys.stderr)
            _shutdown_ray()
            return 2
    out.mkdir(parents=True, exist_ok=True)
    try:
        metrics, checkpoint = run_trial(cfg, store.uri, fault=fault, report=lambda m: _print_epoch(cfg, m))
    except TrialFailure as err:
        print(f"error: trial failed: {err}", file=sys.stderr)
        return 1
    except StorageFull as err:  # the store keeps its last whole checkpoint: --resume goes on from it
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if multi:
            _shutdown_ray()
    final_dir = out / FINAL_DIR
    if ckpt_lib.is_remote(checkpoint) or ckpt_lib.local_dir(checkpoint).resolve() != final_dir:
        shutil.rmtree(final_dir, ignore_errors=True)
        ckpt_lib.copy_files(
            checkpoint, final_dir, ckpt_lib.EXPORT_FILES + (ckpt_lib.HISTORY_FILE, ckpt_lib.ACTIVATION_FILE)
        )
    shown = {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}
    print(json.dumps({"checkpoint": str(final_dir), **shown}, indent=2))
    return 0


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
