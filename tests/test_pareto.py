"""Pareto fronts: dominance, ranks, hypervolume and knee against brute force and hand-made cases;
reading trials from a real MLflow sqlite store (SQL reader == MlflowClient reader); the command
line end to end with real checkpoints; the command line's bad-input exits."""

from __future__ import annotations

import itertools
import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jepa_ray import pareto
from jepa_ray.errors import UsageError
from jepa_ray.pareto import (
    Filter,
    Objective,
    compute_front,
    hypervolume,
    knee_point,
    non_dominated,
    nondominated_ranks,
    parse_filter,
    parse_objectives,
    parse_reference,
)

# --------------------------------------------------------------------------------------------
# Brute-force references (minimization form)


def _to_min(values: np.ndarray, directions) -> np.ndarray:
    return values * np.array([-1.0 if d == "max" else 1.0 for d in directions])


def _bf_non_dominated(m: np.ndarray) -> np.ndarray:
    return np.array([not any(np.all(q <= p) and np.any(q < p) for q in m) for p in m], dtype=bool)


def _bf_ranks(m: np.ndarray) -> np.ndarray:
    """Rank = 1 + the longest chain of dominators above the point (the peeling definition)."""
    n = len(m)
    dom = np.array([[np.all(m[a] <= m[b]) and np.any(m[a] < m[b]) for b in range(n)] for a in range(n)])
    ranks = np.zeros(n, dtype=int)
    for _ in range(n):
        for b in range(n):
            above = ranks[dom[:, b]]
            ranks[b] = 1 + (above.max() if len(above) else 0)
    return ranks


def _bf_hypervolume(m: np.ndarray, ref: np.ndarray) -> float:
    """Sum of the grid cells (over all distinct coordinates) whose lower corner some point
    weakly dominates."""
    m = m[np.all(m < ref, axis=1)]
    if len(m) == 0:
        return 0.0
    grids = [np.unique(np.r_[m[:, j], ref[j]]) for j in range(m.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(g) - 1) for g in grids]):
        lo = np.array([g[c] for g, c in zip(grids, cell)])
        hi = np.array([g[c + 1] for g, c in zip(grids, cell)])
        if np.any(np.all(m <= lo, axis=1)):
            total += float(np.prod(hi - lo))
    return total


def _random_case(rng: np.random.Generator, k: int, n: int):
    """Integer-valued points (many ties and duplicates) and a random direction mix."""
    values = rng.integers(0, 5, size=(n, k)).astype(float) + rng.choice([0.0, 0.5], size=(n, k))
    directions = list(rng.choice(["max", "min"], size=k))
    return values, directions


# --------------------------------------------------------------------------------------------
# Math


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_non_dominated_and_ranks_match_brute_force(k):
    rng = np.random.default_rng(10 + k)
    for _ in range(40):
        values, directions = _random_case(rng, k, int(rng.integers(1, 30)))
        m = _to_min(values, directions)
        np.testing.assert_array_equal(non_dominated(values, directions), _bf_non_dominated(m))
        np.testing.assert_array_equal(nondominated_ranks(values, directions), _bf_ranks(m))


