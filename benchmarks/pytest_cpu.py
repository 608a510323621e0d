"""Where the test suite's CPU goes, by test: a pytest plugin that reads the machine's busy CPU
time (/proc/stat) around each test (its fixtures' setup and teardown included) and prints one
JSON line per test (docs/design.md format) to the file named by $PYTEST_CPU_OUT (default
stderr), then the slowest tests by CPU at the end of the session.

    PYTHONPATH=benchmarks python -m pytest -p pytest_cpu -n 0              # the whole suite, alone
    PYTHONPATH=benchmarks PYTEST_CPU_OUT=cpu.jsonl python -m pytest -p pytest_cpu -n 0 tests/test_sweep.py

Run the tests one at a time (`-n 0`) and alone: the whole machine's CPU is counted, so a test's
figure includes the Ray instances, tracking servers and subprocesses it starts (which a
process-tree count misses once they detach), and anything else running. A session fixture is
counted in the first test that uses it. Linux only.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
SHOWN = 25
"""Tests listed at the session's end, the costliest first."""


def busy_cpu_s() -> float:
    """CPU seconds the machine spent busy since boot (all cores; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) * TICK_S


class CpuByTest:
    def __init__(self, out) -> None:
        self.out = out
        self.rows: list[dict] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        cpu, wall = busy_cpu_s(), time.monotonic()
        yield
        row = {"bench": "pytest_cpu", "case": item.nodeid, "metric": "cpu_s", "value": round(busy_cpu_s() - cpu, 2)}
        row.update(device="cpu", wall_s=round(time.monotonic() - wall, 2))
        self.rows.append(row)
        print(json.dumps(row), file=self.out, flush=True)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        total = sum(r["value"] for r in self.rows)
        terminalreporter.write_sep("=", f"CPU by test: {total:.0f} CPU-s over {len(self.rows)} tests")
        for row in sorted(self.rows, key=lambda r: -r["value"])[:SHOWN]:
            terminalreporter.write_line(f"{row['value']:8.1f} CPU-s {row['wall_s']:8.1f} s  {row['case']}")


def pytest_configure(config: pytest.Config) -> None:
    if not os.path.exists("/proc/stat"):
        raise pytest.UsageError("pytest_cpu reads /proc/stat: Linux only")
    if getattr(config.option, "numprocesses", None) not in (None, 0):
        raise pytest.UsageError("pytest_cpu counts the whole machine per test: run it with -n 0")
    path = os.environ.get("PYTEST_CPU_OUT")
    out = open(path, "a") if path else sys.stderr  # noqa: SIM115 (open for the session)
    config.pluginmanager.register(CpuByTest(out), "pytest_cpu_counter")
