"""Speed of Pareto-front extraction from MLflow at sweep scale.

Builds (once, cached under the temp dir) a genuine MLflow sqlite store with 10,000 trial runs in
the docs/design.md layout: parent sweep runs made with MlflowClient; trial runs written in bulk
through MLflow's own SQLAlchemy tables (MlflowClient costs ~0.1 s a run, ~17 min for 10,000),
each with the flattened config as params, 6 per-epoch metric histories, the 7 final metrics and
the layout's tags; ~3% FAILED. The store is checked by reading it back with MlflowClient.

Then times, each the median of a few repeats:
- extraction (read_trials + compute_front) with the direct SQL reader and with the
  MlflowClient.search_runs reader, against `mlflow.search_runs` + compute_front as baseline;
- hypervolume alone (the 2-objective front, and a 3-objective front of the same trials);
- non-dominated sorting of all trials.
Prints one JSON object per line (docs/design.md format).

`python benchmarks/pareto.py [--runs 10000] [--repeats 3] [--rebuild]`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa_ray import contract, pareto  # noqa: E402
from jepa_ray.config import TrialConfig, flatten, resolve  # noqa: E402
from jepa_ray.tracking.store import SEARCH_PAGE_SIZE  # noqa: E402

EXPERIMENT = "bench-pareto"
SWEEPS = 4
EPOCHS = 10
HISTORY = (
    "train/loss",
    "train/invariance",
    "train/regularizer",
    "train/l0_density",
    "online/linear_acc",
    "throughput/img_per_s",
)
STORE_VERSION = 1


def emit(case: str, metric: str, value: float, baseline: float | None = None) -> None:
    row = {"bench": "pareto", "case": case, "metric": metric, "value": round(value, 6)}
    if baseline is not None:
        row.update(baseline=round(baseline, 6), ratio=round(value / baseline, 4))
    row["device"] = "cpu"
    print(json.dumps(row), flush=True)


def timed(fn, repeats: int):
    """(median seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


# --------------------------------------------------------------------------------------------
# The store


def synthetic_trial(rng: np.random.Generator, base: dict) -> tuple[dict, dict]:
    """Params and final metrics with a sparsity/accuracy trade-off driven by mu and p; the
    accuracy is quantized to a 360-image test split (ties, as in real probes)."""
    mu, p = float(rng.uniform(-3, 1)), float(rng.choice([0.5, 1.0, 1.5, 2.0]))
    lambd, slices = float(rng.uniform(0.5, 0.99)), int(rng.choice([256, 512, 1024, 4096, 8192]))
    params = {
        **base,
        "mu": mu,
        "p": p,
        "lambd": lambd,
        "num_slices": slices,
        "proj_dims": str(rng.choice(["256-256-256", "512-512-512", "256-256-128"])),
        "seed": int(rng.integers(0, 1000)),
    }
    target = 1 / (1 + np.exp(-1.7 * mu / p))
    l0 = float(np.clip(target * rng.lognormal(0, 0.25), 1e-4, 1.0))
    acc = float(np.round(np.clip(0.93 - 0.25 * np.exp(-l0 / 0.08) - 0.1 * rng.random(), 0, 1) * 360) / 360)
    metrics = {
        "linear_acc": acc,
        "l0_density": l0,
        "target_l0_density": float(target),
        "linear_acc_z": acc - 0.02,
        "knn_acc": float(np.clip(acc - 0.05 + 0.05 * rng.normal(), 0, 1)),
        "l0_density_backbone": float(rng.uniform(0.3, 0.7)),
        "rank_me": float(rng.uniform(10, 200)),
    }
    return params, metrics


def build_store(path: Path, n_runs: int, seed: int = 0) -> str:
    """Create the store; returns its tracking URI."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=str(path.parent / "artifacts"))
    artifact_root = client.get_experiment(exp_id).artifact_location
    sweeps = []
    for s in range(SWEEPS):
        run = client.create_run(exp_id, run_name=f"sweep-{s}", tags={contract.ROLE: "sweep"})
        sweeps.append(run.info.run_id)
    rng = np.random.default_rng(seed)
    base = {k: str(v) for k, v in flatten(resolve(TrialConfig())).items()}
    rows: dict[str, list[dict]] = {"runs": [], "tags": [], "params": [], "metrics": [], "latest": []}
    now = int(time.time() * 1000)
    for i in range(n_runs):
        run_id = uuid.uuid4().hex
        failed = rng.random() < 0.03
        params, finals = synthetic_trial(rng, base)
        start = now + i * 1000
        rows["runs"].append(
            dict(
                run_uuid=run_id,
                name=f"trial_{i:05d}",
                artifact_uri=f"{artifact_root}/{run_id}/artifacts",
                experiment_id=int(exp_id),
                source_type="UNKNOWN",
                source_name="",
                entry_point_name="",
                user_id="bench",
                status="FAILED" if failed else "FINISHED",
                start_time=start,
                end_time=start + 900,
                deleted_time=None,
                source_version="",
                lifecycle_stage="active",
            )
        )
        tags = {
            "mlflow.runName": f"trial_{i:05d}",
            contract.PARENT: sweeps[i % SWEEPS],
            contract.ROLE: contract.ROLE_TRIAL,
            contract.TRIAL_ID: f"{i:05d}",
            contract.CHECKPOINT: f"{path.parent}/checkpoints/trial_{i:05d}",
            "mlflow.user": "bench",
            "mlflow.source.name": "sweeps/rectified.py",
            "mlflow.source.type": "LOCAL",
        }
        if failed:
            tags[contract.FAILURE] = "RuntimeError: synthetic failure"
        rows["tags"] += [dict(key=k, value=v, run_uuid=run_id) for k, v in tags.items()]
        rows["params"] += [dict(key=k, value=str(v), run_uuid=run_id) for k, v in params.items()]
        history = {(k, e): float(rng.random()) for k in HISTORY for e in range(EPOCHS)}
        metrics = [(k, v, e) for (k, e), v in history.items()]
        if not failed:
            metrics += [(k, v, EPOCHS) for k, v in finals.items()]
        latest: dict[str, tuple] = {}
        for k, v, step in metrics:
            rows["metrics"].append(
                dict(key=k, value=v, timestamp=start + step, step=step, is_nan=False, run_uuid=run_id)
            )
            latest[k] = (v, step)
        rows["latest"] += [
            dict(key=k, value=v, timestamp=start + step, step=step, is_nan=False, run_uuid=run_id)
            for k, (v, step) in latest.items()
        ]
    store = SqlAlchemyStore(uri, artifact_root)
    with store.ManagedSessionMaker(read_only=False) as session:
        for model, key in (
            (SqlRun, "runs"),
            (SqlTag, "tags"),
            (SqlParam, "params"),
            (SqlMetric, "metrics"),
            (SqlLatestMetric, "latest"),
        ):
            session.execute(model.__table__.insert(), rows[key])
    for sweep in sweeps:
        client.set_terminated(sweep)
    check_store(client, exp_id, rows)
    return uri


def check_store(client, exp_id: str, rows: dict) -> None:
    """MLflow's own client reads the bulk-written runs back as written."""
    sample = rows["runs"][:: max(1, len(rows["runs"]) // 20)]
    for r in sample:
        run = client.get_run(r["run_uuid"])
        assert run.info.status == r["status"] and run.info.experiment_id == str(exp_id)
        written = {p["key"]: p["value"] for p in rows["params"] if p["run_uuid"] == r["run_uuid"]}
        assert run.data.params == written
        latest = {m["key"]: m["value"] for m in rows["latest"] if m["run_uuid"] == r["run_uuid"]}
        assert run.data.metrics == latest
        assert run.data.tags[contract.ROLE] == contract.ROLE_TRIAL


def cached_store(n_runs: int, rebuild: bool) -> tuple[str, float | None]:
    """(URI, build seconds or None when reused)."""
    folder = Path(tempfile.gettempdir()) / f"jepa_ray_bench_pareto_v{STORE_VERSION}_{n_runs}"
    db, done = folder / "mlflow.db", folder / "complete"
    if done.exists() and not rebuild:
        return f"sqlite:///{db}", None
    if folder.exists():
        for f in folder.glob("mlflow.db*"):
            f.unlink()
        done.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    uri = build_store(db, n_runs)
    done.write_text("ok")
    return uri, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Measurements


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_WORKSPACES", "false")

    uri, build_s = cached_store(args.runs, args.rebuild)
    if build_s is not None:
        emit(f"build store runs={args.runs}", "s", build_s)
    objectives = pareto.parse_objectives(pareto.DEFAULT_OBJECTIVES)
    metrics = list(contract.HEADLINE_METRICS)
    n = args.runs

    def fast():
        return pareto.extract(uri, EXPERIMENT, objectives=objectives, reader="sql")

    def client_reader(page_size):
        def run():
            trials = pareto.read_trials(uri, EXPERIMENT, metrics=metrics, reader="mlflow", page_size=page_size)
            return pareto.compute_front(trials, objectives, experiment=EXPERIMENT)

        return run

    def baseline():
        import mlflow

        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(EXPERIMENT)
        frame = mlflow.search_runs(
            [exp.experiment_id],
            filter_string=(f"attributes.status = 'FINISHED' AND tags.`{contract.ROLE}` = '{contract.ROLE_TRIAL}'"),
        )
        return pareto.compute_front(frame, objectives, experiment=EXPERIMENT)

    base_s, base_result = timed(baseline, 1)
    fast_s, fast_result = timed(fast, args.repeats)
    assert list(fast_result.front["run_id"]) == list(base_result.front["run_id"])
    assert fast_result.hypervolume == base_result.hypervolume
    emit(
        f"extract front (read + compute, params of the front only) sqlite reader runs={n} "
        f"front={len(fast_result.front)}",
        "s",
        fast_s,
        base_s,
    )
    read_s, trials = timed(lambda: pareto.read_trials(uri, EXPERIMENT, metrics=metrics, reader="sql"), args.repeats)
    emit(f"read_trials with all params sqlite reader runs={n}", "s", read_s, base_s)
    for page_size in (1_000, SEARCH_PAGE_SIZE):
        client_s, client_result = timed(client_reader(page_size), 1)
        pd_equal(client_result.trials, pareto.compute_front(trials, objectives, experiment=EXPERIMENT).trials)
        emit(f"read_trials + compute_front MlflowClient reader page_size={page_size} runs={n}", "s", client_s, base_s)
    emit(f"mlflow.search_runs + compute_front runs={n}", "s", base_s)
    sql_result = fast_result

    directions = [o.direction for o in objectives]
    front_values = sql_result.front[[o.column for o in objectives]].to_numpy(dtype=float)
    hv_s, _ = timed(lambda: pareto.hypervolume(front_values, directions, sql_result.reference), 20)
    emit(f"hypervolume 2 objectives front={len(front_values)}", "ms", hv_s * 1e3)
    three = pareto.parse_objectives("linear_acc:max,l0_density:min,rank_me:max")
    result3 = pareto.compute_front(trials, three)
    values3 = result3.front[[o.column for o in three]].to_numpy(dtype=float)
    hv3_s, _ = timed(lambda: pareto.hypervolume(values3, [o.direction for o in three], result3.reference), 3)
    emit(f"hypervolume 3 objectives front={len(values3)}", "ms", hv3_s * 1e3)
    feasible = trials[[o.column for o in objectives]].dropna().to_numpy(dtype=float)
    ranks_s, ranks = timed(lambda: pareto.nondominated_ranks(feasible, directions), args.repeats)
    emit(f"nondominated_ranks 2 objectives n={len(feasible)} fronts={ranks.max()}", "ms", ranks_s * 1e3)


def pd_equal(a, b) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(a, b)


if __name__ == "__main__":
    main()
