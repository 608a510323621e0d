"""Shared test setup: one intra-op thread per process (the tests share a small CPU with Ray
workers and with each other), and one local Ray instance for the whole session."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

RAY_CPUS = 4
"""Logical CPUs of the test cluster. More than a small machine has on purpose: a trial's
controller and workers must all fit in the cluster's CPUs or Ray waits forever, and the test
work is small enough to over-subscribe the real cores."""


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
