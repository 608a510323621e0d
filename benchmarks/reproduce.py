"""Every row of a curve table is reproducible: re-train rows from the command each row stores (same
seed, one thread, the recorded setting) and compare the final metrics with the recorded ones.
On one machine and one torch build a CPU run is deterministic, so the tolerance is 0; across
machines or builds float summation order may differ, and the script reports the differences.

    python benchmarks/reproduce.py benchmarks/curves/cifar10-cpu.parquet --rows 2 --seed 0   # ~20 min on 2 cores
    python benchmarks/reproduce.py benchmarks/curves/digits.parquet --rows 2

Prints one JSON line per metric per row (docs/design.md format): value = the re-trained metric,
baseline = the recorded one.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("linear_acc", "linear_acc_z", "knn_acc", "l0_density", "rank_me")


def emit(case: str, metric: str, value, baseline=None, **extra) -> None:
    row = {"bench": "reproduce", "case": case, "metric": metric, "value": value}
    if baseline is not None:
        row.update(baseline=baseline, ratio=round(value / baseline, 6) if baseline else None)
    print(json.dumps({**row, "device": "cpu", **extra}), flush=True)


def main() -> None:
    from jepa_ray.curves import read_table

    p = argparse.ArgumentParser()
    p.add_argument("table")
    p.add_argument("--rows", type=int, default=2, help="how many random finished rows to re-train")
    p.add_argument("--seed", type=int, default=0, help="which rows (a seeded random choice)")
    p.add_argument("--tolerance", type=float, default=0.0, help="largest allowed |difference| of a final metric")
    args = p.parse_args()
    table = read_table(args.table)
    rows = random.Random(args.seed).sample([r for r in table if r.finished], args.rows)
    worst = 0.0
    for row in rows:
        with tempfile.TemporaryDirectory() as tmp:
            argv = shlex.split(row.command.replace("--out OUT", f"--out {tmp}/out"))
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"row {row.key} failed to re-train:\n{proc.stderr[-3000:]}")
            final = json.loads((Path(tmp) / "out" / "checkpoint" / "metrics.json").read_text())
        for metric in METRICS:
            diff = abs(final[metric] - row.final[metric])
            worst = max(worst, diff)
            emit(
                f"row {row.key} {json.dumps(row.params)} seed {row.seed}: {metric} re-trained vs recorded",
                metric,
                final[metric],
                row.final[metric],
                abs_diff=diff,
                seconds=round(time.perf_counter() - start, 1),
                recorded_on=row.provenance.get("machine"),
                recorded_commit=row.provenance.get("git_commit"),
            )
    emit(f"largest |difference| over {len(rows)} rows", "abs_diff", worst, tolerance=args.tolerance)
    if worst > args.tolerance:
        raise SystemExit(f"a re-trained metric differs from the recorded one by {worst:g} > {args.tolerance:g}")


if __name__ == "__main__":
    main()
