"""The figures README.md and docs/benchmarks.md quote from the committed curve tables are what the
tables give: `benchmarks/table.py` is run on each table and every quoted front point, noise floor,
Spearman and row count is looked up in the docs as written there. A figure cannot drift from its
data (a re-recorded table, a changed summary) without this failing."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text()


@cache
def summary(table: str) -> list[dict]:
    """benchmarks/table.py's lines for one table (run in this process: no second interpreter)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import table as table_benchmark

    out, argv = io.StringIO(), sys.argv
    sys.argv = ["table.py", str(ROOT / "benchmarks" / "curves" / table), "--epochs", "1,3,6,9"]
    try:
        with contextlib.redirect_stdout(out):
            table_benchmark.main()
    finally:
        sys.argv = argv
    return [json.loads(line) for line in out.getvalue().splitlines()]


def figure(table: str, case_part: str) -> dict:
    rows = [r for r in summary(table) if case_part in r["case"]]
    assert len(rows) == 1, (case_part, [r["case"] for r in rows])
    return rows[0]


def section(title: str) -> str:
    """The text of docs/benchmarks.md under a heading, up to the next heading of any level."""
    start = BENCHMARKS.index(f"\n{title}\n")
    end = re.search(r"\n#+ ", BENCHMARKS[start + 1 :])
    return BENCHMARKS[start : start + 1 + end.start()] if end else BENCHMARKS[start:]


def fmt(value: float, digits: int) -> str:
    """As the docs round: half up (accuracies on 2,000 test images are multiples of 0.0005)."""
    return str(Decimal(str(value)).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP))


def test_the_cifar10_front_table_is_the_tables_front():
    rows = [r for r in summary("cifar10-cpu.parquet") if "front point" in r["case"]]
    text = section("### CIFAR-10 curves")
    quoted = re.findall(
        r"^\| density ([\d.]+), p ([\d.]+), λ ([\d./]+), (\d+) slices \| \**([\d.]+)\** \| ([\d.]+)", text, re.M
    )
    assert len(quoted) == len(rows) == 10
    lambdas = {"5/7": 5 / 7}
    for (density, p, lambd, slices, acc, l0), row in zip(quoted, rows):
        params = json.loads(row["case"].split("front point ", 1)[1])
        assert params == {
            "target_density": float(density),
            "p": float(p),
            "lambd": pytest.approx(lambdas.get(lambd) or float(lambd)),
            "num_slices": int(slices),
        }
        assert (acc, l0) == (fmt(row["value"], 3), fmt(row["l0_density"], 3)), params


def test_the_cifar10_counts_noise_floor_and_spearman_are_the_tables():
    text = section("### CIFAR-10 curves")
    rows = figure("cifar10-cpu.parquet", "rows, of them finished")
    assert f"all {rows['value']} rows (the" in text and rows["finished"] == rows["value"] == 84
    acc = figure("cifar10-cpu.parquet", "noise floor, mean range over seeds of linear_acc")["value"]
    l0 = figure("cifar10-cpu.parquet", "noise floor, mean range over seeds of l0_density")["value"]
    assert f"{acc} `linear_acc`,\n{fmt(l0, 3)} `l0_density`" in text
    rhos = [
        figure("cifar10-cpu.parquet", f"Spearman(online/linear_acc at epoch {e}, final linear_acc)")["value"]
        for e in (1, 3, 6)
    ]
    assert " / ".join(f"{r:.2f}" for r in rhos) in text.replace("\n", " ")
    best = max((r for r in summary("cifar10-cpu.parquet") if "front point" in r["case"]), key=lambda r: r["value"])
    assert f"best `linear_acc` {fmt(best['value'], 3)} at ℓ0 {fmt(best['l0_density'], 2)}" in README
    assert f"front of the {rows['value']} CIFAR-10 rows" in README


def test_the_digits_table_figures_are_the_tables():
    text = section("## Curve tables")
    acc = figure("digits.parquet", "noise floor, mean range over seeds of linear_acc")["value"]
    l0 = figure("digits.parquet", "noise floor, mean range over seeds of l0_density")["value"]
    assert f"{fmt(acc, 3)} of `linear_acc` and {fmt(l0, 3)} of `l0_density`" in text
    rows = figure("digits.parquet", "rows, of them finished")
    assert f"({rows['value']} trials, 2 at a time" in text
    density = [
        figure("digits.parquet", f"Spearman(train/l0_density at epoch {e}, final l0_density)")["value"] for e in (1, 3)
    ]
    assert f"{density[0]:.2f} at epoch 1, {density[1]:.2f} at epoch 3" in text
    accuracy = [
        figure("digits.parquet", f"Spearman(online/linear_acc at epoch {e}, final linear_acc)")["value"]
        for e in (1, 3, 9)
    ]
    assert " / ".join(f"{r:.2f}" for r in accuracy) + " at epochs 1 / 3 / 9" in text.replace("\n", " ")
