"""Fronts compared and the plots of an export: several experiments and seed sweeps read back from
the Parquet with the sweep and experiment of every point, per-group hypervolumes equal to the
per-sweep exports' at one shared reference, the spread over seeds, the ℓ0 calibration data equal
to the runs' metrics (and its plot logged to the sweep's parent run), the staircase and labels of
the front plot, and bad input refused before any work. A real sqlite MLflow store, no network."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_pareto import EXPERIMENT, store  # noqa: F401  (the checkpointed two-sweep store)

from jepa_ray import pareto
from jepa_ray.errors import UsageError
from jepa_ray.pareto import comparison as comparison_lib
from jepa_ray.pareto.plot import label_params, point_label, staircase
from jepa_ray.tracking.plots import activation_plot

SEEDED, BASELINE = "rect-seeds", "baseline"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """A sqlite store with experiment SEEDED (three seed sweeps of six trials, sparse targets)
    and BASELINE (one sweep of four trials, dense target 1, its parent without a sweep-name tag
    and one trial without target_l0_density). Returns the URI and, per trial run id, what was
    logged: experiment, sweep run id, sweep name and final metrics."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("compare_store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    rng = np.random.default_rng(7)
    now = int(time.time() * 1000)
    runs, sweeps = {}, {SEEDED: [], BASELINE: []}
    for name, n_sweeps, n_trials in ((SEEDED, 3, 6), (BASELINE, 1, 4)):
        exp = client.create_experiment(name, artifact_location=str(root / f"artifacts-{name}"))
        for s in range(n_sweeps):
            sweep_name = f"{name}-seed{s}"
            tags = {"jepa_ray.role": "sweep"} | ({"jepa_ray.sweep_name": sweep_name} if name == SEEDED else {})
            parent = client.create_run(exp, run_name=sweep_name, tags=tags).info.run_id
            sweeps[name].append(parent)
            for i in range(n_trials):
                target = 1.0 if name == BASELINE else float(np.exp(rng.uniform(np.log(0.01), np.log(0.5))))
                measured = float(min(target * np.exp(rng.normal(-0.1, 0.3)), 1.0))
                metrics = {
                    "linear_acc": float(0.95 - 0.1 * np.exp(-measured / 0.05) - rng.uniform(0, 0.08)),
                    "l0_density": measured,
                    "target_l0_density": target,
                    "rank_me": float(rng.uniform(5, 60)),
                }
                if name == BASELINE and i == 0:
                    del metrics["target_l0_density"]
                params = {"mu": round(float(rng.uniform(-3, 0)), 2), "p": float(rng.choice([0.5, 1, 2])), "lambd": 0.7}
                trial_tags = {"jepa_ray.role": "trial", "jepa_ray.trial_id": f"{s}-{i}", "mlflow.parentRunId": parent}
                run = client.create_run(exp, run_name=f"trial-{i}", tags=trial_tags).info.run_id
                client.log_batch(
                    run,
                    metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                    params=[Param(k, str(v)) for k, v in params.items()],
                )
                client.set_terminated(run, "FINISHED")
                runs[run] = {"experiment": name, "sweep": parent, "sweep_name": sweep_name, "metrics": metrics}
            client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "runs": runs, "sweeps": sweeps, "client": client}


def _export(uri: str, out: Path, *args: str) -> tuple[dict, pd.DataFrame, dict]:
    """Run the command line; (parquet metadata, parquet frame, pareto.json)."""
    assert pareto.main(["--tracking-uri", uri, "--out", str(out), "--no-log", *args]) == 0
    table = pq.read_table(out / "pareto.parquet")
    meta = {k.decode(): json.loads(v) for k, v in table.schema.metadata.items() if k.startswith(b"jepa_ray.")}
    return meta, table.to_pandas(), json.loads((out / "pareto.json").read_text())


