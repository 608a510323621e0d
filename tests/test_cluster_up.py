"""`ray up cluster-onprem.yaml` for real: sshd on loopback, a head at 127.0.0.1 reached over SSH as
an unprivileged user, the file's setup and start commands run as written (but for the head's job
agent port, see `head`), then docs/cluster.md's
path: `ray job submit` of a small sweep, its runs read from the head's MLflow, the export on the
head with `ray exec`, `ray rsync-down` of it, and `ray down` leaving nothing of the user running,
MLflow included.

What this machine cannot reach is supplied the way docs/cluster.md tells an offline cluster to
(never by editing the commands under test): uv placed at `~/.local/bin/uv` (the setup's
`test -x` skips its download) and a uv config naming the package mirror this machine's pip uses.
Root is needed (a test user, sshd on port 22); elsewhere the test skips with one line.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
USER = "jepaci"
CLUSTER = "jepa-ray-ci"
UV_CACHE = Path("/var/cache/jepa_ray-ci/uv")  # kept between runs: installs take seconds, not minutes
UP_TIMEOUT_S = 1500
NO_AGENT = "No available agent to submit job"
"""Ray's answer to a job submitted before the head's job agent has started (it waits 10 s)."""
AGENT_RETRIES = 6

pytestmark = pytest.mark.slow


def _reap_leftovers() -> None:
    """A run of this test killed before its teardown (a CI timeout, Ctrl-C twice) leaves its sshd
    on port 22 and the test user's Ray head and MLflow on 6379, 8265 and 5000, and every later
    run would skip: kill the test user's processes and any sshd whose config lets in only the
    test user (this fixture's; a config pytest has since deleted counts when it lay where this
    fixture writes it), then, where it killed anything, wait for the ports."""
    killed = subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True).returncode == 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").replace("\0", " ").split()
        except OSError:
            continue
        if not args or "sshd" not in args[0] or "-f" not in args[:-1]:
            continue
        config = Path(args[args.index("-f") + 1])
        try:
            ours = f"AllowUsers {USER}\n" in config.read_text()
        except OSError:
            ours = "pytest-of-" in str(config) and config.parent.name.startswith("cluster")
        if ours:
            os.kill(int(cmdline.parent.name), signal.SIGKILL)
            killed = True
    deadline = time.monotonic() + 10
    while killed and _taken_port() is not None and time.monotonic() < deadline:
        time.sleep(0.2)


def _taken_port() -> str | None:
    """The first of the loopback ports the cluster needs that something holds, said in words."""
    for port, what in ((22, "sshd"), (5000, "MLflow"), (6379, "Ray"), (8265, "Ray's dashboard")):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return f"port {port} on 127.0.0.1 is taken (another {what}?)"
    return None


def _why_not() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (a test user and sshd on port 22)"
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "useradd"):
        if not shutil.which(tool):
            return f"{tool} is not installed (.ci/run installs openssh-server and rsync)"
    _reap_leftovers()
    taken = _taken_port()
    if taken:
        return taken
    try:
        import uv  # noqa: F401
    except ImportError:
        return "the uv package is not installed (test extra)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)[:200]} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def pip_mirror() -> dict[str, list[str]]:
    """The package sources this machine's pip is configured with (none: PyPI)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    sources: dict[str, list[str]] = {"find-links": [], "extra-index-url": [], "index-url": []}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in sources:
            sources[name] += [v for v in value.strip().strip("'\"").split() if v not in sources[name]]
    return {k: v for k, v in sources.items() if v}


def uv_config() -> str:
    """~/.config/uv/uv.toml of the test user: the machine's mirror and CAs, no Python downloads."""
    lines = [
        f'cache-dir = "{UV_CACHE}"',
        'python-downloads = "never"',
        "system-certs = true",
    ]  # the OS's CAs, a proxy's included
    # pip takes the best version across all its indexes; uv only from the first that has a package
    lines.append('index-strategy = "unsafe-best-match"')
    for key, values in pip_mirror().items():
        lines.append(f"{key} = {json.dumps(values[0] if key == 'index-url' else values)}")
    return "\n".join(lines) + "\n"


