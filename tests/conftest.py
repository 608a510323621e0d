"""Shared test setup: one intra-op thread per process (the tests share a small CPU with Ray
workers and with each other), one local Ray instance for the whole session, and the groups in
which two pytest-xdist workers run the suite."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

RAY_CPUS = 4
"""Logical CPUs of the test cluster. More than a small machine has on purpose: a trial's
controller and workers must all fit in the cluster's CPUs or Ray waits forever, and the test
work is small enough to over-subscribe the real cores."""


CLUSTER_MODULES = frozenset({"test_cluster_up", "test_multinode", "test_newcomer"})
"""Modules that start their own Ray clusters on fixed ports (`ray up` on 6379 and 8265, `ray
start` on 6391) or through /tmp/ray/ray_current_cluster: one xdist worker runs them all, one
after another (`-n 2 --dist loadgroup` in pyproject.toml)."""

LONGEST_FIRST = ("cluster", "test_sweep", "test_benchmarks", "test_replay", "test_writer", "test_disk_full")
"""Groups that take minutes, handed to the workers before the others (the rest fill the gaps):
a long group started last would run alone at the end."""


def xdist_group(item: pytest.Item) -> str:
    """The group of tests that one xdist worker runs in order: the cluster modules together, the
    tests of the session's smoke sweep together (it is built once per worker that needs it),
    every other module by itself (its module fixtures built once). Each worker that runs a test
    using `ray_cluster` starts its own instance of it: at most one per worker."""
    module = getattr(getattr(item, "module", None), "__name__", item.nodeid.split("::")[0])
    if module in CLUSTER_MODULES:
        return "cluster"
    return "test_sweep" if "smoke_sweep" in getattr(item, "fixturenames", ()) else module


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {item.nodeid: xdist_group(item) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    rank = {group: k for k, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance shared by every test that needs one; yields its GCS address (for a
    subprocess to join with `--address`). `address="local"` keeps it from joining a cluster
    that something else on this machine started."""
    import ray

    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def smoke_sweep(ray_cluster, tmp_path_factory):
    """One `--smoke --seed 0` sweep into a temporary MLflow store, shared by every test that
    only reads what a finished sweep recorded (tests/test_sweep.py, test_ui.py, the README's
    encoder example): each sweep costs half a minute of CI."""
    from test_sweep import run_sweep

    run = run_sweep(tmp_path_factory.mktemp("smoke"), "--smoke", "--seed", "0", address=ray_cluster)
    assert run.returncode == 0, run.output()
    return run