def test_non_dominated_large_random_matches_brute_force():
    """Past one comparison block (64 points) in 3-D and on a large 2-D set with ties."""
    rng = np.random.default_rng(3)
    for k, n in ((3, 300), (2, 400)):
        values = np.round(rng.random((n, k)), 1)
        directions = ["max"] + ["min"] * (k - 1)
        m = _to_min(values, directions)
        np.testing.assert_array_equal(non_dominated(values, directions), _bf_non_dominated(m))
        np.testing.assert_array_equal(nondominated_ranks(values, directions)[:60], _bf_ranks(m)[:60])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_hypervolume_matches_brute_force(k):
    rng = np.random.default_rng(20 + k)
    for _ in range(25 if k < 4 else 8):
        values, directions = _random_case(rng, k, int(rng.integers(1, 14 if k < 4 else 7)))
        # reference mostly beyond the worst values, sometimes cutting through the points
        worst = np.where(np.array(directions) == "max", -1.0, 5.5)
        reference = worst + rng.uniform(-2.0, 0.5, size=k) * np.where(np.array(directions) == "max", -1, 1)
        sign = np.array([-1.0 if d == "max" else 1.0 for d in directions])
        expected = _bf_hypervolume(values * sign, reference * sign)
        assert hypervolume(values, directions, reference) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hypervolume_hand_made_cases():
    # 2-D, accuracy (max) vs density (min), reference (0, 1): 0.9*(1-0.5) + 0.6*(0.5-0.1)
    pts = np.array([[0.9, 0.5], [0.6, 0.1], [0.5, 0.6]])
    assert hypervolume(pts, ["max", "min"], [0.0, 1.0]) == pytest.approx(0.69)
    # a single box, and two overlapping boxes in 3-D (0.25 + 0.25 - 0.125)
    assert hypervolume(np.array([[0.5, 0.5, 0.5]]), ["min"] * 3, [1, 1, 1]) == pytest.approx(0.125)
    two = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    assert hypervolume(two, ["min"] * 3, [1, 1, 1]) == pytest.approx(0.375)
    # duplicates count once; points beyond the reference count nothing
    assert hypervolume(np.vstack([two, two]), ["min"] * 3, [1, 1, 1]) == pytest.approx(0.375)
    assert hypervolume(np.array([[2.0, 0.1]]), ["min", "min"], [1, 1]) == 0.0
    # flipping a direction and the sign of its column changes nothing
    rng = np.random.default_rng(0)
    v = rng.random((20, 3))
    flipped = v * np.array([-1, 1, 1])
    assert hypervolume(v, ["max", "min", "min"], [0, 1, 1]) == pytest.approx(
        hypervolume(flipped, ["min", "min", "min"], [0, 1, 1])
    )


