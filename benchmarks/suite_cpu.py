"""Where a command's CPU time goes, by kind of process: run a command (the test suite, a sweep)
and sample /proc while it runs, summing the user + system CPU of every process that appears
under this machine's /proc by what it is (a pytest worker, a sweep driver, a Ray worker by its
title such as `ray::RayTrainWorker`, Ray's daemons, the MLflow writer, a PostgreSQL server...).

    python benchmarks/suite_cpu.py -- python -m pytest           # the README's test command
    python benchmarks/suite_cpu.py --interval 0.2 -- python sweeps/rectified.py --smoke

Unlike `time`, it also counts the processes the command's children detach (Ray's daemons and
workers, a tracking server), which `wait` never reaps for the command. Every process of the
machine is sampled, so run it alone: what else runs is counted too, under its own kind. A
process that starts and ends between two samples is missed; `--interval` trades that against
the sampler's own CPU, which it reports. Linux only (reads /proc).

One JSON line per kind (docs/design.md format): CPU seconds, the processes of that kind seen,
and its share of all the CPU sampled; then the command's wall time and exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
UNKNOWN = "kernel thread or zombie (no command line)"
PYTHON_CHILD = {"from multiprocessing.spawn import spawn_main": "multiprocessing child (MLflow writer, data workers)"}


def emit(case: str, metric: str, value: float, **extra) -> None:
    row = {"bench": "suite_cpu", "case": case, "metric": metric, "value": round(value, 3), "device": "cpu"}
    row.update(extra)
    print(json.dumps(row), flush=True)


def kind(argv: list[str]) -> str:
    """What a process is, from its command line (a Ray worker's title is its argv[0])."""
    if not argv:
        return UNKNOWN
    first = argv[0]
    if first.startswith("ray::"):
        return first.split()[0].split("(")[0].rstrip(":")
    name = Path(first).name
    if not name.startswith("python"):
        return name
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
        args = args[1:]  # -u, -B, -X ...
    if not args:
        return "python"
    if args[0] == "-m" and len(args) > 1:
        return f"python -m {args[1]}"
    if args[0] == "-c":
        code = " ".join(args[1:])
        if "exec(eval(sys.stdin.readline()))" in code:
            return "pytest-xdist worker"
        return next((label for marker, label in PYTHON_CHILD.items() if marker in code), "python -c")
    script = Path(args[0])
    return f"python {script.parent.name}/{script.name}" if script.parent.name else f"python {script.name}"


def sample() -> dict[tuple[int, str], tuple[str, float]]:
    """(pid, start time) -> (kind, CPU seconds so far) of every process now in /proc (the start
    time tells a reused pid from the process that had it)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError):
            continue
        out[(int(entry.name), stat[19])] = (kind([a for a in argv if a]), (int(stat[11]) + int(stat[12])) * TICK_S)
    return out


def measure(command: list[str], interval: float) -> tuple[Counter, Counter, float, int, float]:
    """(CPU s by kind, processes by kind, wall s, exit code, the sampler's own CPU s) of
    `command`, counting only CPU spent after it started."""
    before = {key: cpu for key, (_, cpu) in sample().items()}
    last: dict[tuple[int, str], tuple[str, float]] = {}
    began, own0 = time.monotonic(), time.process_time()
    proc = subprocess.Popen(command)
    while True:
        done = proc.poll() is not None
        for key, (what, cpu) in sample().items():
            if what == UNKNOWN and key in last:  # a zombie's command line is empty: keep its kind
                what = last[key][0]
            last[key] = (what, cpu)
        if done:
            break
        time.sleep(interval)
    wall, own = time.monotonic() - began, time.process_time() - own0
    cpu: Counter = Counter()
    count: Counter = Counter()
    for key, (what, seconds) in last.items():
        spent = seconds - before.get(key, 0.0)
        if spent > 0:
            cpu[what] += spent
            count[what] += 1
    return cpu, count, wall, proc.returncode, own


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples of /proc (default 0.5)")
    p.add_argument("--top", type=int, default=30, help="the kinds printed, most CPU first (default 30)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...: what to run and measure")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("a command is needed after --")
    if args.interval <= 0:
        p.error(f"--interval {args.interval}: must be > 0")
    if not Path("/proc/self/stat").exists():
        print("error: benchmarks/suite_cpu.py reads /proc: Linux only", file=sys.stderr)
        return 2
    cpu, count, wall, code, own = measure(command, args.interval)
    total = sum(cpu.values())
    for what, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])[: args.top]:
        emit(what, "cpu_s", seconds, processes=count[what], share=round(seconds / total, 4) if total else 0.0)
    emit("all processes", "cpu_s", total, processes=sum(count.values()), cores=os.cpu_count())
    emit("the command", "wall_s", wall, exit_code=code, sampler_cpu_s=round(own, 2), interval_s=args.interval)
    return code


if __name__ == "__main__":
    sys.exit(main())
