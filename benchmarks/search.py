"""Hypervolume against compute: full-fidelity search against the multi-objective successive-halving
scheduler, at equal compute budgets, several seeds each; and how well each per-epoch signal at a
rung predicts the final objectives.

Methods: jepa_ray.replay.methods' table (the same names as the replay mode's), each run as a real
sweep (`sweeps/rectified.py` with the method's `--sampler`, `--scheduler` and `--space`, into its
own temporary MLflow store, joining one local Ray instance; objectives
linear_acc:max,l0_density:min; hypervolume from the sweep's parent run, `sweep/hypervolume` at
step = trial-epochs spent, reference point (0, 1)). The default: `tpe` (full-fidelity TPE over μ,
today's default sweep), `random`, `tpe-density` (TPE over the target density), `moasha-random`
(MOASHA's baseline) and `moasha-tpe` (MOASHA with TPE over the target density).

Every sweep has the same budget of trial-epochs (`--max-trial-epochs`: N full trials' worth);
the scheduler's sweeps may launch 4x the trials within it. The hypervolume is compared at a
third, two thirds and all of the budget (the last value logged at or below it), mean and spread
over the seeds. Rank correlations (Spearman) of each signal at each rung with the final
objectives come from the full-fidelity sweeps' finished trials.

    python benchmarks/search.py                               # digits, 3 seeds (about 1 h on 2 cores)
    python benchmarks/search.py --methods tpe,moasha-tpe --seeds 0 --trials 6 --epochs 6   # quick
    python benchmarks/search.py --plot search.png

On recorded curves (`--replay TABLE`, a table of `python -m jepa_ray.curves record`), every
sweep runs in simulated time (jepa_ray.replay.simulate: the sweep's own searcher, scheduler,
collapse guard and outcome ledger, no training), so ten or more seeds per method take minutes;
the methods are jepa_ray.replay.methods' and the anytime hypervolume is read as normalized
regret, 1 - HV / HV*, HV* the hypervolume of every configuration the table holds; beside it the
accuracy regret per density band (jepa_ray.pareto.bands: every band of the table's front counts,
not only the point that holds most of HV*). `--first-seed N` runs sampler seeds N.. (check a
figure on seeds nobody tuned on); `python benchmarks/search.py --replay TABLE --help` lists the
replay mode's flags:

    python benchmarks/search.py --replay benchmarks/curves/cifar10-cpu.parquet --seeds 20 \
        --trials 24 --concurrency 4 --plot docs/img/search-cifar10.png

`--warm-start OTHER_TABLE` makes every method propose OTHER's front first (a sweep that starts
from an earlier one on a cheap proxy, e.g. the digits table for CIFAR-10).

Prints one JSON object per line (docs/design.md format).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))  # external baselines' schedulers (syne_moasha)

from jepa_ray.replay.methods import METHODS, Method  # noqa: E402 (after the path set-up)
from jepa_ray.sweep.options import add_scheduler_flags  # noqa: E402

LIVE_METHODS = ("tpe", "random", "tpe-density", "moasha-random", "moasha-tpe")
"""The live mode's default methods (each sweep trains for real: the cheap replay mode runs all)."""

SIGNALS = {
    "linear_acc": ["online/linear_acc", "online/linear_acc_z"],
    "l0_density": ["train/l0_density"],
    "linear_acc_z": ["online/linear_acc_z"],
}


def emit(case: str, metric: str, value: float | None, **extra) -> None:
    row = {
        "bench": "search",
        "case": case,
        "metric": metric,
        "value": None if value is None else round(value, 5),
        "device": "cpu",
        **extra,
    }
    print(json.dumps(row), flush=True)


