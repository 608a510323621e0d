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
    python benchmarks/reproduce.py benchmarks/curves/cifar10-cpu.parquet --repeated 2 --set precision=bf16

`--set KEY=VALUE` re-trains the rows with a change (like for like: same rows, seeds and setting);
`--repeated N` takes every seed of N configurations the table recorded at several seeds and also
compares each configuration's mean over its seeds, re-trained against recorded, with the table's
noise floor (the mean range over seeds).

Prints one JSON line per metric per row (docs/design.md format): value = the re-trained metric,
baseline = the recorded one, with the difference and its tolerance; exits 1 when one is outside.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
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
    spread = dict.fromkeys(METRICS, 0.0)
    for rows in repeated_configurations(table):
        for metric in METRICS:
            values = [r.final[metric] for r in rows]
            for i, a in enumerate(values):
                for b in values[i + 1 :]:
                    spread[metric] = max(spread[metric], difference(metric, a, b))
    if not any(spread.values()):
        raise SystemExit("the table has no configuration recorded at several seeds: pass --exact")
    return spread


def noise_floor(table) -> dict[str, float]:
    """Per metric, the mean range over seeds of the configurations recorded at several seeds."""
    ranges: dict[str, list[float]] = {m: [] for m in METRICS}
    for rows in repeated_configurations(table):
        for metric in METRICS:
            values = [r.final[metric] for r in rows]
            ranges[metric].append(difference(metric, max(values), min(values)))
    return {m: statistics.mean(v) for m, v in ranges.items() if v}


def repeated_configurations(table) -> list[list]:
    """The finished rows of each configuration recorded at several seeds, in a fixed order."""
    from jepa_ray.curves.table import canonical

    by_config = {canonical(r.params): r.params for r in table}
    groups = [[r for r in table.seeds(by_config[key]) if r.finished] for key in sorted(by_config)]
    return [rows for rows in groups if len(rows) > 1]


def retrain_argv(command: str, overrides: list[str], out: str) -> list[str]:
    """A row's stored command with `--set` overrides after its own (the last --set of a key wins)."""
    extra = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    return shlex.split(command.replace("--out OUT", f"{extra} --out {shlex.quote(out)}"))


def retrain(row, overrides: list[str]) -> dict:
    """The final metrics of `row` re-trained from its stored command, with `--set` overrides."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = retrain_argv(row.command, overrides, f"{tmp}/out")
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"row {row.key} failed to re-train:\n{proc.stderr[-3000:]}")
        return json.loads((Path(tmp) / "out" / "checkpoint" / "metrics.json").read_text())


def compare_means(groups: list[list], retrained: dict, floor: dict[str, float], overrides: list[str]) -> None:
    """Each configuration's mean over its seeds, re-trained (with `overrides`) against recorded."""
    for rows in groups:
        for metric in METRICS:
            new = statistics.mean(retrained[r.key][metric] for r in rows)
            old = statistics.mean(r.final[metric] for r in rows)
            emit(
                f"{json.dumps(rows[0].params)} over seeds {[r.seed for r in rows]}: mean {metric}, "
                f"re-trained {' '.join(overrides) or 'as recorded'} vs recorded",
                metric,
                round(new, 6),
                round(old, 6),
                difference=round(difference(metric, new, old), 6),
                relative=metric in RELATIVE,
                noise_floor=round(floor[metric], 6),
                per_seed=[round(retrained[r.key][metric], 4) for r in rows],
                per_seed_recorded=[round(r.final[metric], 4) for r in rows],
            )


def main() -> None:
    from jepa_ray.curves import read_table

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--rows", type=int, default=2, help="how many random finished rows to re-train")
    p.add_argument("--seed", type=int, default=0, help="which rows (a seeded random choice)")
    p.add_argument(
        "--exact", action="store_true", help="allow no difference (the machine and torch build that recorded the rows)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="re-train with this change")
    p.add_argument("--repeated", type=int, default=0, help="instead of --rows: every seed of N repeated configurations")
    args = p.parse_args()
    table = read_table(args.table)
    tolerance = dict.fromkeys(METRICS, 0.0) if args.exact else seed_spread(table)
    if args.repeated:
        groups = random.Random(args.seed).sample(repeated_configurations(table), args.repeated)
        rows = [r for g in groups for r in g]
    else:
        rows = random.Random(args.seed).sample([r for r in table if r.finished], args.rows)
    outside, retrained = [], {}
    for row in rows:
        start = time.perf_counter()
        final = retrained[row.key] = retrain(row, args.set)
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
    if args.repeated:
        compare_means(groups, retrained, noise_floor(table), args.set)
    emit(f"metrics outside their tolerance over {len(rows)} rows", "outside", len(outside), exact=args.exact)
    if outside:
        raise SystemExit("re-trained metrics outside their tolerance: " + "; ".join(outside))


if __name__ == "__main__":
    main()
