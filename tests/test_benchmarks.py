"""The benchmark scripts run and print docs/design.md's JSON lines (speed goals live in the scripts'
output, never in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"bench", "case", "metric", "value", "device"}


def run_bench(*args: str, positive: bool = True) -> list[dict]:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows, out.stdout[-2000:]
    for row in rows:
        assert REQUIRED <= set(row), row
        assert isinstance(row["value"], (int, float)) and (row["value"] > 0 or not positive), row
        if "baseline" in row:
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=1e-2), row
    return rows


@pytest.mark.slow
def test_regularizers_benchmark_quick():
    rows = run_bench("benchmarks/regularizers.py", "--quick", "--device", "cpu")
    cases = " ".join(r["case"] for r in rows)
    assert "rdmreg" in cases and "sigreg" in cases and "sample rgg p=0.5" in cases


@pytest.mark.slow
def test_trainer_benchmark_in_process():
    rows = run_bench("benchmarks/trainer.py", "--epochs", "2", "--steps", "3", "--device", "cpu")
    assert [r["metric"] for r in rows] == ["views_per_s", "img_per_s", "img_per_s"]
    assert "baseline" in rows[-1]


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
def test_search_benchmark_quick():
    rows = run_bench(
        "benchmarks/search.py",
        "--methods",
        "tpe,moasha-tpe",
        "--seeds",
        "0",
        "--trials",
        "2",
        "--epochs",
        "3",
        "--preset",
        "smoke",
        positive=False,  # a hypervolume can be 0 (nothing finished within a small budget)
    )
    per_method = [r for r in rows if r["case"].endswith("mean over seeds [0]")]
    assert len(per_method) == 3 * 2 and all(r["value"] >= 0 for r in per_method)


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
