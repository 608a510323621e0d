"""Will a trial fit? Everything one trial holds at once (Tune's trial actor, the DDP workers,
their GPUs) against what the cluster has, or, on an autoscaling cluster, can launch: a trial that
can never be placed is refused before the sweep starts instead of waiting forever."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from jepa_ray.cluster import BOOTSTRAP_CONFIG, bootstrap_config
from jepa_ray.errors import UsageError

logger = logging.getLogger(__name__)


TRIAL_ACTOR_CPUS = 0.01
"""What Tune reserves for the trial actor of a multi-worker trial: it only drives a TorchTrainer
(whose controller takes no resources: Ray Train starts it with num_cpus=0), while Ray Train
reserves the workers in a placement group of their own."""

_GRAIN = 1e-4  # Ray accounts resources in units of 1/10,000


@dataclass(frozen=True)
class Bundle:
    """Resources one process of a trial holds for as long as the trial runs."""

    cpus: float
    gpus: float
    what: str


@dataclass(frozen=True)
class NodeShape:
    """Resources of one node (alive, or of a type the autoscaler can launch)."""

    cpus: float
    gpus: float
    name: str

    def holds(self, cpus: float, gpus: float) -> bool:
        return self.cpus + _GRAIN / 2 >= cpus and self.gpus + _GRAIN / 2 >= gpus


@dataclass
class Capacity:
    """The nodes a trial can be placed on: the alive ones and those the autoscaler may add
    (`unknown` names launchable node types whose resources the launcher config does not state)."""

    nodes: list[NodeShape]
    unknown: list[str] = field(default_factory=list)

    def describe(self) -> str:
        cpus = sum(n.cpus for n in self.nodes)
        gpus = sum(n.gpus for n in self.nodes)
        largest = max(self.nodes, key=lambda n: (n.gpus, n.cpus), default=None)
        big = f"; the largest node has {largest.cpus:g} CPUs and {largest.gpus:g} GPUs" if largest else ""
        return f"{len(self.nodes)} node(s), {cpus:g} CPUs and {gpus:g} GPUs in all{big}"


def trial_demand(cfg, *, in_tune: bool) -> list[Bundle]:
    """What one trial of `cfg` holds at once. One worker: the trial process itself (in Tune, the
    trial actor trains in process; from the command line it needs no Ray). Several: Tune's
    trial actor (in a sweep) and one bundle per DDP worker."""
    s = cfg.system
    if s.workers == 1:
        return [Bundle(s.cpus_per_worker, s.gpus_per_worker, "the trial")] if in_tune else []
    actor = [Bundle(TRIAL_ACTOR_CPUS, 0.0, "Tune's trial actor")] if in_tune else []
    return actor + [Bundle(s.cpus_per_worker, s.gpus_per_worker, f"worker {i}") for i in range(s.workers)]


def capacity(bootstrap: str | os.PathLike = BOOTSTRAP_CONFIG) -> Capacity:
    """The connected cluster's alive nodes plus, on a head launched by `ray up`, the worker
    nodes its autoscaler can still launch (from the resolved launcher config)."""
    import ray

    alive = [
        NodeShape(
            float(n["Resources"].get("CPU", 0)),
            float(n["Resources"].get("GPU", 0)),
            n.get("NodeManagerAddress", "node"),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]
    config = bootstrap_config(bootstrap)
    return Capacity(alive) if config is None else launchable_capacity(alive, config)


def launchable_capacity(alive: list[NodeShape], config: dict) -> Capacity:
    """`alive` plus the nodes an autoscaler with launcher `config` can still start: each worker
    type up to its max_workers, the largest first, within the cluster's max_workers."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    room = max(0, int(config.get("max_workers", 0)) - max(0, len(alive) - 1))
    extra, unknown = [], []
    for name, spec in types.items():
        if name == head:
            continue
        res = spec.get("resources") or {}
        if "CPU" not in res and "GPU" not in res:
            unknown.append(name)
            continue
        shape = NodeShape(float(res.get("CPU", 0)), float(res.get("GPU", 0)), name)
        extra += [shape] * int(spec.get("max_workers", config.get("max_workers", 0)))
    extra.sort(key=lambda n: (n.gpus, n.cpus), reverse=True)
    return Capacity(alive + extra[:room], unknown)


def copies_that_fit(demand: list[Bundle], cap: Capacity, limit: int = 1024) -> int:
    """How many trials of `demand` the capacity holds at once (first-fit decreasing: each
    bundle on the first node with room, the largest bundles first)."""
    if not demand:
        return limit
    free = [[n.cpus, n.gpus] for n in cap.nodes]
    order = sorted(demand, key=lambda b: (b.gpus, b.cpus), reverse=True)
    for count in range(limit):
        for b in order:
            node = next((f for f in free if f[0] + _GRAIN / 2 >= b.cpus and f[1] + _GRAIN / 2 >= b.gpus), None)
            if node is None:
                return count
            node[0] -= b.cpus
            node[1] -= b.gpus
    return limit


def check_trial_fits(demand: list[Bundle], cap: Capacity) -> None:
    """ConfigError (one line naming what does not fit) when a trial can never be placed: a
    bundle larger than every node, or bundles that no packing of the nodes holds at once.
    Launchable node types of unknown size are given the benefit of the doubt."""
    if not demand or cap.unknown:
        if cap.unknown:
            logger.info(
                "not checking that a trial fits: node types %s do not state their resources", ", ".join(cap.unknown)
            )
        return
    cpus, gpus = sum(b.cpus for b in demand), sum(b.gpus for b in demand)
    parts = _describe_demand(demand)
    hint = (
        "lower --cpus-per-worker / --gpus-per-worker (cpus_per_worker, gpus_per_worker) or "
        "--workers-per-trial (workers), or add nodes"
    )
    for b in demand:
        if not any(n.holds(b.cpus, b.gpus) for n in cap.nodes):
            raise UsageError(
                f"a trial cannot be placed: {b.what} needs {b.cpus:g} CPUs and {b.gpus:g} GPUs on one "
                f"node, but the cluster has {cap.describe()}; {hint}"
            )
    if copies_that_fit(demand, cap, limit=1) < 1:
        raise UsageError(
            f"a trial cannot be placed: it holds {cpus:g} CPUs and {gpus:g} GPUs at once ({parts}), "
            f"but the cluster has {cap.describe()}; {hint}"
        )


def _describe_demand(demand: list[Bundle]) -> str:
    workers = [b for b in demand if b.what.startswith("worker")]
    others = [b for b in demand if not b.what.startswith("worker")]
    parts = [f"{b.what} {b.cpus:g} CPU" + (f" {b.gpus:g} GPU" if b.gpus else "") for b in others]
    if workers:
        w = workers[0]
        parts.append(f"{len(workers)} workers x {w.cpus:g} CPU" + (f" {w.gpus:g} GPU" if w.gpus else ""))
    return " + ".join(parts)