def test_non_dominated_hand_made_cases():
    pts = np.array([[0.9, 0.5], [0.9, 0.5], [0.9, 0.6], [0.8, 0.5], [0.6, 0.1], [0.6, 0.1]])
    # equal points are all on the front; equal in one objective and worse in the other is not
    np.testing.assert_array_equal(non_dominated(pts, ["max", "min"]), [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(nondominated_ranks(pts, ["max", "min"]), [1, 1, 2, 2, 1, 1])
    np.testing.assert_array_equal(non_dominated(pts, ["min", "max"]), [0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        non_dominated(np.array([[1.0, np.nan]]), ["max", "min"])
    with pytest.raises(ValueError, match="allowed: max, min"):
        non_dominated(pts, ["max", "down"])


def test_knee_point():
    # min/min: the point bulging toward the ideal corner
    front = np.array([[0.0, 1.0], [0.1, 0.2], [0.5, 0.1], [1.0, 0.0]])
    assert knee_point(front, ["min", "min"]) == 1
    # it is the point farthest from the chord through the extremes, for any positive scaling
    scaled = front * np.array([7.0, 0.01]) + np.array([3.0, -2.0])
    assert knee_point(scaled, ["min", "min"]) == 1
    d, rel = front[-1] - front[0], front - front[0]
    chord = (d[0] * rel[:, 1] - d[1] * rel[:, 0]) / np.linalg.norm(d)
    assert int(np.argmax(np.abs(chord))) == 1
    # accuracy (max) vs density (min)
    acc_l0 = np.array([[0.95, 0.9], [0.9, 0.2], [0.7, 0.05], [0.5, 0.01]])
    assert knee_point(acc_l0, ["max", "min"]) == 1
    assert knee_point(acc_l0[:1], ["max", "min"]) == 0


def test_parsers():
    assert parse_objectives("linear_acc:max, l0_density:min") == [
        Objective("linear_acc", "max"),
        Objective("l0_density", "min"),
    ]
    assert parse_objectives("knn_acc") == [Objective("knn_acc", "max")]
    for bad in ("", "linear_acc:up", "a:max,a:min", "lin acc:max"):
        with pytest.raises(ValueError, match="--objectives"):
            parse_objectives(bad)
    assert parse_filter("linear_acc>=0.5") == Filter("linear_acc", ">=", 0.5)
    assert parse_filter(" l0_density <= 3e-1 ") == Filter("l0_density", "<=", 0.3)
    for bad in ("linear_acc=>0.5", "__import__('os')>1", "linear_acc>=x", "linear_acc"):
        with pytest.raises(ValueError, match="--filter"):
            parse_filter(bad)
    objs = parse_objectives(pareto.DEFAULT_OBJECTIVES)
    assert parse_reference("linear_acc=0.1,l0_density=1", objs) == {"linear_acc": 0.1, "l0_density": 1.0}
    for bad in ("knn_acc=0", "linear_acc=abc", "linear_acc"):
        with pytest.raises(ValueError, match="--reference"):
            parse_reference(bad, objs)


def test_compute_front_on_a_frame():
    trials = pd.DataFrame(
        {
            "run_id": list("abcdefg"),
            "trial_id": list("ABCDEFG"),
            "sweep_run_id": ["s"] * 7,
            "checkpoint": [None] * 7,
            "metrics.linear_acc": [0.9, 0.8, 0.8, 0.6, 0.5, np.nan, 0.99],
            "metrics.l0_density": [0.5, 0.2, 0.2, 0.05, 0.6, 0.1, np.inf],
            "params.p": [1.0, 1.0, 0.5, 2.0, 1.0, 1.0, 1.0],
        }
    )
    r = compute_front(trials)
    assert list(r.front["run_id"]) == ["a", "b", "c", "d"]  # best accuracy first; b, c equal
    assert r.reference == (0.0, 1.0)
    assert r.hypervolume == pytest.approx(
        _bf_hypervolume(np.array([[-0.9, 0.5], [-0.8, 0.2], [-0.6, 0.05]]), np.array([0.0, 1.0]))
    )
    assert list(r.trials["feasible"]) == [True] * 5 + [False, False]
    assert list(r.trials["front_rank"].astype("float").fillna(0)) == [1, 1, 1, 1, 2, 0, 0]
    assert r.knee_run_id == "b" and r.front["knee"].sum() == 1
    band = compute_front(trials, filters=["l0_density>=0.1", "l0_density<=0.5"])  # an l0 band
    assert list(band.front["run_id"]) == ["a", "b", "c"] and band.trials["feasible"].sum() == 3
    assert list(compute_front(trials, filters=[Filter("linear_acc", ">", 0.8)]).front["run_id"]) == ["a"]
    with pytest.raises(UsageError, match="'p' is not a final metric"):
        compute_front(trials, filters=["p>=1"])
    custom = compute_front(trials, "linear_acc:max,l0_density:min", reference={"l0_density": 0.5})
    assert custom.reference == (0.0, 0.5)
    trials["metrics.knn_acc"] = [0.1, 0.9, 0.2, 0.3, 0.95, 0.5, 0.5]
    three = compute_front(trials, "linear_acc:max,l0_density:min,knn_acc:max", reference=[0.0, 1.0, 0.0])
    m = _to_min(
        trials[["metrics.linear_acc", "metrics.l0_density", "metrics.knn_acc"]].to_numpy()[:5], ["max", "min", "max"]
    )
    assert set(three.front["run_id"]) == set(trials["run_id"][:5][_bf_non_dominated(m)])
    assert three.hypervolume == pytest.approx(_bf_hypervolume(m, np.array([0.0, 1.0, 0.0])))
    trials = trials.drop(columns="metrics.knn_acc")
    with pytest.raises(UsageError, match="objective 'knn_acc' is not a final metric"):
        compute_front(trials, "knn_acc:max")
    with pytest.raises(UsageError, match="feasible"):
        compute_front(trials, filters=["linear_acc>=0.999"])
    table = pareto.format_table(r)
    assert "linear_acc (max)" in table and "b" in table.splitlines()[4] and "* knee" in table


# --------------------------------------------------------------------------------------------
# A real MLflow store: one sweep of real and synthetic trials, a second sweep, runs to ignore

EXPERIMENT = "pareto-e2e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store in the docs/design.md layout; returns a dict of what was written."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from jepa_ray.config import TrialConfig, flatten, resolve
    from jepa_ray.model import create_model
    from jepa_ray.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("pareto_store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    other = client.create_experiment("other", artifact_location=str(root / "artifacts_other"))
    client.create_experiment("only-failed", artifact_location=str(root / "artifacts_failed"))
    cfg = resolve(TrialConfig())
    model = create_model(cfg)
    now = int(time.time() * 1000)

    def run(
        experiment_id,
        parent,
        name,
        status="FINISHED",
        metrics=None,
        checkpoint=None,
        params=None,
        role="trial",
        extra_tags=None,
    ):
        tags = {"jepa_ray.role": role, "jepa_ray.trial_id": name, **(extra_tags or {})}
        if parent:
            tags["mlflow.parentRunId"] = parent
        if checkpoint:
            tags["jepa_ray.checkpoint"] = str(checkpoint)
        r = client.create_run(experiment_id, run_name=name, tags=tags)
        history = [Metric("online/linear_acc", 0.1 * e, now + e, e) for e in range(3)]
        # a stale step-0 value of every final metric: the reader must return the latest (step 1)
        finals = [Metric(k, -1.0, now, 0) for k in (metrics or {})]
        finals += [Metric(k, float(v), now + 1, 1) for k, v in (metrics or {}).items()]
        params = {k: str(v) for k, v in (params or {}).items()}
        client.log_batch(
            r.info.run_id,
            metrics=history + finals,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag("note", "x")],
        )
        client.set_terminated(r.info.run_id, status)
        return r.info.run_id

    def real_checkpoint(name, **overrides):
        c = resolve(TrialConfig())
        for key, value in overrides.items():
            setattr(c.target, key, value)
        path = save_checkpoint(root / "ckpt" / name, model=model, cfg=c, metrics={"epoch": 1})
        return path, {**flatten(c)}

    base_metrics = {
        "target_l0_density": 0.3,
        "linear_acc_z": 0.5,
        "knn_acc": 0.5,
        "l0_density_backbone": 0.4,
        "rank_me": 10.0,
    }
    sweep_a = run(exp, None, "sweep-a", role="sweep")
    sweep_b = run(exp, None, "sweep-b", role="sweep")
    written = {"uri": uri, "root": root, "sweep_a": sweep_a, "sweep_b": sweep_b, "model": model, "runs": {}}
    front_a = {"real_hi": (0.9, 0.5), "real_mid": (0.8, 0.2), "real_dup": (0.8, 0.2), "real_lo": (0.6, 0.05)}
    for i, (name, (acc, l0)) in enumerate(front_a.items()):
        ckpt, params = real_checkpoint(name, mu=-0.5 * i, p=1.0 + i)
        written["runs"][name] = run(
            exp,
            sweep_a,
            name,
            checkpoint=ckpt,
            params=params,
            metrics={"linear_acc": acc, "l0_density": l0, **base_metrics},
        )
    _, params = real_checkpoint("unused")
    written["runs"]["missing_ckpt"] = run(
        exp,
        sweep_a,
        "missing_ckpt",
        checkpoint=root / "ckpt" / "does-not-exist",
        params={**params, "seed": 101},  # a trial of its own: not the same (config, seed) as another
        metrics={"linear_acc": 0.7, "l0_density": 0.1},
    )
    rng = np.random.default_rng(0)
    for i in range(6):  # synthetic, dominated by the real ones, no checkpoints
        acc, l0 = 0.2 + 0.05 * i, 0.6 + 0.05 * i
        written["runs"][f"synthetic{i}"] = run(
            exp,
            sweep_a,
            f"synthetic{i}",
            metrics={"linear_acc": acc, "l0_density": l0},
            params={**params, "mu": float(rng.normal()), "seed": 200 + i},
        )
    written["runs"]["nan"] = run(
        exp, sweep_a, "nan", metrics={"linear_acc": 0.99, "l0_density": float("nan")}, params={**params, "seed": 301}
    )
    written["runs"]["inf"] = run(
        exp, sweep_a, "inf", metrics={"linear_acc": 0.99, "l0_density": float("inf")}, params={**params, "seed": 302}
    )
    # runs that must be ignored: FAILED, RUNNING, deleted, a sweep parent, another experiment
    ignored = [
        run(
            exp,
            sweep_a,
            "failed",
            status="FAILED",
            metrics={"linear_acc": 0.99, "l0_density": 0.001},
            extra_tags={"jepa_ray.failure": "ValueError: boom"},
        ),
        run(exp, sweep_a, "running", status="RUNNING", metrics={"linear_acc": 0.99, "l0_density": 0.001}),
        run(exp, sweep_a, "deleted", metrics={"linear_acc": 0.99, "l0_density": 0.001}),
        run(other, None, "elsewhere", metrics={"linear_acc": 0.99, "l0_density": 0.001}),
    ]
    client.delete_run(ignored[2])
    written["ignored"] = ignored
    ckpt_b, params_b = real_checkpoint("real_b", mu=-2.0)
    written["runs"]["real_b"] = run(
        exp,
        sweep_b,
        "real_b",
        checkpoint=f"file://{ckpt_b}",
        params=params_b,
        metrics={"linear_acc": 0.95, "l0_density": 0.9, **base_metrics},
    )
    written["runs"]["dominated_b"] = run(
        exp,
        sweep_b,
        "dominated_b",
        params={**params_b, "seed": 401},
        metrics={"linear_acc": 0.1, "l0_density": 0.95},
    )
    failed_exp = client.get_experiment_by_name("only-failed").experiment_id
    run(failed_exp, None, "f", status="FAILED", metrics={"linear_acc": 0.5, "l0_density": 0.5})
    written["client"] = client
    return written


def test_read_trials_sql_and_mlflow_readers_agree(store):
    for sweeps in (None, [store["sweep_a"]], [store["sweep_a"], store["sweep_b"]]):
        sql = pareto.read_trials(store["uri"], EXPERIMENT, sweep_run_ids=sweeps, reader="sql")
        via_client = pareto.read_trials(store["uri"], EXPERIMENT, sweep_run_ids=sweeps, reader="mlflow", page_size=3)
        pd.testing.assert_frame_equal(sql, via_client)
    auto = pareto.read_trials(store["uri"], EXPERIMENT)
    pd.testing.assert_frame_equal(auto, sql)
    names = {v: k for k, v in store["runs"].items()}
    assert set(auto["run_id"]) == set(names)  # no FAILED / RUNNING / deleted / parent / other-experiment run
    assert not set(auto["run_id"]) & set(store["ignored"])
    row = auto.set_index("run_id").loc[store["runs"]["real_mid"]]
    assert row["metrics.linear_acc"] == 0.8 and row["metrics.l0_density"] == 0.2  # latest step, not step 0
    assert row["trial_id"] == "real_mid" and row["sweep_run_id"] == store["sweep_a"]
    assert row["params.p"] == 2.0 and row["params.dataset"] == "digits" and row["params.num_slices"] == 1024
    by_name = auto.set_index("trial_id")
    assert math.isnan(by_name.loc["nan", "metrics.l0_density"]) and by_name.loc["inf", "metrics.l0_density"] == np.inf
    assert math.isnan(by_name.loc["synthetic0", "metrics.rank_me"])
    ids = list(auto["run_id"][:7])
    pd.testing.assert_frame_equal(
        pareto.read_params(store["uri"], ids, reader="sql"), pareto.read_params(store["uri"], ids, reader="mlflow")
    )
    pd.testing.assert_frame_equal(
        pareto.read_params(store["uri"], ids), auto.iloc[:7][["run_id", *auto.filter(like="params.").columns]]
    )
    lean = pareto.read_trials(store["uri"], EXPERIMENT, params=False)
    pd.testing.assert_frame_equal(lean, auto.drop(columns=list(auto.filter(like="params.").columns)))
    only_b = pareto.read_trials(store["uri"], EXPERIMENT, sweep_run_ids=[store["sweep_b"]])
    assert set(only_b["trial_id"]) == {"real_b", "dominated_b"}
    assert list(pareto.read_trials(store["uri"], EXPERIMENT, metrics=["linear_acc"]).filter(like="metrics.")) == [
        "metrics.linear_acc"
    ]


def test_read_trials_errors(store):
    for reader in ("sql", "mlflow"):
        with pytest.raises(UsageError, match="unknown experiment 'nope'.*pareto-e2e"):
            pareto.read_trials(store["uri"], "nope", reader=reader)
        with pytest.raises(UsageError, match="--sweep deadbeef: no such run"):
            pareto.read_trials(store["uri"], EXPERIMENT, sweep_run_ids=["deadbeef"], reader=reader)
    assert pareto.read_trials(store["uri"], "only-failed").empty


def test_extract_front_of_the_store(store):
    result = pareto.extract(store["uri"], EXPERIMENT, sweep_run_ids=[store["sweep_a"]])
    runs = store["runs"]
    expected = ["real_hi", "real_dup", "real_mid", "missing_ckpt", "real_lo"]
    assert sorted(result.front["trial_id"]) == sorted(expected)
    assert list(result.front["trial_id"])[0] == "real_hi" and list(result.front["trial_id"])[-1] == "real_lo"
    pts = np.array([[0.9, 0.5], [0.8, 0.2], [0.7, 0.1], [0.6, 0.05]])
    assert result.hypervolume == pytest.approx(_bf_hypervolume(pts * [-1, 1], np.array([0.0, 1.0])))
    assert result.knee_run_id in {runs["real_mid"], runs["real_dup"], runs["missing_ckpt"]}
    front = result.front.set_index("trial_id")
    assert front.loc["real_lo", "params.p"] == 4.0 and front.loc["real_lo", "params.mu"] == -1.5
    assert not any(c.startswith("params.") for c in result.trials.columns)
    both = pareto.extract(store["uri"], EXPERIMENT)
    assert runs["real_b"] in set(both.front["run_id"]) and both.hypervolume > result.hypervolume


def test_cli_end_to_end(store, tmp_path, capsys):
    import pyarrow.parquet as pq
    from PIL import Image

    import jepa_ray

    out = tmp_path / "export"
    code = pareto.main(
        [
            "--experiment",
            EXPERIMENT,
            "--out",
            str(out),
            "--tracking-uri",
            store["uri"],
            "--register",
            "jepa-pareto-test",
            "--all-sweeps",  # both sweeps and the trials outside any, pooled
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Pareto front of experiment 'pareto-e2e'" in captured.out and "real_mid" in captured.out
    assert f"run {store['runs']['missing_ckpt']}: checkpoint" in captured.err  # reported, the rest exported

    table = pq.read_table(out / "pareto.parquet")
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    front = table.to_pandas()
    runs = store["runs"]
    assert set(front["run_id"]) == {
        runs[n] for n in ("real_b", "real_hi", "real_mid", "real_dup", "missing_ckpt", "real_lo")
    }
    assert {
        "trial_id",
        "metrics.linear_acc",
        "metrics.l0_density",
        "metrics.knn_acc",
        "params.mu",
        "params.lambd",
        "front_rank",
        "checkpoint",
        "knee",
    } <= set(front.columns)
    assert (front["front_rank"] == 1).all()
    assert json.loads(meta["jepa_ray.objectives"]) == [
        {"name": "linear_acc", "direction": "max"},
        {"name": "l0_density", "direction": "min"},
    ]
    assert json.loads(meta["jepa_ray.reference"]) == {"linear_acc": 0.0, "l0_density": 1.0}
    assert json.loads(meta["jepa_ray.experiment"]) == EXPERIMENT
    assert json.loads(meta["jepa_ray.hypervolume"]) == pytest.approx(
        pareto.extract(store["uri"], EXPERIMENT).hypervolume
    )
    assert "jepa_ray.created" in meta

    exported = front[front["export_path"].notna()]
    assert set(exported["trial_id"]) == {"real_b", "real_hi", "real_mid", "real_dup", "real_lo"}
    assert front.set_index("trial_id").loc["missing_ckpt", "export_error"].startswith("FileNotFoundError")
    reference = {k: v for k, v in store["model"].state_dict().items()}
    for row in exported.itertuples():
        path = out / row.export_path
        assert path == out / "checkpoints" / row.run_id
        encoder = jepa_ray.load_encoder(path)
        state = encoder.state_dict()
        assert all(np.array_equal(state[k].numpy(), reference[k].numpy()) for k in reference)
        metrics = json.loads((path / "metrics.json").read_text())
        assert metrics["linear_acc"] == front.set_index("run_id").loc[row.run_id, "metrics.linear_acc"]
        assert json.loads((path / "mlflow_run.json").read_text())["run_id"] == row.run_id
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(exported["run_id"])

    with Image.open(out / "pareto.png") as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 300
    client = store["client"]
    for parent in (store["sweep_a"], store["sweep_b"]):
        logged = {Path(a.path).name for a in client.list_artifacts(parent, "pareto")}
        assert {"pareto.png", "pareto.txt", "pareto.parquet"} <= logged
        assert client.get_run(parent).data.metrics["pareto/front_size"] == len(front)
    versions = client.search_model_versions("name='jepa-pareto-test'")
    assert len(versions) == len(exported)
    assert {v.run_id for v in versions} == set(exported["run_id"])
    assert all({"linear_acc", "l0_density", "knee"} <= set(v.tags) for v in versions)

    # an existing export needs --overwrite; with it the export is replaced
    assert pareto.main(["--experiment", EXPERIMENT, "--out", str(out), "--tracking-uri", store["uri"]]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        pareto.main(
            [
                "--experiment",
                EXPERIMENT,
                "--out",
                str(out),
                "--tracking-uri",
                store["uri"],
                "--overwrite",
                "--sweep",
                store["sweep_b"],
                "--no-log",
            ]
        )
        == 0
    )
    assert set(pq.read_table(out / "pareto.parquet").to_pandas()["trial_id"]) == {"real_b"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [runs["real_b"]]


@pytest.mark.parametrize(
    "case",
    [
        "unknown_experiment",
        "missing_objective",
        "no_finished_runs",
        "bad_filter",
        "missing_db",
        "unreachable_http",
        "infeasible",
    ],
)
def test_cli_bad_input_exits_2_with_one_line(case, store, tmp_path, capsys, monkeypatch):
    args = {
        "unknown_experiment": ["--experiment", "nope"],
        "missing_objective": ["--objectives", "linear_acc:max,sparsity:min"],
        "no_finished_runs": ["--experiment", "only-failed"],
        "bad_filter": ["--filter", "linear_acc=>0.5"],
        "missing_db": ["--tracking-uri", f"sqlite:///{tmp_path}/absent.db"],
        "unreachable_http": ["--tracking-uri", f"http://127.0.0.1:{_free_port()}"],
        "infeasible": ["--filter", "linear_acc>=0.999"],
    }[case]
    argv = ["--experiment", EXPERIMENT, "--tracking-uri", store["uri"], "--out", str(tmp_path / "o"), *args]
    asked = []  # a tracking server that does not answer is asked once, with a bounded timeout
    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda *a, **k: asked.append(k.get("timeout")) or real_urlopen(*a, **k)
    )
    assert pareto.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert all(t is not None for t in asked) and (case != "unreachable_http" or asked)
    assert err.startswith("error: ") and "\n" not in err, err
    expected = {
        "unknown_experiment": "unknown experiment 'nope'",
        "missing_objective": "objective 'sparsity'",
        "no_finished_runs": "no FINISHED trial runs",
        "bad_filter": "--filter",
        "missing_db": "does not exist",
        "unreachable_http": "unreachable",
        "infeasible": "feasible",
    }[case]
    assert expected in err
    assert not (tmp_path / "o").exists()


def test_module_entry_point_reports_errors(store, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jepa_ray.pareto",
            "--experiment",
            "nope",
            "--out",
            str(tmp_path / "o"),
            "--tracking-uri",
            store["uri"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown experiment 'nope'") and proc.stderr.count("\n") == 1


def test_band_regret_against_brute_force():
    """Bands a factor 2 wide; at each covered band's upper edge the best accuracy found below it
    against the reference's best below it; averaged over the covered bands."""
    import itertools
    import random as random_lib

    from jepa_ray.pareto.bands import band_regret

    reference = [(0.40, 0.011), (0.45, 0.03), (0.50, 0.2), (0.48, 0.9)]
    # covered bands: [2^-7, 2^-6) ∋ 0.011, [2^-6, 2^-5) ∋ 0.03, [2^-3, 2^-2) ∋ 0.2, [2^-1, 1) ∋ 0.9
    assert band_regret(reference, reference) == 0.0
    found = [(0.30, 0.012), (0.50, 0.25)]  # bests below the edges 2^-6, 2^-5, 2^-2 (0.25 is not), 1
    assert band_regret(found, reference) == pytest.approx(((0.40 - 0.30) + (0.45 - 0.30) + (0.50 - 0.30) + 0.0) / 4)
    assert band_regret([], reference) == pytest.approx((0.40 + 0.45 + 0.50 + 0.50) / 4)
    rng = random_lib.Random(0)
    for _ in range(50):  # brute force over edges on random sets
        ref = [(rng.random(), 10 ** rng.uniform(-3, 0)) for _ in range(8)]
        got = [(rng.random(), 10 ** rng.uniform(-3, 0)) for _ in range(5)]
        edges = sorted({2.0 ** (math.floor(math.log2(d)) + 1) for _, d in ref})
        expected = []
        for e in edges:
            best = max(a for a, d in ref if d < e)
            mine = max([a for a, d in got if d < e] + [0.0])
            expected.append(max(0.0, best - mine))
        assert band_regret(got, ref) == pytest.approx(sum(expected) / len(expected))
        assert band_regret(list(itertools.chain(got, ref)), ref) == 0.0


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


KILLED_MID_EXPORT = """
import importlib, os, signal, sys
export = importlib.import_module("jepa_ray.pareto.export")  # the module, not the function of that name
export.write_plot = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # checkpoints and table written
from jepa_ray.pareto.cli import main
main(sys.argv[1:])
"""


def test_an_export_killed_half_way_leaves_the_previous_one_intact_and_the_next_replaces_it(store, tmp_path):
    out = tmp_path / "export"
    args = ["--experiment", EXPERIMENT, "--out", str(out), "--tracking-uri", store["uri"], "--no-log"]
    assert pareto.main([*args, "--sweep", store["sweep_b"]]) == 0
    (out / "notes.txt").write_text("the user's, not the export's")
    before = _files(out)

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_EXPORT, *args, "--all-sweeps", "--overwrite"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _files(out) == before
    assert [p.name.startswith(".export.export-") for p in tmp_path.iterdir() if p != out] == [True]  # staged

    assert pareto.main([*args, "--all-sweeps", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the killed one's staging cleared
    after = _files(out)
    assert after["notes.txt"] == before["notes.txt"]
    import pyarrow.parquet as pq

    runs = set(pq.read_table(out / "pareto.parquet").to_pandas()["run_id"])
    assert len(runs) > 1 and {p.name for p in (out / "checkpoints").iterdir()} <= runs
