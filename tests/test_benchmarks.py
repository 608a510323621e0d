"""The benchmark scripts run and print docs/design.md's JSON lines (speed goals live in the scripts'
output, never in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"bench", "case", "metric", "value", "device"}


def run_bench(*args: str, positive: bool = True, env: dict[str, str] | None = None) -> list[dict]:
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env and {**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows, out.stdout[-2000:]
    for row in rows:
        assert REQUIRED <= set(row), row
        if row["metric"] == "file":
            continue
        assert isinstance(row["value"], (int, float)) and (row["value"] > 0 or not positive), row
        if "baseline" in row:
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=1e-2), row
    return rows


def test_trainer_benchmark_probe_grid():
    rows = run_bench("benchmarks/trainer.py", "--probe-grid")
    assert [r["metric"] for r in rows] == ["cpu_s"] and len(rows[0]["runs"]) == 3 and rows[0]["value"] > 0


@pytest.mark.slow
def test_quality_benchmark_default_case_and_mu_curve():
    rows = run_bench("benchmarks/quality.py", "--preset", "smoke")
    assert {r["metric"] for r in rows} == {"accuracy", "l0_density"}
    assert any("baseline" in r and "random init" in r["case"] for r in rows)
    rows = run_bench("benchmarks/quality.py", "--preset", "smoke", "--mu-curve=-1,0", "--seeds", "0,1")
    assert len(rows) == 2 * 5
    density = {r["case"].split(" mu=")[1].split(" ")[0]: r for r in rows if r["metric"] == "l0_density"}
    assert set(density) == {"-1", "0"} and all(len(r["per_seed"]) == 2 for r in density.values())


@pytest.mark.slow
def test_search_benchmark_quick(ray_cluster):
    rows = run_bench(
        "benchmarks/search.py",
        *("--address", ray_cluster),  # the session's Ray instance: one of its own costs Ray's start-up again
        "--methods",
        "moasha-tpe",  # one live sweep: the replayed benchmark below runs every method
        "--seeds",
        "0",
        "--trials",
        "1",
        "--epochs",
        "2",
        "--preset",
        "smoke",
        *("--extra", "--max-concurrent", "1"),  # one trial actor trains them all (its imports paid once)
        positive=False,  # a hypervolume can be 0 (nothing finished within a small budget)
    )
    per_method = [r for r in rows if r["case"].endswith("mean over seeds [0]")]
    assert len(per_method) == 3 and all(r["value"] >= 0 for r in per_method)


@pytest.mark.slow
def test_pareto_benchmark_small_store():
    rows = run_bench("benchmarks/pareto.py", "--runs", "300", "--repeats", "1", "--rebuild")
    cases = " ".join(r["case"] for r in rows)
    assert "runs=300" in cases and any("baseline" in r for r in rows)


@pytest.mark.slow
def test_data_benchmark_quick():
    rows = run_bench("benchmarks/data.py", "--images", "600", "--steps", "3", "--large", "20", "--quick")
    cases = " ".join(r["case"] for r in rows)
    assert "stream" in cases and "224" in cases, cases


@pytest.mark.slow
def test_data_benchmark_eval_memory_small():
    """--eval-memory runs a streamed trial per image count and the evaluation's compute alone;
    the final evaluation runs in the trial's one set of data workers (trainer + 2 workers), not
    in workers forked again after training."""
    rows = run_bench(
        *("benchmarks/data.py", "--eval-memory", "--images", "260,300", "--feature-rows", "300"),
        *("--memory-sample-s", "0.25"),  # at 20 ms the sampling's kernel time was half the test's CPU
        positive=False,
    )
    peaks = [r for r in rows if r["metric"] == "pss_mb"]
    assert [(r["images"], "training" in r["case"]) for r in peaks] == [
        (260, True),
        (260, False),
        (300, True),
        (300, False),
    ]
    assert all(r["value"] > 0 and r["processes"] == 3 and r["sample_s"] == 0.25 for r in peaks), peaks
    compute = [r for r in rows if r["metric"] == "peak_mb"]
    assert len(compute) == 2 and all(r["features_mb"] > 0 for r in compute), compute
    assert sum(r["metric"] == "pss_mb_per_1k_images" for r in rows) == 2


@pytest.mark.slow
def test_scale_benchmark_quick(ray_cluster):
    """The real driver over 8 synthetic replayed trials, 2 at a time, against bare Tune: every
    figure printed, and MLflow and Optuna hold every trial exactly once; on sqlite files, and
    with MLflow's tracking server on PostgreSQL and Optuna's study on the same server (one run of
    the benchmark, one Ray instance; PostgreSQL left out, with a warning, where none can start)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from postgres import unavailable

    stores = ["sqlite"]
    if unavailable() is None:
        stores.append("postgres")
    else:
        warnings.warn(f"scale benchmark without PostgreSQL: {unavailable()}", stacklevel=1)
    quick = ("--trials", "8", "--epochs", "3", "--concurrency", "2", "--configs", "4", "--stores", ",".join(stores))
    all_rows = run_bench("benchmarks/scale.py", *quick, "--address", ray_cluster, positive=False)
    for store in stores:
        prefix = f"8 trials x 3 epochs, 2 at a time, MLflow {store}"
        rows = [r for r in all_rows if r["case"].startswith(prefix)]
        by_metric = {r["metric"]: r for r in rows}
        assert set(by_metric) == {"results_per_s", "ms", "count", "MB", "runs"}, rows
        assert by_metric["results_per_s"]["value"] > 0 and by_metric["results_per_s"]["baseline"] > 0
        ends = next(r for r in rows if r["metric"] == "ms" and r["case"].endswith("per trial end"))
        assert ends["count"] == 8 and 0 < ends["value"] <= ends["p99_ms"] <= ends["max_ms"]
        cpu = {r["case"].split("CPU per result, ")[1]: r for r in rows if "CPU per result" in r["case"]}
        assert set(cpu) == {"driver process (Tune's loop, searcher, our callbacks)", "MLflow writer process"}, cpu
        assert all(r["value"] > 0 for r in cpu.values()) and cpu["MLflow writer process"]["results_per_s_one_core"] > 0
        assert "bare" in by_metric["count"] and "bare_mb" in by_metric["MB"]  # Tune's own share, measured alike
        records = by_metric["runs"]
        assert records["value"] == records["finished_runs"] == records["optuna_complete"] == 8, records
        for lost_or_twice in ("duplicate_runs", "running", "runs_with_repeated_epochs", "ended_runs_missing_epochs"):
            assert records[lost_or_twice] == 0, records
    assert len(all_rows) == sum(r["case"].startswith("8 trials x 3 epochs") for r in all_rows), all_rows