def user_processes() -> list[str]:
    out = subprocess.run(["ps", "-u", USER, "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A fresh test user reachable over SSH at 127.0.0.1, with the offline overrides in place."""
    why = _why_not()
    if why:
        pytest.skip(f"no loopback cluster: {why}")
    import uv

    tmp = tmp_path_factory.mktemp("cluster")
    tmp.chmod(0o755)
    subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    run("useradd", "--create-home", "--shell", "/bin/bash", USER)
    run("usermod", "--password", "*", USER)  # no password, but not locked: sshd refuses locked accounts
    home = Path(pwd.getpwnam(USER).pw_dir)
    key = tmp / "id_ed25519"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key"))
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (home / ".local" / "bin").mkdir(parents=True)
    shutil.copy(uv.find_uv_bin(), home / ".local" / "bin" / "uv")
    (home / ".config" / "uv").mkdir(parents=True)
    (home / ".config" / "uv" / "uv.toml").write_text(uv_config())
    UV_CACHE.mkdir(parents=True, exist_ok=True)
    run("chown", "-R", f"{USER}:{USER}", str(home), str(UV_CACHE))
    (tmp / "sshd_config").write_text(
        f"Port 22\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AllowUsers {USER}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitUserEnvironment no\nMaxSessions 64\nMaxStartups 64\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd_log = open(tmp / "sshd.log", "wb")  # noqa: SIM115 (open for the fixture's lifetime)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")], stderr=sshd_log)
    try:
        for _ in range(50):
            if subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
                               "-o", "UserKnownHostsFile=/dev/null", f"{USER}@127.0.0.1", "true"],
                              capture_output=True).returncode == 0:  # fmt: skip
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"sshd on 127.0.0.1:22 refused the test user's key: {(tmp / 'sshd.log').read_text()[-2000:]}")
        token = Path.home() / ".ray" / "auth_token"
        if not token.exists():  # docs/cluster.md step 3, on the machine that runs `ray up`
            run("ray", "get-auth-token", "--generate")
        config = yaml.safe_load((ROOT / "cluster-onprem.yaml").read_text())
        config["cluster_name"] = CLUSTER
        config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
        config["auth"] = {"ssh_user": USER, "ssh_private_key": str(key)}
        # The one change to a command: a head's job agent listens on 52365 unless told otherwise,
        # and a Ray instance of a test running beside this one (pytest -n 2) may hold that port
        # here; on a real head it is free, and without it `ray job submit` finds no agent.
        start = config["head_start_ray_commands"]
        assert sum("ray start --head " in c for c in start) == 1, start
        agent = f"ray start --head --dashboard-agent-listen-port={free_port()} "
        config["head_start_ray_commands"] = [c.replace("ray start --head ", agent) for c in start]
        cluster_file = tmp / "cluster-onprem.yaml"
        cluster_file.write_text(yaml.safe_dump(config, sort_keys=False))
        yield cluster_file, home, tmp
    finally:
        subprocess.run(
            ["ray", "down", "-y", str(tmp / "cluster-onprem.yaml")], cwd=ROOT, capture_output=True, timeout=300
        )
        sshd.terminate()
        sshd.wait(timeout=30)
        sshd_log.close()
        subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
        subprocess.run(["userdel", "-r", USER], capture_output=True)


def test_ray_up_job_submit_export_and_ray_down_over_ssh(head):
    cluster_file, home, tmp = head
    token_env = {"RAY_AUTH_MODE": "token"}
    # `ray up` twice: the second run is what a user does after a change (and must not fail on
    # what the first left behind).
    for _ in range(2):
        up = run("ray", "up", "-y", "--no-config-cache", str(cluster_file), timeout=UP_TIMEOUT_S)
    # sshd's sessions inherit this process's hard limit; the echoed command says $(ulimit -n)
    capped = resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 65536
    assert bool(re.search(r"open files capped at \d", up.stdout + up.stderr)) == capped
    assert (home / "jepa_ray" / "jepa_ray" / "pareto" / "__init__.py").exists()
    health = urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=10).read()
    assert health.strip() == b"OK"

    sweep = [
        "python", "sweeps/rectified.py", "--address", "auto", "--smoke", "--num-samples", "2", "--max-concurrent", "2",
        "--seed", "0", "--tracking-uri", "http://127.0.0.1:5000", "--experiment", "ci-cluster",
        "--optuna-storage", f"sqlite:///{home}/optuna/optuna.db", "--storage-path", f"{home}/ray_results",
    ]  # fmt: skip
    submit = ["ray", "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".", "--", *sweep]
    for attempt in range(AGENT_RETRIES):  # as docs/cluster.md says: a head still starting has no job agent
        job = run(*submit, timeout=900, env=token_env, check=False)
        if NO_AGENT not in job.stderr or attempt == AGENT_RETRIES - 1:
            break
        time.sleep(10)
    assert job.returncode == 0, f"ray job submit exited {job.returncode}:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}"
    assert "succeeded" in job.stdout, job.stdout[-3000:]

    import mlflow

    client = mlflow.MlflowClient("http://127.0.0.1:5000")
    experiment = client.get_experiment_by_name("ci-cluster")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("jepa_ray.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("jepa_ray.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert all(r.info.status == "FINISHED" for r in trials)

    run(
        "ray", "exec", str(cluster_file),
        "cd ~/jepa_ray && python -m jepa_ray.pareto --experiment ci-cluster --out ~/pareto --tracking-uri http://127.0.0.1:5000",
        timeout=600,
    )  # fmt: skip
    local = tmp / "pareto"
    run("ray", "rsync-down", str(cluster_file), f"{home}/pareto/", f"{local}/", timeout=300)
    front = json.loads((local / "pareto.json").read_text())
    assert front and (local / "pareto.parquet").exists() and any((local / "checkpoints").iterdir())

    run("ray", "down", "-y", str(cluster_file), timeout=300)
    deadline = time.monotonic() + 60
    while user_processes() and time.monotonic() < deadline:
        time.sleep(1)
    assert not user_processes(), f"left running after ray down: {user_processes()}"
