"""A two-node Ray cluster on one machine (`ray start --head` plus `ray start --address`, each
with its own resources, ports and temp dir, on loopback): the sweep refuses a node-local
storage path there, and a `--smoke` sweep submitted with `ray job submit` (the documented
cluster path) finishes."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(RAY is None, reason="the ray CLI is not installed")]


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def kill_cluster(root: str) -> None:
    """Stop only this cluster's processes (`ray stop` would stop every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        subprocess.run(["pkill", f"-{sig.name[3:]}", "-f", root], check=False)
        time.sleep(3)


@pytest.fixture(scope="module")
def two_nodes():
    # A short root: Ray's socket paths must stay under the 107-character limit.
    root = tempfile.mkdtemp(prefix="jrmn")
    gcs, dash, *agent = free_ports(10)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    head = [
        RAY,
        "start",
        "--head",
        f"--port={gcs}",
        f"--temp-dir={root}/h",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent[0]}",
        f"--dashboard-agent-grpc-port={agent[1]}",
        f"--metrics-export-port={agent[2]}",
        f"--runtime-env-agent-port={agent[3]}",
        *common,
    ]
    # Its own temp dir: a node sharing the head's would delete the job's working_dir under it.
    worker = [
        RAY,
        "start",
        f"--address=127.0.0.1:{gcs}",
        f"--temp-dir={root}/w",
        f"--dashboard-agent-listen-port={agent[4]}",
        f"--dashboard-agent-grpc-port={agent[5]}",
        f"--metrics-export-port={agent[6]}",
        f"--runtime-env-agent-port={agent[7]}",
        *common,
    ]
    try:
        for cmd in (head, worker):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        yield {"root": root, "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        kill_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def test_cluster_has_two_nodes(two_nodes):
    code = (
        "import ray; ray.init(address=%r, log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']), int(ray.cluster_resources()['CPU']))" % two_nodes["gcs"]
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=two_nodes["env"], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split()[-2:] == ["2", "4"], out.stderr[-2000:]


def test_sweep_refuses_a_local_storage_path_on_two_nodes(two_nodes, tmp_path):
    env = {k: v for k, v in two_nodes["env"].items() if k != "JEPA_RAY_SHARED_FS"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "rectified.py"),
            "--smoke",
            "--address",
            two_nodes["gcs"],
            "--storage-path",
            str(tmp_path / "ray"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: storage_path") and "2 nodes" in last and "s3://" in last
    assert not (tmp_path / "mlflow.db").exists() or "trial" not in (tmp_path / "mlflow.db").read_bytes().decode(
        "latin-1"
    )


def test_ddp_trial_across_two_nodes_through_ray_job_submit(two_nodes, tmp_path):
    """A sweep submitted as a Ray job, whose 2-worker trial (1.5 CPUs each on nodes of 2 CPUs)
    must land on different nodes: DDP over the two nodes, checkpoints in the shared store,
    reports forwarded to Tune, the job succeeded."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        two_nodes["dashboard"],
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        '{"env_vars": {"JEPA_RAY_SHARED_FS": "1"}}',
        "--",
        "python",
        "sweeps/rectified.py",
        "--preset",
        "smoke",
        "--num-samples",
        "1",
        "--workers-per-trial",
        "2",
        "--cpus-per-worker",
        "1.5",
        "--epochs",
        "2",
        "--address",
        "auto",
        "--storage-path",
        str(tmp_path / "ray"),
        "--tracking-uri",
        uri,
        "--experiment",
        "multinode-ddp",
    ]
    for _attempt in range(3):
        out = subprocess.run(cmd, env=two_nodes["env"], capture_output=True, text=True, timeout=600)
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(10)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "succeeded" in out.stdout + out.stderr
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("multinode-ddp")
    (run,) = client.search_runs([exp.experiment_id], "tags.`jepa_ray.role` = 'trial'")
    assert run.info.status == "FINISHED" and run.data.params["workers"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [0, 1]