@pytest.mark.slow
def test_chaos_benchmark_small_loses_nothing():
    """A replayed 16-trial sweep, 4 at a time, under MOASHA, with a trial's actor and a Ray
    worker killed with SIGKILL, the database under MLflow and Optuna killed and restarted (on
    PostgreSQL; left out, with a warning, where none can start), and the tracking server killed
    and kept down past the writer's patience (the driver stops, the server is restarted,
    --resume): every fault injected and survived, trials the scheduler pruned while MLflow was
    down get their runs on --resume, and nothing is lost, logged twice or left RUNNING. One run
    of the benchmark for every kind of fault: each run costs its own Ray instance, server and
    drivers."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from postgres import unavailable

    kinds = ["trial_actor", "ray_worker", "tracking_outage"]
    store = "postgres" if unavailable() is None else "sqlite"
    if store == "postgres":
        kinds.append("database")
    else:
        warnings.warn(f"chaos benchmark without PostgreSQL: {unavailable()}", stacklevel=1)
    small = ("--trials", "16", "--concurrency", "4", "--epochs", "3", "--configs", "16", "--epoch-s", "1")
    faults = ("--faults", ",".join(f"{k}=1" for k in kinds), "--min-epochs", "1", "--patience", "15")
    # seed 13: the outage last but early (4 trials ended), after the others (3 or 4 ended), so
    # that most trials reach their rungs while MLflow is down
    args = (*small, *faults, "--store", store, "--seed", "13", "--port", "5979")
    rows = run_bench("benchmarks/chaos.py", *args, positive=False)
    by_metric = {r["metric"]: r for r in rows if r["metric"] != "s_to_next_trial_end"}
    injected = by_metric["faults_injected"]
    assert injected["value"] == injected["planned"] == injected["survived"] == len(kinds), injected
    assert injected["by_kind_injected_survived"] == {k: [1, 1] for k in kinds}
    assert injected["case"].endswith(store), injected
    assert by_metric["trials_pruned_while_mlflow_was_down"]["value"] > 0, by_metric  # item 3's case happened
    lost = by_metric["trials_lost"]
    assert lost["value"] == 0 and lost["runs"] == 16 and lost["duplicate_runs"] == 0, json.dumps(lost)
    twice = by_metric["epochs_logged_twice"]
    assert twice["value"] == twice["ended_runs_missing_epochs"] == 0, json.dumps(twice)
    running = by_metric["optuna_trials_running"]
    assert running["value"] == running["mlflow_runs_running"] == 0, json.dumps(running)
    exits = by_metric["sweep_s"]
    assert exits["driver_exits"] == [1, 0] and exits["unplanned_exits"] == [], exits  # the outage's stop, then done
    recovered = [r["case"].rsplit(": ", 1)[1] for r in rows if r["metric"] == "s_to_next_trial_end"]
    assert sorted(recovered) == sorted(kinds), recovered


DIGITS_TABLE = "benchmarks/curves/digits.parquet"


def test_search_benchmark_on_replayed_curves(tmp_path):
    """Simulated sweeps over the digits table: regret at three budgets per method, the baseline's
    final regret reached or not, and the plot."""
    rows = run_bench(
        "benchmarks/search.py",
        *("--replay", DIGITS_TABLE, "--methods", "tpe,moasha-tpe,ladder-tpe", "--seeds", "3", "--trials", "6"),
        *("--plot", str(tmp_path / "regret.png"), "--curves", str(tmp_path / "curves.json")),
        positive=False,
    )
    regrets = [r for r in rows if r["metric"] == "regret"]
    assert len(regrets) == 3 * 3 and all(0 <= r["value"] <= 1 for r in regrets)
    assert all(len(r["iqr"]) == 2 for r in regrets)
    bands = [r for r in rows if r["metric"] == "band_regret"]
    assert len(bands) == 3 * 3 and all(0 <= r["value"] <= 1 for r in bands)
    assert all(r["repeated_proposals"] >= 0 for r in regrets) and all("seeds 0-2" in r["case"] for r in regrets)
    assert sum(r["metric"] == "trial_epochs" for r in rows) == 3
    assert (tmp_path / "regret.png").stat().st_size > 10_000
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert set(curves["regret"]) == {"tpe", "moasha-tpe", "ladder-tpe"} and curves["budget"] == 6 * 12

    # The scheduler's rungs are the benchmark's to set: one rung at epoch 11 stops trials later
    # than the default 1, 3, 9, so the same budget ends fewer trials.
    def ended(rows: list[dict]) -> float:
        return next(r["trials_ended"] for r in rows if r["case"].startswith("moasha-tpe: normalized regret at 1.00"))

    late = run_bench(
        "benchmarks/search.py",
        *("--replay", DIGITS_TABLE, "--methods", "moasha-tpe", "--seeds", "3", "--trials", "6"),
        *("--scheduler-min-epochs", "11"),
        positive=False,
    )
    assert ended(late) < ended(rows)

    # Started from its own front (4 configurations), TPE holds the table's whole hypervolume once
    # those 4 trials end, near 2/3 of 6 trials' budget (a cold start has 46 configurations to
    # find them among).
    warm = run_bench(
        "benchmarks/search.py",
        *("--replay", DIGITS_TABLE, "--methods", "tpe", "--seeds", "2", "--trials", "6"),
        *("--warm-start", DIGITS_TABLE),
        positive=False,
    )
    assert next(r for r in warm if r["case"].startswith("warm start"))["value"] == 4
    regret = [r["value"] for r in warm if r["metric"] == "regret"]
    assert regret[0] == 1.0 and regret[1] < 0.01 and regret[2] == 0.0
    assert [r["value"] for r in warm if r["metric"] == "band_regret"][2] == 0.0  # the whole front found

    # Seeds nobody tuned on: --first-seed; both modes' flags in --help.
    later = run_bench(
        "benchmarks/search.py",
        *("--replay", DIGITS_TABLE, "--methods", "tpe", "--seeds", "2", "--first-seed", "100", "--trials", "3"),
        positive=False,
    )
    assert all("seeds 100-101" in r["case"] for r in later if r["metric"] == "regret")
    helps = [
        subprocess.run([sys.executable, "benchmarks/search.py", *a, "--help"], cwd=ROOT, capture_output=True, text=True)
        for a in ([], ["--replay", DIGITS_TABLE])
    ]
    assert "--replay TABLE" in helps[0].stdout and "--first-seed" in helps[1].stdout
    for flag in ("--replay", "--warm-start"):
        argv = ["--replay", DIGITS_TABLE, "--warm-start", DIGITS_TABLE]
        argv[argv.index(flag) + 1] = "missing.parquet"
        gone = subprocess.run([sys.executable, "benchmarks/search.py", *argv], cwd=ROOT, capture_output=True, text=True)
        assert (
            gone.returncode == 2
            and gone.stderr == f"error: {flag} missing.parquet: no such file; allowed: a curve table (.parquet)\n"
        )
    bad = subprocess.run(
        [sys.executable, "benchmarks/search.py", "--replay", DIGITS_TABLE, "--methods", "tpe,bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--methods bogus not allowed; allowed: random, tpe" in bad.stderr


def test_table_benchmark_summarizes_a_curve_table(tmp_path):
    rows = run_bench("benchmarks/table.py", DIGITS_TABLE, "--plot", str(tmp_path / "front.png"), positive=False)
    cases = " ".join(r["case"] for r in rows)
    assert "front point" in cases and "noise floor" in cases and "Spearman(train/l0_density at epoch 3" in cases
    assert (tmp_path / "front.png").stat().st_size > 10_000


# torch, oneDNN and MKL capped at AVX2 kernels: the run sums in another order than on the AVX-512
# machine that recorded the table, as it would on another CPU.
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.slow
def test_reproduce_retrains_a_row_within_the_tables_seed_spread_on_other_kernels(monkeypatch):
    """A row re-trained from its stored command on another CPU's kernels lands within the table's
    seed spread of its record, per metric (relative for RankMe); the tolerances are the table's."""
    from jepa_ray.curves import read_table

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from reproduce import seed_spread

    rows = run_bench(
        "benchmarks/reproduce.py", DIGITS_TABLE, "--rows", "1", "--seed", "3", positive=False, env=OTHER_CPU
    )
    *metrics, summary = rows
    assert summary["metric"] == "outside" and summary["value"] == 0
    assert {r["metric"] for r in metrics} == {"linear_acc", "linear_acc_z", "knn_acc", "l0_density", "rank_me"}
    spread = seed_spread(read_table(ROOT / DIGITS_TABLE))
    for r in metrics:
        assert r["tolerance"] == pytest.approx(spread[r["metric"]], abs=1e-6) and 0 < r["tolerance"] < 0.5
        assert r["relative"] == (r["metric"] == "rank_me")
        assert r["difference"] <= r["tolerance"]