def run_sweep(workdir: Path, method: str, seed: int, args, address: str) -> tuple[float, str]:
    """Run one sweep; (wall seconds, tracking URI)."""
    full = args.trials if METHODS[method].scheduler == "fifo" else 4 * args.trials
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "rectified.py"),
        "--address",
        address,
        "--experiment",
        "search",
        "--tracking-uri",
        f"sqlite:///{workdir}/mlflow.db",
        "--storage-path",
        str(workdir / "ray"),
        "--preset",
        args.preset,
        "--epochs",
        str(args.epochs),
        "--num-samples",
        str(full),
        "--max-trial-epochs",
        str(args.trials * args.epochs),
        "--seed",
        str(seed),
        "--max-failed-trials",
        "0",
        *METHODS[method].sweep_args(),
        *args.extra,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode not in (0, 1):
        raise SystemExit(f"{method} seed {seed} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return time.perf_counter() - start, f"sqlite:///{workdir}/mlflow.db"


def curve(uri: str) -> list[tuple[int, float, float]]:
    """(trial-epochs, hypervolume, seconds since the sweep started) after each ended trial."""
    from jepa_ray import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name("search")
    parent = tracking.find_sweep_run(uri, exp.experiment_id)
    start = parent.info.start_time
    points = sorted(c.get_metric_history(parent.info.run_id, "sweep/hypervolume"), key=lambda m: (m.step, m.timestamp))
    return [(m.step, m.value, (m.timestamp - start) / 1000) for m in points]


def at_budget(points: list[tuple[int, float, float]], budget: float) -> float:
    best = 0.0
    for spent, hv, _ in points:
        if spent <= budget:
            best = max(best, hv)
    return best


def signal_correlations(uri: str, rungs: list[int]) -> dict[tuple[str, str, int], float]:
    """Spearman of each signal at each rung with each final objective, over finished trials."""
    from scipy import stats

    from jepa_ray import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name("search")
    parent = tracking.find_sweep_run(uri, exp.experiment_id)
    runs = [r for r in tracking.trial_runs(uri, exp.experiment_id, parent.info.run_id) if r.info.status == "FINISHED"]
    out = {}
    for objective, signals in SIGNALS.items():
        for signal in signals:
            histories = {
                r.info.run_id: {m.step: m.value for m in c.get_metric_history(r.info.run_id, signal)} for r in runs
            }
            for rung in rungs:
                pairs = [(histories[r.info.run_id].get(rung - 1), r.data.metrics.get(objective)) for r in runs]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                if len(pairs) >= 4:
                    out[(objective, signal, rung)] = float(stats.spearmanr(*zip(*pairs)).statistic)
    return out


def main() -> None:
    if "--replay" in sys.argv:
        replay_main()
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Replay mode: --replay TABLE --help.")
    p.add_argument(
        "--replay",
        metavar="TABLE",
        help="instead: every method in simulated time on a curve table, with its own flags "
        "(--seeds, --first-seed, --trials, --concurrency, --warm-start, ...: --replay TABLE --help)",
    )
    p.add_argument("--methods", default=",".join(LIVE_METHODS), help=f"comma separated, of: {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--preset", default="digits-sweep")
    p.add_argument("--epochs", type=int, default=15, help="epochs of a full trial")
    p.add_argument("--trials", type=int, default=12, help="full trials a budget buys")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--plot", help="write the mean hypervolume curves to this PNG")
    p.add_argument("--curves", help="write every sweep's (trial-epochs, hypervolume, seconds) curve to this JSON")
    p.add_argument("--replot", metavar="CURVES_JSON", help="only redraw --plot from a --curves file")
    p.add_argument("--address", help="the live sweeps join this Ray cluster (default: one started here)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more sweep arguments")
    args = p.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    check_methods(p, methods, METHODS)
    budget = args.trials * args.epochs
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        curves = {m: [[tuple(pt) for pt in c] for c in cs] for m, cs in saved["curves"].items()}
        plot(curves, saved["budget"], args.plot)
        return

    address = args.address
    if address is None:  # a local instance for the sweeps to join
        import ray

        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        address = ray.get_runtime_context().gcs_address
    results: dict[str, list[list[tuple[int, float, float]]]] = {m: [] for m in methods}
    correlations: dict[tuple[str, str, int], list[float]] = {}
    from jepa_ray.sweep.rungs import rung_levels

    rungs = rung_levels(max(1, args.epochs // 9), 3.0, args.epochs) + [args.epochs]
    with tempfile.TemporaryDirectory(prefix="jepa_ray_search_") as tmp:
        for method in methods:
            for seed in seeds:
                workdir = Path(tmp) / f"{method}-{seed}"
                workdir.mkdir()
                wall, uri = run_sweep(workdir, method, seed, args, address)
                points = curve(uri)
                results[method].append(points)
                emit(
                    f"{method} seed {seed}: hypervolume at the budget of {budget} trial-epochs",
                    "hypervolume",
                    at_budget(points, budget),
                    wall_s=round(wall, 1),
                    trials_ended=len(points),
                )
                if not method.startswith("moasha"):
                    for key, rho in signal_correlations(uri, rungs).items():
                        correlations.setdefault(key, []).append(rho)
    if args.address is None:
        ray.shutdown()

    for fraction in (1 / 3, 2 / 3, 1.0):
        for method in methods:
            values = [at_budget(points, fraction * budget) for points in results[method]]
            emit(
                f"{method}: hypervolume at {fraction:.2f} of the budget ({fraction * budget:.0f} trial-epochs), "
                f"mean over seeds {seeds}",
                "hypervolume",
                statistics.mean(values),
                spread=round(max(values) - min(values), 5),
                per_seed=[round(v, 5) for v in values],
            )
    for (objective, signal, rung), rhos in sorted(correlations.items()):
        emit(
            f"Spearman({signal} at epoch {rung}, final {objective}), full-fidelity sweeps",
            "spearman",
            statistics.mean(rhos),
            per_sweep=[round(r, 3) for r in rhos],
        )
    if args.curves:
        Path(args.curves).write_text(json.dumps({"budget": budget, "seeds": seeds, "curves": results}))
    if args.plot:
        plot(results, budget, args.plot)


# --------------------------------------------------------------------------------------------
# On recorded curves, in simulated time


def external_methods() -> dict:
    """Baselines from outside the project, run by the same simulator: Syne Tune's MOASHA
    (benchmarks/syne_moasha.py, the bench extra) with random proposals."""
    return {
        "syne-moasha-random": Method(
            "syne-moasha-random", "random", "syne_moasha:create", doc="Syne Tune's MOASHA, random proposals"
        )
    }


def replay_main() -> None:
    """Every method as simulated sweeps over a curve table: regret curves, one JSON line each."""
    import optuna

    from jepa_ray import pareto
    from jepa_ray.replay.methods import attainable, warm_start_rows
    from jepa_ray.replay.tables import Replay

    known = {**METHODS, **external_methods()}
    args = replay_args(known)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study per simulated sweep is not news
    replay = Replay.open(args.replay, [])
    objectives = pareto.parse_objectives(args.objectives)
    budget = args.trials * replay.base.optim.epochs
    points, best = attainable(replay, objectives)
    emit(
        f"table {Path(args.replay).name}: {len(replay.table)} rows, {len(points)} configurations a sweep finishes",
        "hypervolume",
        best,
        configurations=len(replay.front_rows()),
    )
    warm = warm_start_rows(Replay.open(args.warm_start, []), replay, objectives) if args.warm_start else []
    if warm:
        emit(
            f"warm start: the front of {Path(args.warm_start).name} as {len(warm)} configurations of this table",
            "configurations",
            len(warm),
            params=[r.params for r in warm],
        )
    grid = list(range(0, budget + 1))
    curves = {
        name: replay_method(replay, known[name], objectives, args, budget, (points, best), warm)
        for name in args.methods.split(",")
    }
    if args.baseline in curves:
        emit_time_to_baseline(curves, args.baseline, grid, budget)
    if args.curves:
        Path(args.curves).write_text(json.dumps({"budget": budget, "grid": grid, "regret": curves}))
    if args.plot:
        plot_regret(curves, grid, budget, args.plot, Path(args.replay).name)


def replay_args(known: dict) -> argparse.Namespace:
    """The replay mode's command line, checked (an unknown method or a missing table: exit 2)."""
    import importlib.util

    p = argparse.ArgumentParser(description="search methods compared on a curve table, in simulated time")
    p.add_argument("--replay", required=True, metavar="TABLE")
    p.add_argument(
        "--methods",
        default=",".join(known),
        help=f"comma separated, of: {', '.join(known)} (syne-moasha-random needs the bench extra: syne-tune)",
    )
    p.add_argument("--seeds", type=int, default=10, help="sweeps per method (sampler seeds from --first-seed)")
    p.add_argument("--first-seed", type=int, default=0, help="the first sampler seed (default 0)")
    p.add_argument("--trials", type=int, default=24, help="full trials the budget buys")
    p.add_argument("--concurrency", type=int, default=4, help="trials at once")
    p.add_argument("--objectives", default="linear_acc:max,l0_density:min")
    p.add_argument("--baseline", default="tpe", help="the method whose final regret the others must reach")
    # a method names its scheduler: only the rungs' settings are flags here
    add_scheduler_flags(p, names=("scheduler_min_epochs", "scheduler_eta", "scheduler_top_k"))
    p.add_argument(
        "--warm-start",
        metavar="TABLE",
        help="every method first proposes this table's front, each point as its nearest configuration here",
    )
    p.add_argument("--plot", help="normalized regret against trial-epochs, median and IQR, to this PNG")
    p.add_argument("--curves", help="write every sweep's curve to this JSON")
    args = p.parse_args()
    names = args.methods.split(",")
    check_methods(p, names, known)
    if "syne-moasha-random" in names and importlib.util.find_spec("syne_tune") is None:
        p.error("--methods syne-moasha-random needs syne-tune; allowed: pip install -e '.[bench]', or leave it out")
    for name in ("replay", "warm_start"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            p.exit(2, f"error: --{name.replace('_', '-')} {path}: no such file; allowed: a curve table (.parquet)\n")
    return args


def replay_method(replay, method: Method, objectives, args, budget: int, attained, warm) -> list[list[float]]:
    """`method`'s simulated sweeps, one per seed: their regret curves (one value per trial-epoch),
    and the regret and band regret at a third, two thirds and all of the budget emitted."""
    from jepa_ray.curves.table import canonical
    from jepa_ray.pareto.bands import band_regret
    from jepa_ray.replay.methods import run_method

    points, best = attained
    reference = [values for _, values in points]
    config_of = {row.key: canonical(row.params) for row in replay.table}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    start = time.perf_counter()
    runs = [
        run_method(
            replay,
            method,
            objectives,
            seed=seed,
            budget=budget,
            max_concurrent=args.concurrency,
            min_epochs=args.scheduler_min_epochs,
            eta=args.scheduler_eta,
            top_k=args.scheduler_top_k,
            starting_points=warm,
        )
        for seed in seeds
    ]
    curves = [[1.0 - r.hypervolume_at(t) / best for t in range(budget + 1)] for r in runs]
    for fraction in (1 / 3, 2 / 3, 1.0):
        spent = round(fraction * budget)
        regrets = [c[spent] for c in curves]
        bands = [band_regret([t.values for t in r.finished if t.trial_epochs <= spent], reference) for r in runs]
        for metric, values in (("regret", regrets), ("band_regret", bands)):
            q1, med, q3 = quartiles(values)
            what = "normalized regret" if metric == "regret" else "accuracy regret per density band"
            emit(
                f"{method.name}: {what} at {fraction:.2f} of {budget} trial-epochs, seeds {seeds[0]}-{seeds[-1]}",
                metric,
                med,
                iqr=[round(q1, 5), round(q3, 5)],
                trials_ended=statistics.median(len(r.trials) for r in runs),
                finished=statistics.median(len(r.finished) for r in runs),
                repeated_proposals=statistics.median(repeats(r, config_of) for r in runs),
                seconds=round(time.perf_counter() - start, 1),
            )
    return curves


def emit_time_to_baseline(curves: dict[str, list[list[float]]], baseline: str, grid: list[int], budget: int) -> None:
    """For each method, the trial-epochs until its median regret reaches the baseline's final median."""
    target = median_curve(curves[baseline])[-1]
    for name, cs in curves.items():
        med = median_curve(cs)
        reached = next((t for t, r in zip(grid, med) if r <= target), None)
        emit(
            f"{name}: trial-epochs until the median regret reaches {baseline}'s final median "
            f"({target:.4f}); goal <= {budget / 3:.0f} (a third of the budget)",
            "trial_epochs",
            reached,
            fraction=None if reached is None else round(reached / budget, 3),
        )


def repeats(result, config_of: dict[str, str]) -> int:
    """How many of a simulated sweep's trials proposed a configuration an earlier trial had."""
    configs = [config_of.get(t.row_key, t.row_key) for t in result.trials]
    return len(configs) - len(set(configs))


def check_methods(p: argparse.ArgumentParser, names: list[str], known) -> None:
    unknown = [m for m in names if m not in known]
    if unknown:
        p.error(f"--methods {','.join(unknown)} not allowed; allowed: {', '.join(known)}")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    import numpy as np

    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(med), float(q3)


def median_curve(curves: list[list[float]]) -> list[float]:
    import numpy as np

    return np.median(np.array(curves), axis=0).tolist()


def plot_regret(curves: dict, grid: list[int], budget: int, path: str, table: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    floor = 1e-4
    for name, cs in curves.items():
        arr = np.maximum(np.array(cs), floor)
        q1, med, q3 = np.percentile(arr, [25, 50, 75], axis=0)
        line = ax.plot(grid, med, label=name, drawstyle="steps-post")[0]
        ax.fill_between(grid, q1, q3, step="post", alpha=0.12, color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("compute spent (trial-epochs)")
    ax.set_ylabel("normalized regret 1 - HV / HV(table)")
    ax.set_title(f"Search on {table}: median and IQR over seeds")
    ax.axvline(budget / 3, color="0.7", lw=0.8, ls=":")
    ax.legend(loc="upper right", fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    emit(f"plot written to {path}", "file", None)


def plot(results: dict, budget: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, budget, 61)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for method, runs in results.items():
        curves = np.array([[at_budget(points, b) for b in grid] for points in runs])
        mean = curves.mean(0)
        line = ax.plot(grid, mean, label=method, drawstyle="steps-post")[0]
        ax.fill_between(grid, curves.min(0), curves.max(0), step="post", alpha=0.12, color=line.get_color())
    ax.set_xlabel("compute spent (trial-epochs)")
    ax.set_ylabel("hypervolume (linear_acc max, l0_density min; ref 0, 1)")
    ax.set_title("Hypervolume against compute (mean and range over seeds)")
    ax.axvline(budget / 3, color="0.7", lw=0.8, ls=":")
    # Zoom on where the methods differ: from a little below the lowest mean at a third of the
    # budget (by then every sweep has finished trials), not from 0.
    third = [np.mean([at_budget(points, budget / 3) for points in runs]) for runs in results.values() if runs]
    if third and min(third) > 0:
        ax.set_ylim(max(0.0, min(third) - 0.05), 1.0)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    emit(f"plot written to {path}", "file", None)


if __name__ == "__main__":
    main()