def test_experiments_compared_read_back_with_their_origin(seeds, tmp_path, capsys):
    meta, front, summary = _export(seeds["uri"], tmp_path / "both", "--experiment", SEEDED, "--experiment", BASELINE)
    out = capsys.readouterr().out
    assert "2 fronts by experiment" in out and f"hypervolume over 3 sweeps of '{SEEDED}': mean" in out
    assert {"experiment", "sweep_run_id", "sweep_name", "group", "overall_front"} <= set(front.columns)
    assert set(front["experiment"]) == {SEEDED, BASELINE}
    for row in front.itertuples():
        logged = seeds["runs"][row.run_id]
        assert (row.experiment, row.sweep_run_id, row.sweep_name, row.group) == (
            logged["experiment"],
            logged["sweep"],
            logged["sweep_name"],  # BASELINE's parent has no sweep-name tag: its run name
            logged["experiment"],
        )
    assert meta["jepa_ray.group_by"] == "experiment" and meta["jepa_ray.experiments"] == sorted([SEEDED, BASELINE])
    assert front.groupby("group")["knee"].sum().to_dict() == {SEEDED: 1, BASELINE: 1}  # one knee per front
    # each group's front and hypervolume are those of its experiment exported alone (same reference)
    groups = {g["label"]: g for g in summary["groups"]}
    for name in (SEEDED, BASELINE):
        alone_meta, alone, _ = _export(seeds["uri"], tmp_path / name, "--experiment", name, "--all-sweeps")
        assert groups[name]["hypervolume"] == pytest.approx(alone_meta["jepa_ray.hypervolume"], rel=1e-12)
        assert set(front[front["group"] == name]["run_id"]) == set(alone["run_id"])
        assert alone_meta["jepa_ray.reference"] == meta["jepa_ray.reference"] == summary["reference"]
    with Image.open(tmp_path / "both" / "pareto.png") as img:
        assert img.format == "PNG" and img.size[0] > 600


def test_seed_sweeps_hypervolumes_equal_the_per_sweep_exports(seeds, tmp_path, capsys):
    sweeps = seeds["sweeps"][SEEDED]
    meta, front, summary = _export(seeds["uri"], tmp_path / "seeds", *[a for s in sweeps for a in ("--sweep", s)])
    printed = capsys.readouterr().out
    assert meta["jepa_ray.group_by"] == "sweep"  # auto: several --sweep, no --experiment (inferred)
    by_sweep = {g["sweep_run_ids"][0]: g for g in summary["groups"]}
    assert [g["label"] for g in summary["groups"]] == [f"{SEEDED}-seed{i}" for i in range(3)]  # --sweep order
    per_sweep = []
    for sweep in sweeps:
        alone_meta, alone, _ = _export(seeds["uri"], tmp_path / sweep, "--sweep", sweep)
        per_sweep.append(alone_meta["jepa_ray.hypervolume"])
        assert by_sweep[sweep]["hypervolume"] == pytest.approx(per_sweep[-1], rel=1e-12)
        assert set(front[front["sweep_run_id"] == sweep]["run_id"]) == set(alone["run_id"])
        assert (front[front["sweep_run_id"] == sweep]["sweep_name"] == by_sweep[sweep]["label"]).all()
    rows = {r["sweep_run_id"]: r["hypervolume"] for r in summary["sweeps"]}
    assert [rows[s] for s in sweeps] == pytest.approx(per_sweep, rel=1e-12)
    stats = summary["sweep_hypervolume"][SEEDED]
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(np.mean(per_sweep))
    assert stats["std"] == pytest.approx(np.std(per_sweep, ddof=1))
    assert (stats["min"], stats["max"]) == pytest.approx((min(per_sweep), max(per_sweep)))
    assert meta["jepa_ray.sweep_hypervolume"] == summary["sweep_hypervolume"]
    assert f"mean {stats['mean']:.6g}, std {stats['std']:.3g} (sample, ddof=1)" in printed
    # --group-by none: the pooled front of the three sweeps, as before comparisons existed
    pooled_meta, pooled, _ = _export(
        seeds["uri"], tmp_path / "pooled", "--group-by", "none", *[a for s in sweeps for a in ("--sweep", s)]
    )
    assert pooled_meta["jepa_ray.hypervolume"] == pytest.approx(meta["jepa_ray.hypervolume"])
    assert set(pooled["run_id"]) == set(front[front["overall_front"]]["run_id"])


