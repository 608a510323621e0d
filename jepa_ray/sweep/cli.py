"""The sweep command line: `sweeps/rectified.py`, `sweeps/lejepa.py`, `python -m jepa_ray.sweep`
and `jepa-sweep` all call `main`, which differ only in their defaults."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from typing import Any

from jepa_ray import cluster
from jepa_ray.errors import StorageFull, UsageError
from jepa_ray.sweep.describe import mlflow_ui_command
from jepa_ray.sweep.driver import execute, plan
from jepa_ray.sweep.failures import TrackingFailed
from jepa_ray.sweep.options import ArgumentError, SweepOptions, parser

RECTIFIED = dict(space="rectified", preset="digits-sweep", experiment="rectified-lpjepa")
LEJEPA = dict(space="lejepa", preset="lejepa-digits", experiment="lejepa")


def _given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _smoke(opts: SweepOptions, argv: list[str]) -> SweepOptions:
    """`--smoke`: 2 trials, one after the other. One trial actor then trains both (Tune reuses
    it): its imports (torch, timm, torchvision, Ray Train: about 7 CPU-seconds) are paid once,
    which on a small machine ends the check sooner than two actors importing side by side."""
    if not _given(argv, "--num-samples"):
        opts = dataclasses.replace(opts, num_samples=2)
    if not _given(argv, "--max-concurrent"):
        opts = dataclasses.replace(opts, max_concurrent=1)
    return opts


def main(argv: list[str] | None = None, **defaults: Any) -> int:
    """Entry point of the sweep scripts; `defaults` set the space, preset and experiment."""
    base_defaults = SweepOptions(**defaults)
    try:
        args = parser(base_defaults).parse_args(argv)
    except ArgumentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts = dataclasses.replace(base_defaults, **vars(args))
    if opts.smoke:
        opts = _smoke(opts, argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not opts.verbose:  # Ray's, Tune's and MLflow's own chatter: what a user cannot act on
        import mlflow  # noqa: F401 (it sets its loggers' levels when imported: set ours after)

        cluster.RAY_LOGGING_LEVEL, cluster.RAY_LOG_TO_DRIVER = logging.ERROR, False
        for name in ("ray", "ray.tune", "ray.train", "mlflow"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Its traceback of a database error the sweep then says in one line (a full disk).
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if threading.current_thread() is threading.main_thread():
        # A sweep started in the background (`nohup ... &`) inherits SIGINT ignored: `kill -INT`
        # would then do nothing before Tune's own handler is set, and a second one nothing after.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    ray_was_running = _ray_initialized()
    try:
        summary = execute(plan(opts))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrackingFailed, StorageFull) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: the trials that had not finished end unfinished in MLflow and Optuna; "
            "--resume continues the sweep",
            file=sys.stderr,
        )
        return 130
    finally:
        if not ray_was_running:  # leave the caller's Ray session (a notebook, a test) alone
            _shutdown_ray()
    print()
    print(
        f"sweep {summary['sweep']}: {summary['launched']} trials launched, "
        f"{summary['already_finished']} already finished, {summary['failed']} failed, "
        f"{summary['collapsed']} stopped by the collapse guard, {summary['finished']} finished"
        + (f", {summary['stopped_at_rung']} stopped at a rung" if summary.get("stopped_at_rung") else "")
    )
    if summary["stopped_on_failures"]:
        print(f"stopped after {summary['failed']} failed trials (--max-failed-trials); reasons:")
        for why in summary["failure_reasons"]:
            print(f"  - {why}")
    print(f"sampler seed {summary['seed']} (repeat this search with --seed {summary['seed']})")
    print(f"MLflow: {mlflow_ui_command(opts.tracking_uri, summary.get('experiment_id'))}")
    print(f"Optuna: optuna-dashboard {summary['optuna_storage']}")
    if summary["launched"] and not (summary["finished"] or summary["already_finished"]):
        # nothing to export; a resumed run whose new trials were all stopped at rungs still has a front
        print("no trial of this sweep finished", file=sys.stderr)
        return 1
    return 1 if summary["stopped_on_failures"] else 0


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass


def console_main() -> int:
    """`jepa-sweep`: the Rectified LpJEPA sweep, like sweeps/rectified.py."""
    return main(sys.argv[1:], **RECTIFIED)