def test_reproduce_retrains_with_changes_and_compares_means_with_the_noise_floor(monkeypatch):
    """`--set` lands after a row's own settings (so it wins); `--repeated` groups every seed of a
    configuration; the noise floor is the mean range over seeds that benchmarks/table.py reports."""
    from jepa_ray import config as config_lib
    from jepa_ray.curves import read_table

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from reproduce import noise_floor, repeated_configurations, retrain_argv

    table = read_table(ROOT / DIGITS_TABLE)
    row = next(r for r in table if r.finished)
    argv = retrain_argv(row.command, ["precision=bf16"], "/tmp/x y")
    assert argv[-2:] == ["--out", "/tmp/x y"] and argv[-4:-2] == ["--set", "precision=bf16"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    preset = argv[argv.index("--preset") + 1]
    assert config_lib.build(preset, sets, {}).system.precision == "bf16"
    groups = repeated_configurations(table)
    assert len(groups) == 6 and all(len({r.seed for r in g}) == 3 and len({r.key for r in g}) == 3 for g in groups)
    floor = noise_floor(table)
    assert floor["linear_acc"] == pytest.approx(0.0171, abs=5e-4) and floor["l0_density"] == pytest.approx(
        0.0179, abs=5e-4
    )


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_on_a_cpu_in_its_dry_run():
    """benchmarks/gpu.sh, the one command for a lent GPU, with GPU_SH_DRY_RUN=1: each step (the
    CUDA tests, the trainer against a plain loop and bf16 against fp32, the regularizers, a
    2-trial sweep) runs small on the CPU and passes, and every line it prints is a JSON benchmark
    line: the trainer's and the regularizers' tests too."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        ["bash", "benchmarks/gpu.sh"],
        cwd=ROOT,
        env={**env, "GPU_SH_DRY_RUN": "1", "GPU_SH_TESTS": "tests/test_targets.py"},  # one file's: quicker to collect
        capture_output=True,
        text=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    steps = {r["case"]: r["value"] for r in rows if r["bench"] == "gpu.sh" and r["metric"] == "exit_code"}
    assert steps == {"cuda tests": 0, "trainer": 0, "regularizers": 0, "2-trial sweep": 0}, out.stderr[-3000:]
    assert out.returncode == 0
    # The trainer and regularizer benchmarks' own rows (their small runs are these steps).
    trainer = [r for r in rows if r["bench"] == "trainer"]
    assert [r["metric"] for r in trainer] == ["views_per_s", "img_per_s", "img_per_s", "img_per_s"], trainer
    assert "baseline" in trainer[2] and "baseline" in trainer[3]
    assert trainer[3]["case"].startswith("jepa_ray fit bf16 vs fp32")  # --compare-precision
    cases = " ".join(r["case"] for r in rows if r["bench"] == "regularizers")
    assert "rdmreg" in cases and "sigreg" in cases and "sample rgg p=0.5" in cases
    import torch

    if not torch.cuda.is_available():  # the real run refuses at once, with one line
        refused = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert refused.returncode == 2 and '"no CUDA device: run with GPU_SH_DRY_RUN=1 on a CPU"' in refused.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_suite_cpu_counts_a_detached_childs_cpu_by_kind(tmp_path):
    """The CPU of a process the command starts and never waits for is counted, under its kind."""
    burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    (tmp_path / "burn.py").write_text(burn)
    start = f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(tmp_path / 'burn.py')!r}])"
    start += "; time.sleep(3)"
    rows = run_bench("benchmarks/suite_cpu.py", "--interval", "0.1", "--", sys.executable, "-c", start, positive=False)
    by_case = {r["case"]: r for r in rows}
    assert by_case[f"python {tmp_path.name}/burn.py"]["value"] >= 0.8  # never waited for: `time` misses it
    assert by_case["the command"]["exit_code"] == 0 and by_case["all processes"]["value"] >= 0.8
    bad = subprocess.run([sys.executable, "benchmarks/suite_cpu.py"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "a command is needed after --" in bad.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pytest_cpu_prints_one_row_per_test_and_refuses_parallel_workers(tmp_path):
    out = tmp_path / "cpu.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks"), "PYTEST_CPU_OUT": str(out)}
    argv = [sys.executable, "-m", "pytest", "-p", "pytest_cpu", "-p", "no:cacheprovider", "tests/test_optim.py"]
    run = subprocess.run([*argv, "-n", "0", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    passed = int(run.stdout.split(" passed")[0].rsplit(None, 1)[-1])
    assert len(rows) == passed and all(REQUIRED <= set(r) and r["value"] >= 0 for r in rows), rows
    assert all(r["case"].startswith("tests/test_optim.py::") for r in rows)
    assert f"CPU by test: {sum(r['value'] for r in rows):.0f} CPU-s over {passed} tests" in run.stdout
    refused = subprocess.run([*argv, "-n", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "run it with -n 0" in refused.stderr