def test_one_reference_for_all_groups_with_a_data_dependent_objective(seeds):
    """rank_me's default reference is the worst value observed: pooled over the groups, so that
    the groups' hypervolumes compare."""
    comp = pareto.compare(
        seeds["uri"], [SEEDED, BASELINE], objectives=pareto.parse_objectives("linear_acc:max,rank_me:max")
    )
    worst = min(r["metrics"]["rank_me"] for r in seeds["runs"].values())
    assert comp.reference == (0.0, worst)
    for group in comp.groups.values():
        assert group.reference == comp.reference
        values = group.trials[["metrics.linear_acc", "metrics.rank_me"]].to_numpy()
        assert group.hypervolume == pytest.approx(pareto.hypervolume(values, ["max", "max"], comp.reference))
    hv = comp.sweeps.set_index("sweep_run_id")["hypervolume"]
    for sweep in seeds["sweeps"][SEEDED]:
        alone = pareto.extract(
            seeds["uri"],
            SEEDED,
            sweep_run_ids=[sweep],
            objectives="linear_acc:max,rank_me:max",
            reference=comp.reference,
        )
        assert hv[sweep] == pytest.approx(alone.hypervolume, rel=1e-12)


def test_calibration_data_equals_the_runs_metrics(seeds, tmp_path):
    comp = pareto.compare(seeds["uri"], [SEEDED, BASELINE])
    data = pareto.calibration_data(comp)
    expected = {
        rid: (r["metrics"]["target_l0_density"], r["metrics"]["l0_density"])
        for rid, r in seeds["runs"].items()
        if "target_l0_density" in r["metrics"]
    }
    assert len(data) == len(expected) == len(seeds["runs"]) - 1  # the trial without a target is left out
    for row in data.itertuples():
        assert (row.target, row.measured) == expected[row.run_id]
        assert row.experiment == seeds["runs"][row.run_id]["experiment"] == row.group
    assert set(data[data["on_front"]]["run_id"]) <= set(comp.front()["run_id"])
    path = pareto.write_calibration_plot(comp, tmp_path / "calibration.png")
    with Image.open(path) as img:
        assert img.format == "PNG"
    frame = comp.overall.trials.drop(columns="metrics.target_l0_density")
    assert pareto.write_calibration_plot(pareto.compute_front(frame), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_sweep_end_logs_the_calibration_plot_to_the_parent(seeds):
    """What the sweep driver calls at a sweep's end: extract, then log_to_parent."""
    sweep = seeds["sweeps"][SEEDED][0]
    result = pareto.extract(seeds["uri"], SEEDED, sweep_run_ids=[sweep])
    assert set(result.front["sweep_name"]) == {f"{SEEDED}-seed0"} and set(result.front["experiment"]) == {SEEDED}
    pareto.log_to_parent(result, seeds["uri"], sweep)
    logged = {Path(a.path).name for a in seeds["client"].list_artifacts(sweep, "pareto")}
    assert {"pareto.png", "pareto.txt", "l0_calibration.png"} <= logged
    assert seeds["client"].get_run(sweep).data.metrics["pareto/hypervolume"] == pytest.approx(result.hypervolume)


def test_sweeps_of_the_checkpointed_store_export_with_their_origin(store, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "export"
    args = ["--experiment", EXPERIMENT, "--sweep", store["sweep_a"], "--sweep", store["sweep_b"]]
    assert pareto.main([*args, "--tracking-uri", store["uri"], "--out", str(out)]) == 0
    capsys.readouterr()
    front = pq.read_table(out / "pareto.parquet").to_pandas()
    names = {store["sweep_a"]: "sweep-a", store["sweep_b"]: "sweep-b"}  # run names: no sweep-name tag there
    by_trial = front.set_index("trial_id")
    for trial in ("real_hi", "real_mid", "real_dup", "real_lo", "missing_ckpt"):
        assert (by_trial.loc[trial, "sweep_run_id"], by_trial.loc[trial, "group"]) == (store["sweep_a"], "sweep-a")
    assert by_trial.loc["real_b", "sweep_run_id"] == store["sweep_b"]
    assert (front["sweep_name"] == front["sweep_run_id"].map(names)).all() and (front["experiment"] == EXPERIMENT).all()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        front["run_id"][front["export_path"].notna()]
    )
    info = json.loads((out / "checkpoints" / store["runs"]["real_b"] / "mlflow_run.json").read_text())
    assert (info["sweep_name"], info["experiment"], info["group"]) == ("sweep-b", EXPERIMENT, "sweep-b")
    client = store["client"]
    for parent in (store["sweep_a"], store["sweep_b"]):  # each parent: its own group's front
        assert {"l0_calibration.png", "pareto.png"} <= {
            Path(a.path).name for a in client.list_artifacts(parent, "pareto")
        }
        size = client.get_run(parent).data.metrics["pareto/front_size"]
        assert size == (front["sweep_run_id"] == parent).sum()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--experiment", SEEDED, "--experiment", "nope", "--experiment", BASELINE], "unknown experiment 'nope'"),
        (["--experiment", BASELINE, "--sweep", "SEEDED_SWEEP"], "--sweep SEEDED_SWEEP: no such run in experiment"),
        (["--sweep", "deadbeef", "--sweep", "SEEDED_SWEEP"], "--sweep deadbeef: no such run"),
        (["--experiment", SEEDED, "--l0-scale", "cubic"], "--l0-scale"),
        (["--experiment", SEEDED, "--group-by", "seed"], "--group-by"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_work(seeds, tmp_path, capsys, monkeypatch, args, expected):
    def no_work(*_, **__):
        raise AssertionError("trials were read before the input was checked")

    monkeypatch.setattr(comparison_lib, "read_trials", no_work)
    sweep = seeds["sweeps"][SEEDED][0]
    args = [a.replace("SEEDED_SWEEP", sweep) for a in args]
    assert _exit_code(["--tracking-uri", seeds["uri"], "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected.replace("SEEDED_SWEEP", sweep) in err, err
    assert not (tmp_path / "o").exists()


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with (a bad choice)."""
    try:
        return pareto.main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_staircase_bounds_what_the_front_dominates():
    acc, l0 = pareto.Objective("linear_acc", "max"), pareto.Objective("l0_density", "min")
    # x = l0 (min), y = accuracy (max); the third point is beyond the reference and left out
    xs, ys = staircase(np.array([0.3, 0.1, 1.5]), np.array([0.9, 0.7, 0.99]), l0, acc, (1.0, 0.0))
    assert list(zip(xs, ys)) == [(0.1, 0.0), (0.1, 0.7), (0.3, 0.7), (0.3, 0.9), (1.0, 0.9)]
    # the region under the steps (down to the reference) is what the hypervolume measures
    hv = pareto.hypervolume(np.array([[0.9, 0.3], [0.7, 0.1]]), ["max", "min"], [0.0, 1.0])
    assert np.trapezoid(ys, xs) == pytest.approx(hv) == pytest.approx(0.77)
    assert staircase(np.array([2.0]), np.array([0.5]), l0, acc, (1.0, 0.0))[0].size == 0


def test_point_labels_show_the_params_that_vary():
    front = pd.DataFrame({"params.mu": [-1.0, -2.5], "params.p": [1.0, 1.0], "params.lambd": [0.714, 0.5]})
    assert label_params(front) == ["mu", "lambd"]
    assert point_label(front.iloc[1], ["mu", "lambd"]) == "μ=-2.5 λ=0.5"
    assert label_params(front.iloc[:1]) == ["mu", "p"]  # nothing varies: the first two present
    assert point_label(pd.Series({"params.num_slices": 1024.0}), ["num_slices"]) == "N=1024"


def test_plot_scales_and_activation_plot(seeds, tmp_path):
    comp = pareto.compare(seeds["uri"], [SEEDED])
    for scale in ("auto", "log", "linear"):
        with Image.open(pareto.write_plot(comp, tmp_path / f"{scale}.png", l0_scale=scale)) as img:
            assert img.format == "PNG"
    with pytest.raises(UsageError, match="--l0-scale 'cubic' is not allowed"):
        pareto.write_plot(comp, tmp_path / "x.png", l0_scale="cubic")
    for target in (0.12, None):
        path = activation_plot([0.0, 0.1, 0.3, 1.0], tmp_path / f"act{target}.png", "rates", target_density=target)
        with Image.open(path) as img:
            assert img.format == "PNG"


def test_the_activation_plot_fills_each_dimension_to_its_rate(tmp_path):
    """Sorted rates [1, 1, 0, 0]: the left half of the axes is filled to the top, the right half
    is empty (the picture is the rates, whatever draws it)."""
    with Image.open(activation_plot([0.0, 1.0, 0.0, 1.0], tmp_path / "a.png", "rates")) as img:
        rgb = img.convert("RGB")
        width, height = rgb.size
        at = lambda x, y: rgb.getpixel((int(x * width), int(y * height)))  # noqa: E731
        blue, white = (0x1F, 0x77, 0xB4), (255, 255, 255)
        assert [at(x, 0.6) for x in (0.2, 0.3, 0.45)] == [blue] * 3
        assert [at(x, 0.6) for x in (0.65, 0.8, 0.9)] == [white] * 3


def test_the_mlflow_client_reader_agrees_with_the_sql_reader(seeds):
    """A non-sqlite store goes through MlflowClient: the same fronts, origins and sweep table."""
    sql = pareto.compare(seeds["uri"], [SEEDED, BASELINE], reader="sql")
    via_client = pareto.compare(seeds["uri"], [SEEDED, BASELINE], reader="mlflow")
    pd.testing.assert_frame_equal(sql.front(), via_client.front())
    pd.testing.assert_frame_equal(sql.sweeps, via_client.sweeps)
    assert list(sql.groups) == list(via_client.groups) == [SEEDED, BASELINE]
    with pytest.raises(UsageError, match="unknown experiment 'nope'"):
        pareto.compare(seeds["uri"], [SEEDED, "nope"], reader="mlflow")


def test_an_export_tags_its_untagged_experiments_as_training_experiments(seeds, tmp_path):
    client = seeds["client"]
    for name in (SEEDED, BASELINE):
        exp = client.get_experiment_by_name(name)
        if "mlflow.experimentKind" in exp.tags:
            client.delete_experiment_tag(exp.experiment_id, "mlflow.experimentKind")
    _export(seeds["uri"], tmp_path / "out", "--experiment", SEEDED, "--experiment", BASELINE)
    for name in (SEEDED, BASELINE):
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"


# --------------------------------------------------------------------------------------------
# Which sweeps an export holds by default


def test_an_export_without_sweep_holds_the_newest_sweep_and_all_sweeps_pools_without_repeats(tmp_path, capsys):
    """Two sweeps of one experiment, the second a re-run with the same seed (its first trial the
    same config and seed, bit-identical) plus a trial of its own: the default export is the newest
    sweep and says so; --all-sweeps pools both and shows the repeated trial once."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("rerun", artifact_location=str(tmp_path / "artifacts"))
    trials = {
        "first": ({"mu": "-1.0", "p": "1.0", "seed": "0"}, {"linear_acc": 0.9, "l0_density": 0.1}),
        "second": ({"mu": "-2.0", "p": "1.0", "seed": "1"}, {"linear_acc": 0.8, "l0_density": 0.05}),
    }
    parents = []
    for s, names in enumerate((["first"], ["first", "second"])):
        parent = client.create_run(exp, run_name=f"sweep{s}", tags={"jepa_ray.role": "sweep"}).info.run_id
        parents.append(parent)
        for name in names:
            params, metrics = trials[name]
            tags = {"jepa_ray.role": "trial", "mlflow.parentRunId": parent, "jepa_ray.trial_id": f"{s}-{name}"}
            run = client.create_run(exp, run_name=name, tags=tags).info.run_id
            now = int(time.time() * 1000)
            client.log_batch(
                run,
                metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in params.items()],
            )
            client.set_terminated(run, "FINISHED")
        client.set_terminated(parent, "FINISHED")
        time.sleep(0.01)  # distinct start times: the second sweep is the newest

    _, newest, _ = _export(uri, tmp_path / "newest", "--experiment", "rerun")
    assert f"exporting the newest sweep of rerun: sweep1 ({parents[1]})" in capsys.readouterr().out
    assert set(newest["sweep_run_id"]) == {parents[1]} and len(newest) == 2
    _, pooled, _ = _export(uri, tmp_path / "pooled", "--experiment", "rerun", "--all-sweeps")
    assert sorted(pooled["trial_id"].str.split("-").str[1]) == ["first", "second"]  # the re-run shown once
    both = ["--tracking-uri", uri, "--out", str(tmp_path / "x"), "--all-sweeps", "--sweep", parents[0]]
    assert pareto.main(both) == 2
    assert "--all-sweeps and --sweep exclude each other" in capsys.readouterr().err
