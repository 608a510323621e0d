"""Every row of a curve table is reproducible: re-train rows from the command each row stores (same
seed, one thread, the recorded setting) and compare the final metrics with the recorded ones.

On the machine and torch build that recorded a row a CPU run is deterministic: `--exact` asks for
no difference at all. Another CPU runs other kernels (AVX2 against AVX-512, another summation
order); over a few epochs the run drifts like a run at another seed. So by default a metric may
differ from its record by the table's own seed spread: the largest range of that metric over the
configurations the table recorded at several seeds (absolute for accuracies and densities,
relative to the mean for RankMe, whose scale is the number of dimensions).

    python benchmarks/reproduce.py benchmarks/curves/cifar10-cpu.parquet --rows 2 --seed 0   # ~20 min on 2 cores
    python benchmarks/reproduce.py benchmarks/curves/digits.parquet --rows 2 --exact

Prints one JSON line per metric per row (docs/design.md format): value = the re-trained metric,
baseline = the recorded one, with the difference and its tolerance; exits 1 when one is outside.
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
RELATIVE = frozenset({"rank_me"})  # compared relative to the mean; the others absolute


def emit(case: str, metric: str, value, baseline=None, **extra) -> None:
    row = {"bench": "reproduce", "case": case, "metric": metric, "value": value}
    if baseline is not None:
        row.update(baseline=baseline, ratio=round(value / baseline, 6) if baseline else None)
    print(json.dumps({**row, "device": "cpu", **extra}), flush=True)


def difference(metric: str, value: float, recorded: float) -> float:
    """|value - recorded|, relative to their mean for the metrics in RELATIVE."""
    diff = abs(value - recorded)
    return diff / (abs(value + recorded) / 2) if metric in RELATIVE and value + recorded else diff


def seed_spread(table) -> dict[str, float]:
    """Per metric, the largest difference (as `difference` measures it) between two seeds of one
    configuration in the table: how far a row may drift on other kernels."""
    from jepa_ray.curves.table import canonical

    spread = dict.fromkeys(METRICS, 0.0)
    configurations = {canonical(r.params): r.params for r in table}.values()
    for params in configurations:
        seeds = [r for r in table.seeds(params) if r.finished]
        for metric in METRICS:
            values = [r.final[metric] for r in seeds]
            for i, a in enumerate(values):
                for b in values[i + 1 :]:
                    spread[metric] = max(spread[metric], difference(metric, a, b))
    if not any(spread.values()):
        raise SystemExit("the table has no configuration recorded at several seeds: pass --exact")
    return spread


def retrain(row) -> dict:
    """The final metrics of `row` re-trained from its stored command."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = shlex.split(row.command.replace("--out OUT", f"--out {tmp}/out"))
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"row {row.key} failed to re-train:\n{proc.stderr[-3000:]}")
        return json.loads((Path(tmp) / "out" / "checkpoint" / "metrics.json").read_text())


def main() -> None:
    from jepa_ray.curves import read_table

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--rows", type=int, default=2, help="how many random finished rows to re-train")
    p.add_argument("--seed", type=int, default=0, help="which rows (a seeded random choice)")
    p.add_argument(
        "--exact", action="store_true", help="allow no difference (the machine and torch build that recorded the rows)"
    )
    args = p.parse_args()
    table = read_table(args.table)
    tolerance = dict.fromkeys(METRICS, 0.0) if args.exact else seed_spread(table)
    rows = random.Random(args.seed).sample([r for r in table if r.finished], args.rows)
    outside = []
    for row in rows:
        start = time.perf_counter()
        final = retrain(row)
        for metric in METRICS:
            diff = difference(metric, final[metric], row.final[metric])
            if diff > tolerance[metric]:
                outside.append(f"row {row.key} {metric}: {final[metric]:g} vs {row.final[metric]:g}")
            emit(
                f"row {row.key} {json.dumps(row.params)} seed {row.seed}: {metric} re-trained vs recorded",
                metric,
                final[metric],
                row.final[metric],
                difference=round(diff, 6),
                relative=metric in RELATIVE,
                tolerance=round(tolerance[metric], 6),
                seconds=round(time.perf_counter() - start, 1),
                recorded_on=row.provenance.get("machine"),
                recorded_commit=row.provenance.get("git_commit"),
            )
    emit(f"metrics outside their tolerance over {len(rows)} rows", "outside", len(outside), exact=args.exact)
    if outside:
        raise SystemExit("re-trained metrics outside their tolerance: " + "; ".join(outside))


if __name__ == "__main__":
    main()
