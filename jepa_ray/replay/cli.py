"""`python -m jepa_ray.replay`: replay a finished sweep under a scheduler (and a searcher) and say
what it would have saved, from the sweep's own curves in MLflow (no GPU, no Ray)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jepa_ray import contract as C
from jepa_ray import pareto
from jepa_ray.errors import UsageError
from jepa_ray.sweep.options import add_scheduler_flags
from jepa_ray.sweep.schedulers import scheduler_from_flags
from jepa_ray.sweep.search import JepaOptunaSearch, make_sampler

SEARCHERS = ("recorded", "random", "tpe")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jepa_ray.replay",
        description="What would early stopping have saved on a sweep you ran? Replays its trials' recorded "
        "curves in simulated time as it ran and under --scheduler, and reports the trial-epochs each "
        "spent, the hypervolume each reached and the front points the what-if would have lost.",
        allow_abbrev=False,
    )
    p.add_argument("--sweep", required=True, metavar="RUN_ID", help="the sweep's parent run id (mlflow ui shows it)")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else %(default)s)",
    )
    p.add_argument(
        "--searcher",
        default="recorded",
        help=f"{' | '.join(SEARCHERS)}: the sweep's own trials in their order, or a sampler choosing among them "
        "at the sweep's trial-epochs (default: %(default)s)",
    )
    p.add_argument("--seeds", type=int, default=10, help="sampler seeds with --searcher random|tpe (default: 10)")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: the sweep's)")
    p.add_argument("--objectives", help="metric:max|min,... (default: the sweep's)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_scheduler_flags(p, scheduler="moasha")  # the scheduler to ask about
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        summary = run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        print(describe(summary))
    return 0


def run(args) -> dict:
    from jepa_ray.replay.tables import REPLAY_KEYS, TableSpace  # torch: curve tables load it; --help stays without
    from jepa_ray.replay.whatif import sweep_table, what_if

    if args.searcher not in SEARCHERS:
        raise UsageError(f"--searcher {args.searcher!r} is not allowed; allowed: {', '.join(SEARCHERS)}")
    if args.seeds < 1 or args.max_concurrent < 0:
        raise UsageError("--seeds must be >= 1 and --max-concurrent >= 0")
    table, tags, run_ids = sweep_table(args.tracking_uri, args.sweep)
    objectives = pareto.parse_objectives(args.objectives or tags.get(C.SWEEP_OBJECTIVES) or C.DEFAULT_OBJECTIVES)
    epochs = max(len(r.history) for r in table)
    scheduler_from_flags(args, epochs)  # a bad name or setting is one line before anything runs
    first = table.rows[0].config.get("system", {})
    settings = {k: first[k] for k in REPLAY_KEYS if k in first}  # the guard as the sweep ran it

    def scheduler():
        return scheduler_from_flags(args, epochs)

    searcher_factory = None
    if args.searcher != "recorded":
        values = {name: table.values(name) for name in table.param_names()}

        def searcher_factory(seed: int):
            return JepaOptunaSearch(
                space=TableSpace(values, seed),
                metric=[o.name for o in objectives],
                mode=[o.direction for o in objectives],
                sampler=make_sampler(args.searcher, seed),
            )

    concurrency = args.max_concurrent or int(tags.get(C.SWEEP_MAX_CONCURRENT, "1") or 1)
    result = what_if(
        table,
        run_ids,
        objectives,
        scheduler_factory=scheduler,
        searcher_factory=searcher_factory,
        seeds=args.seeds,
        max_concurrent=concurrency,
        settings=settings,
    )
    return {
        "sweep": tags.get(C.SWEEP_NAME, args.sweep),
        "run_id": args.sweep,
        "scheduler": args.scheduler,
        "searcher": args.searcher,
        "seeds": args.seeds if searcher_factory else 1,
        "max_concurrent": concurrency,
        "objectives": ",".join(str(o) for o in objectives),
        **result.summary(),
    }


def describe(s: dict) -> str:
    lines = [
        f"sweep {s['sweep']} ({s['run_id']}): {s['trials']} trials, {s['max_concurrent']} at a time, objectives "
        f"{s['objectives']}",
        f"  as it ran (every trial to its end): {s['baseline_trial_epochs']} trial-epochs, hypervolume "
        f"{s['baseline_hypervolume']:.4f}",
        f"  with --scheduler {s['scheduler']}"
        + (f" and {s['searcher']} proposals (median of {s['seeds']} seeds)" if s["searcher"] != "recorded" else "")
        + f": {s['whatif_trial_epochs']:g} trial-epochs ({100 * s['saved_fraction']:.0f}% saved), hypervolume "
        f"{s['whatif_hypervolume']:.4f} ({s['whatif_hypervolume'] - s['baseline_hypervolume']:+.4f}), "
        f"{s['stopped']:g} trials stopped early",
    ]
    lost = s["lost_front_runs"]
    lines.append(
        "  front points lost: none" if not lost else f"  front points lost: {len(lost)} (runs {', '.join(lost)})"
    )
    lines.append(f"  ({s['seconds']:.1f} s)")
    return "\n".join(lines)
