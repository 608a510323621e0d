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


RAY_GROUPS = {
    "test_sweep": "ray",
    "test_disk_full": "ray",
    "test_cluster_up": "cluster",
    "test_multinode": "cluster",
    "test_newcomer": "cluster",
}
"""Modules whose tests start or join Ray, by the xdist group that runs them one after another
(`-n 2 --dist loadgroup` in pyproject.toml). "ray" is the session's `ray_cluster` instance: every
test that uses the fixture joins that group too, so one worker starts it. "cluster" starts its
own clusters (`ray up` on 6379 and 8265, `ray start` on 6391, /tmp/ray/ray_current_cluster),
never beside each other. Every other test runs in its module's group: a module's fixtures are
built once, and at most two Ray instances run at a time."""


def xdist_group(item: pytest.Item) -> str:
    """The group of tests that one xdist worker runs in order (see RAY_GROUPS)."""
    module = getattr(getattr(item, "module", None), "__name__", item.nodeid.split("::")[0])
    if module in RAY_GROUPS:
        return RAY_GROUPS[module]
    return "ray" if "ray_cluster" in getattr(item, "fixturenames", ()) else module


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))


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
