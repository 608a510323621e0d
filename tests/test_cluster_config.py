"""Cluster launcher configs (validated offline with Ray's own schema and defaults), the MLflow
server wrapper and the multi-node checks of jepa_ray.cluster."""

from __future__ import annotations

import copy
import fnmatch
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from jepa_ray import cluster, databases, placement, serve_mlflow
from jepa_ray import config as config_lib
from jepa_ray.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = ("cluster.yaml", "cluster-onprem.yaml")
PLACEHOLDER = re.compile(r"CHANGE-ME[-A-Z0-9]*")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` checks before it contacts any cloud: Ray's defaults for the provider
    merged in (prepare_config), then Ray's JSON schema and consistency rules (validate_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during offline validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------------------------------
# Cluster launcher configs


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_config_passes_ray_validation_offline(name, offline):
    prepared = ray_validate(load(name))
    head = prepared["head_node_type"]
    assert head in prepared["available_node_types"]
    # Ray's defaults merged in, the shared setup prepended to the head's own setup.
    assert prepared["head_setup_commands"][: len(prepared["setup_commands"])] == prepared["setup_commands"]


def test_aws_cluster_shape(offline):
    config = load("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert len(workers) == 1 and workers[0]["min_workers"] == 0 and workers[0]["max_workers"] >= 1
    for node_type in types.values():
        node = node_type["node_config"]
        assert "Arn" in node["IamInstanceProfile"], "credentials come from the instance role"
        assert node["ImageId"] == head["node_config"]["ImageId"]
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize(
    "name, pattern, typo",
    [
        ("cluster.yaml", r"^head_node_type:", "head_node_typ:"),
        ("cluster.yaml", r"^    min_workers:", "    min_worker:"),
        ("cluster.yaml", r"^idle_timeout_minutes:", "idle_timeout_minute:"),
        ("cluster-onprem.yaml", r"^setup_commands:", "setup_command:"),
        ("cluster-onprem.yaml", r"^file_mounts:", "file_mount:"),
    ],
)
def test_misspelled_key_is_rejected(name, pattern, typo, offline):
    import jsonschema

    text, count = re.subn(pattern, typo, (ROOT / name).read_text(), count=1, flags=re.M)
    assert count == 1, f"{pattern} not found in {name}"
    with pytest.raises(jsonschema.ValidationError, match=re.escape(typo.strip().rstrip(":"))):
        ray_validate(yaml.safe_load(text))


def test_both_configs_install_and_start_the_same_way():
    aws, onprem = load("cluster.yaml"), load("cluster-onprem.yaml")
    for key in ("setup_commands", "worker_start_ray_commands", "file_mounts", "rsync_exclude", "rsync_filter"):
        assert aws[key] == onprem[key], key
    assert aws["head_start_ray_commands"][:2] == onprem["head_start_ray_commands"][:2]
    assert aws["file_mounts"]["~/jepa_ray"] == "."
    assert any("install" in c and "-e ~/jepa_ray" in c for c in aws["setup_commands"])


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_local_results_are_not_synced(name):
    excludes = load(name)["rsync_exclude"]
    for local_file in (
        "mlflow.db",
        "optuna.db",
        "mlruns",
        "mlartifacts",
        "ray_results",
        ".git",
        ".venv",
        "__pycache__",
        "mlflow-server.log",
    ):
        assert any(fnmatch.fnmatch(local_file, p) for p in excludes), local_file
    for source in ("jepa_ray", "train.py", "pyproject.toml", "README.md"):
        assert not any(fnmatch.fnmatch(source, p) for p in excludes), source


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_services_bind_to_loopback_and_ray_uses_token_auth(name):
    config = load(name)
    head_cmds = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert re.search(r"serve_mlflow .*--daemon", head_cmds)
    assert re.search(r"serve_mlflow .*--host 127\.0\.0\.1", head_cmds)
    assert "--allow-public" not in head_cmds
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert all("RAY_AUTH_MODE=token" in c for c in cmds if "ray start" in c)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_no_port_open_to_the_world(name):
    text = (ROOT / name).read_text()
    assert "0.0.0.0" not in text and "::/0" not in text
    config = load(name)
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        assert not {"0.0.0.0/0", "::/0"} & set(cidrs), rule


CREDENTIAL_PATTERNS = [
    re.compile(r"aws_secret_access_key", re.I),
    re.compile(r"aws_access_key_id", re.I),
    re.compile(r"aws_session_token", re.I),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s/]+@"),  # user:password@ in a URI
    re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*\S"),
]


def config_like_files() -> list[Path]:
    skip = {".git", ".venv", "venv", "node_modules", "__pycache__", "mlruns", "ray_results", ".pytest_cache"}
    found = []
    for path in ROOT.rglob("*"):
        if skip & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if path.suffix in (".yaml", ".yml", ".toml", ".cfg", ".ini", ".env", ".json") or path.name.startswith(".env"):
            found.append(path)
    return found + [ROOT / "README.md"]  # the cluster guide lives in the README


def test_no_credentials_in_repository_config_files():
    files = config_like_files()
    assert {ROOT / n for n in CLUSTER_FILES} <= set(files)
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in CREDENTIAL_PATTERNS:
            match = pattern.search(text)
            assert match is None, f"{path.relative_to(ROOT)}: credential-like {match.group(0)!r}"


def test_credential_patterns_catch_credentials():
    samples = [
        "aws_secret_access_key = x",
        "AKIAABCDEFGHIJKLMNOP",
        "postgresql://u:hunter2@db/x",
        "-----BEGIN RSA PRIVATE KEY-----",
        "RAY_AUTH_TOKEN=abc",
    ]
    for sample in samples:
        assert any(p.search(sample) for p in CREDENTIAL_PATTERNS), sample
    assert not any(p.search("postgresql://u@db/x s3://CHANGE-ME-BUCKET/mlflow") for p in CREDENTIAL_PATTERNS)


def _placeholders(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _placeholders(value, path + (str(key),))
    elif isinstance(node, list):
        for item in node:
            yield from _placeholders(item, path)
    elif isinstance(node, str) and PLACEHOLDER.search(node):
        yield path, PLACEHOLDER.findall(node)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_placeholder_is_listed_in_the_change_me_block(name):
    text = (ROOT / name).read_text()
    header = text.split("CHANGE ME before", 1)[1].split("\n# ----", 1)[0]
    found = list(_placeholders(yaml.safe_load(text)))
    assert found, "the template has values the user must set"
    for path, tokens in found:
        listed = any(key in header for key in path) or all(t in header for t in tokens)
        assert listed, f"{name}: {'.'.join(path)} ({tokens}) is not in the CHANGE ME list"


# ------------------------------------------------------------------------------------------
# serve_mlflow: refusals and the command it would run (no server started)


@pytest.fixture
def no_server(monkeypatch):
    """Fail if anything tries to start a process; record an exec'd command instead."""
    started = {}

    def fake_execve(path, argv, env):
        started["argv"], started["env"] = argv, env
        raise SystemExit(0)

    def refuse_popen(*args, **kwargs):
        raise AssertionError("a server process was started")

    monkeypatch.setattr(serve_mlflow.os, "execve", fake_execve)
    monkeypatch.setattr(serve_mlflow.subprocess, "Popen", refuse_popen)
    return started


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.20"])
def test_serve_mlflow_refuses_public_hosts(host, no_server, capsys):
    assert serve_mlflow.main(["--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--host {host}" in err and "--allow-public" in err
    assert not no_server


def test_serve_mlflow_refusal_from_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "jepa_ray.serve_mlflow", "--host", "0.0.0.0", "--daemon"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --host 0.0.0.0: refusing")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts(host):
    assert serve_mlflow.is_loopback(host)


def test_allow_public_runs_mlflow_with_proxied_artifacts(no_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(serve_mlflow.BACKEND_URI_ENV, raising=False)
    port = free_port()
    with pytest.raises(SystemExit):
        serve_mlflow.main(
            [
                "--host",
                "0.0.0.0",
                "--allow-public",
                "--port",
                str(port),
                "--artifacts-destination",
                "s3://bucket/mlflow",
            ]
        )
    argv = no_server["argv"]
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == str(port)
    assert "--serve-artifacts" in argv
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://bucket/mlflow"
    assert no_server["env"][serve_mlflow.BACKEND_URI_ENV] == "sqlite:///mlflow.db"


def test_password_only_from_the_environment(no_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert serve_mlflow.main(["--backend-store-uri", "postgresql://jepa:s3cret@db:5432/mlflow"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "PGPASSWORD" in err and "***" in err
    monkeypatch.setenv(serve_mlflow.BACKEND_URI_ENV, "postgresql://jepa:s3cret@db:5432/mlflow")
    monkeypatch.setattr(serve_mlflow, "check_database", lambda *args, **kwargs: None)  # no server "db" here
    with pytest.raises(SystemExit):
        serve_mlflow.main(["--port", str(free_port())])
    assert not any("s3cret" in a for a in no_server["argv"])
    assert no_server["env"][serve_mlflow.BACKEND_URI_ENV] == "postgresql://jepa:s3cret@db:5432/mlflow"
    assert "s3cret" not in capsys.readouterr().out


def test_passwordless_postgres_uri_is_accepted():
    uri = "postgresql://jepa@db:5432/mlflow"
    assert serve_mlflow.resolve_backend_store_uri(uri, environ={}) == uri
    assert serve_mlflow.redact("postgresql://a:b@h/d") == "postgresql://a:***@h/d"
    assert serve_mlflow.redact(uri) == uri


def test_a_database_whose_driver_is_missing_is_refused_with_what_to_install(no_server, monkeypatch, capsys):
    """SQLAlchemy's own driver for the scheme, named with its pip package, before any server
    starts (psycopg stands in for a machine without the PostgreSQL extra)."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    assert serve_mlflow.main(["--backend-store-uri", "postgresql://jepa@127.0.0.1:1/mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        "error: --backend-store-uri postgresql://jepa@127.0.0.1:1/mlflow: its database driver psycopg is not "
        "installed; pip install 'psycopg[binary]' (or pip install -e '.[postgres]')"
    ]
    with pytest.raises(UsageError, match=r"driver pg8000 is not installed; pip install pg8000$"):
        databases.check_optuna_storage("postgresql+pg8000://jepa@127.0.0.1:1/optuna")
    with pytest.raises(UsageError, match=r"unknown database scheme 'postgresql\+nope'; allowed: a SQLAlchemy URL"):
        cluster.check_tracking_uri("postgresql+nope://jepa@127.0.0.1:1/mlflow", multi_node=False)


def test_a_database_that_does_not_answer_is_one_line_naming_the_input():
    port = free_port()
    uri = f"postgresql://jepa@127.0.0.1:{port}/mlflow"
    with pytest.raises(UsageError) as err:
        cluster.check_tracking_uri(uri, multi_node=False)
    message = str(err.value)
    assert message.startswith(f"tracking URI {uri}: the database does not answer (") and "\n" not in message
    assert "CREATE DATABASE" in message and "PGPASSWORD" in message
    with pytest.raises(UsageError, match=rf"^--optuna-storage {re.escape(uri)}: the database does not answer"):
        databases.check_optuna_storage(uri)


@pytest.mark.parametrize(
    "check, what",
    [
        (lambda uri: cluster.check_tracking_uri(uri, multi_node=False), "tracking URI"),
        (databases.check_optuna_storage, "--optuna-storage"),
    ],
)
def test_the_sweep_refuses_a_password_in_a_uri_without_showing_it(check, what):
    uri = "postgresql://jepa:s3cret@127.0.0.1:1/db"
    with pytest.raises(UsageError) as err:
        check(uri)
    message = str(err.value)
    assert message.startswith(f"{what} postgresql://jepa:***@127.0.0.1:1/db: do not put a password in the URI")
    assert "s3cret" not in message and "PGPASSWORD" in message


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "http://127.0.0.1:5000", "sqlite://relative.db"])
def test_optuna_storage_schemes(url):
    with pytest.raises(UsageError, match=rf"^--optuna-storage {re.escape(url)}: .*sqlite:///"):
        databases.check_optuna_storage(url)


def test_sqlite_store_in_a_missing_directory_is_refused(no_server, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/missing/mlflow.db"
    assert serve_mlflow.main(["--backend-store-uri", uri]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_busy_port_is_reported_before_starting(no_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve_mlflow.main(["--daemon", "--port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert not no_server


def test_check_reports_a_missing_server_quickly(monkeypatch):
    """--check asks once, with a bounded timeout (no retry loop)."""
    timeouts = spy_timeouts(monkeypatch, urllib.request, "urlopen")
    assert serve_mlflow.main(["--check", "--port", str(free_port())]) == 1
    assert timeouts == [2.0]


def spy_timeouts(monkeypatch, module, name: str) -> list:
    """Record the `timeout` of every call of module.name (the real call still runs)."""
    real, seen = getattr(module, name), []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("timeout"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_health_url():
    assert serve_mlflow.health_url("0.0.0.0", 5000) == "http://127.0.0.1:5000/health"
    assert serve_mlflow.health_url("::1", 5001) == "http://[::1]:5001/health"


@pytest.mark.slow
def test_serve_mlflow_daemon_starts_serves_artifacts_and_stops(tmp_path):
    port = free_port()
    pid_file, log_file, artifacts = tmp_path / "server.pid", tmp_path / "server.log", tmp_path / "artifacts"
    env = {k: v for k, v in os.environ.items() if k != serve_mlflow.BACKEND_URI_ENV}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [
        sys.executable,
        "-m",
        "jepa_ray.serve_mlflow",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--artifacts-destination",
        str(artifacts),
        "--pid-file",
        str(pid_file),
        "--log-file",
        str(log_file),
    ]
    pid = None
    try:
        started = subprocess.run(
            cmd + ["--daemon", "--timeout", "240"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
        )
        assert started.returncode == 0, started.stderr + log_file.read_text(errors="replace")
        pid = int(pid_file.read_text())
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            assert response.status == 200
        # Starting again while it answers is a no-op (the head's start commands re-run).
        again = subprocess.run(cmd + ["--daemon"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert again.returncode == 0 and "already answers" in again.stdout
        assert int(pid_file.read_text()) == pid

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        exp_id = client.create_experiment("cluster-test")
        assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
        run = client.create_run(exp_id)
        client.log_text(run.info.run_id, "front", "pareto/front.txt")
        stored = list(artifacts.rglob("front.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "front"
        assert (tmp_path / "mlflow.db").exists()

        stopped = subprocess.run(cmd + ["--stop"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert not serve_mlflow.group_alive(pid)
        assert not serve_mlflow.is_healthy(url + "/health", timeout=1)
        assert not pid_file.exists()
    finally:
        if pid is not None and serve_mlflow.group_alive(pid):
            serve_mlflow._stop_group(pid, grace=5)


# ------------------------------------------------------------------------------------------
# jepa_ray.cluster


@pytest.mark.parametrize(
    "path, local",
    [
        ("ray_results", True),
        ("/mnt/nfs/ray", True),
        ("~/ray_results", True),
        ("file:///tmp/r", True),
        ("s3://bucket/ray", False),
        ("gs://bucket/ray", False),
        ("s3://b/r?endpoint_override=http://m:9000", False),
    ],
)
def test_is_local_path(path, local):
    assert cluster.is_local_path(path) is local


def test_local_storage_path_is_refused_on_several_nodes(monkeypatch):
    monkeypatch.delenv(cluster.SHARED_FS_ENV, raising=False)
    with pytest.raises(
        UsageError, match=r"storage_path /data/ray is a local path but the cluster has 3 nodes; use s3://"
    ):
        cluster.check_storage_path("/data/ray", 3)
    with pytest.raises(UsageError, match="--storage-path"):
        cluster.check_storage_path("file:///data/ray", 2)
    cluster.check_storage_path("/data/ray", 1)
    cluster.check_storage_path("s3://bucket/ray", 8)
    monkeypatch.setenv(cluster.SHARED_FS_ENV, "1")
    cluster.check_storage_path("/mnt/nfs/ray", 8)


def test_storage_path_bad_inputs():
    with pytest.raises(UsageError, match="storage_path is empty"):
        cluster.check_storage_path("", 1)
    with pytest.raises(ValueError, match="num_nodes"):
        cluster.check_storage_path("s3://b", 0)


def test_unreachable_tracking_server_is_reported_quickly(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    timeouts = spy_timeouts(monkeypatch, urllib.request, "urlopen")
    with pytest.raises(UsageError, match=rf"tracking URI {re.escape(uri)} unreachable: "):
        cluster.check_tracking_uri(uri, multi_node=True)
    assert timeouts == [cluster.HEALTH_TIMEOUT_S]  # one bounded request, no retries


@pytest.fixture
def health_server():
    """A local HTTP server whose /health answers with the status code set in `status[0]`."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status[0] if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


def test_tracking_server_that_answers(health_server):
    uri, status = health_server
    cluster.check_tracking_uri(uri, multi_node=True)
    cluster.check_tracking_uri(uri + "/", multi_node=False)
    status[0] = 401  # behind authentication: reachable
    cluster.check_tracking_uri(uri, multi_node=True)
    status[0] = 503
    with pytest.raises(UsageError, match="unreachable: HTTP 503"):
        cluster.check_tracking_uri(uri, multi_node=True)


def test_sqlite_tracking_uri(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="jepa_ray.cluster"):
        cluster.check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db", multi_node=True)
    assert "only the driver writes" in caplog.text
    with pytest.raises(UsageError, match="does not exist"):
        cluster.check_tracking_uri(f"sqlite:///{tmp_path}/nope/mlflow.db", multi_node=False)
    with pytest.raises(UsageError, match="unknown scheme 'htp'"):
        cluster.check_tracking_uri("htp://127.0.0.1:5000", multi_node=False)


@pytest.mark.parametrize(
    "address, expected",
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head:10001", ("head", 10001)),
        ("[::1]:6379", ("::1", 6379)),
    ],
)
def test_parse_address(address, expected):
    assert cluster.parse_address(address) == expected


@pytest.mark.parametrize("address", ["head", "head:port", ":6379", "head:70000"])
def test_parse_address_rejects(address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        cluster.parse_address(address)


def test_connect_to_unreachable_cluster_fails_fast(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # This process may hold the session's Ray instance (an earlier test's): connect() is then a
    # no-op, so it is made to see none, and ray.init must never be reached.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: pytest.fail("ray.init was called"))
    with socket.socket() as held:  # bound, never listening: refused, and no other process can take it
        held.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{held.getsockname()[1]}"
        timeouts = spy_timeouts(monkeypatch, socket, "create_connection")
        with pytest.raises(UsageError, match=rf"--address '{re.escape(address)}': Ray cluster unreachable"):
            cluster.connect(address)
        monkeypatch.setenv("RAY_ADDRESS", address)
        with pytest.raises(UsageError, match="RAY_ADDRESS"):
            cluster.connect(None)
    assert timeouts and set(timeouts) == {cluster.CONNECT_TIMEOUT_S}  # every probe bounded
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        cluster.connect("not-an-address")


CONNECT_LOCAL = """
import sys, ray
from jepa_ray import cluster
cluster.connect("local", num_cpus=1)
assert ray.is_initialized()
assert cluster.node_count() == 1
assert ray.cluster_resources()["CPU"] == 1
cluster.check_storage_path(sys.argv[1], cluster.node_count())
cluster.connect("local")  # already connected: no-op
ray.shutdown()
print("ok")
"""


@pytest.mark.slow
def test_connect_local_counts_one_node(tmp_path):
    """In a process of its own: this one may hold the session's Ray instance (tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", CONNECT_LOCAL, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_max_node_count_reads_the_launcher_config_on_the_head(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(cluster, "node_count", lambda: 1)
    assert cluster.max_node_count(tmp_path / "absent.yaml") == 1
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    # What `ray up` leaves on the head: the prepared config, written as JSON.
    bootstrap.write_text(json.dumps(ray_validate(load("cluster.yaml"))))
    assert cluster.max_node_count(bootstrap) == 1 + load("cluster.yaml")["max_workers"]
    bootstrap.write_text(json.dumps(ray_validate(load("cluster-onprem.yaml"))))
    assert cluster.max_node_count(bootstrap) == 1 + len(load("cluster-onprem.yaml")["provider"]["worker_ips"])
    monkeypatch.setattr(cluster, "node_count", lambda: 9)
    assert cluster.max_node_count(bootstrap) == 9


# --------------------------------------------------------------------------------------------
# Will a trial fit? (placement.check_trial_fits and friends, without Ray)


def _cfg(**overrides):
    return config_lib.resolve(config_lib.apply_overrides(config_lib.preset("smoke"), overrides))


def test_trial_demand_counts_the_trial_actor_and_every_worker():
    one = placement.trial_demand(_cfg(), in_tune=True)
    assert [(b.cpus, b.gpus) for b in one] == [(1.0, 0.0)]
    assert placement.trial_demand(_cfg(), in_tune=False) == []  # the command line trains without Ray
    ddp = placement.trial_demand(_cfg(workers=2, gpus_per_worker=1, cpus_per_worker=4), in_tune=True)
    assert [(b.cpus, b.gpus) for b in ddp] == [(placement.TRIAL_ACTOR_CPUS, 0.0), (4.0, 1.0), (4.0, 1.0)]


def test_a_trial_larger_than_the_cluster_is_refused_naming_what_does_not_fit():
    cap = placement.Capacity([placement.NodeShape(2, 0, "laptop")])
    demand = placement.trial_demand(_cfg(workers=2), in_tune=True)  # 0.01 + 2 x 1 CPU
    with pytest.raises(
        UsageError,
        match=r"holds 2.01 CPUs and 0 GPUs at once \(Tune's trial actor 0.01 CPU "
        r"\+ 2 workers x 1 CPU\), but the cluster has 1 node\(s\), 2 CPUs",
    ):
        placement.check_trial_fits(demand, cap)
    placement.check_trial_fits(placement.trial_demand(_cfg(workers=2, cpus_per_worker=0.5), in_tune=True), cap)
    with pytest.raises(UsageError, match="worker 0 needs 1 CPUs and 1 GPUs on one node"):
        placement.check_trial_fits(placement.trial_demand(_cfg(workers=2, gpus_per_worker=1), in_tune=True), cap)


def test_packing_not_totals_decides():
    """Two nodes of 1 CPU hold 1.8 CPUs in total but not three workers of 0.6 CPU."""
    cap = placement.Capacity([placement.NodeShape(1, 0, "a"), placement.NodeShape(1, 0, "b")])
    demand = [placement.Bundle(0.6, 0, f"worker {i}") for i in range(3)]
    with pytest.raises(UsageError, match="cannot be placed"):
        placement.check_trial_fits(demand, cap)
    assert placement.copies_that_fit(demand[:2], cap) == 1
    assert placement.copies_that_fit([placement.Bundle(0.5, 0, "the trial")], cap) == 4


def test_an_autoscaling_cluster_counts_the_nodes_it_can_launch():
    head = [placement.NodeShape(0, 0, "head")]  # cluster.yaml's head advertises no CPUs
    config = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}},
            "gpu": {"max_workers": 4, "resources": {"CPU": 8, "GPU": 1}},
        },
    }
    cap = placement.launchable_capacity(head, config)
    assert [n.name for n in cap.nodes] == ["head", "gpu", "gpu", "gpu"]  # max_workers 3 bounds the type's 4
    demand = placement.trial_demand(_cfg(workers=2, gpus_per_worker=1, cpus_per_worker=6), in_tune=True)
    placement.check_trial_fits(demand, cap)
    assert placement.copies_that_fit(demand, cap) == 1  # three 1-GPU nodes hold one 2-GPU trial
    with pytest.raises(UsageError, match="worker 0 needs 6 CPUs and 2 GPUs on one node"):
        placement.check_trial_fits(
            placement.trial_demand(_cfg(workers=2, gpus_per_worker=2, cpus_per_worker=6), in_tune=True), cap
        )


def test_node_types_of_unknown_size_get_the_benefit_of_the_doubt():
    config = {"max_workers": 2, "available_node_types": {"gpu": {"max_workers": 2, "resources": {}}}}
    cap = placement.launchable_capacity([placement.NodeShape(0, 0, "head")], config)
    assert cap.unknown == ["gpu"]
    placement.check_trial_fits(placement.trial_demand(_cfg(workers=8, gpus_per_worker=1), in_tune=True), cap)


def test_the_tracking_server_runs_without_mlflow_s_job_runner_unless_asked(monkeypatch):
    """MLflow 3's job runner and Huey consumers (2 GB on the head) stay off; a user's setting wins."""
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    env = serve_mlflow.server_env("sqlite:///mlflow.db")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env[serve_mlflow.BACKEND_URI_ENV] == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert serve_mlflow.server_env("sqlite:///mlflow.db")["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"


def test_the_server_stops_when_ray_stops_answering(tmp_path):
    """`--stop-with-ray`: the server runs while the head's GCS accepts connections and is stopped
    a few probes after it stops (what `ray down`, which only runs `ray stop`, needs)."""
    gcs = socket.socket()
    gcs.bind(("127.0.0.1", 0))
    gcs.listen()
    ray = gcs.getsockname()
    marker = tmp_path / "started"
    server_cmd = [sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(120)"]
    result = {}
    supervisor = threading.Thread(
        target=lambda: result.setdefault("rc", serve_mlflow.supervise(server_cmd, dict(os.environ), ray, interval=0.1))
    )
    supervisor.start()
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    time.sleep(1.0)
    assert supervisor.is_alive(), "the server was stopped while Ray answered"
    gcs.close()
    supervisor.join(timeout=30)
    assert not supervisor.is_alive() and result["rc"] == 0


def test_stop_with_ray_refuses_an_address_where_nothing_answers(capsys):
    assert (
        serve_mlflow.main(["--daemon", "--stop-with-ray", f"127.0.0.1:{free_port()}", "--port", str(free_port())]) == 2
    )
    assert "--stop-with-ray 127.0.0.1:" in capsys.readouterr().err
    assert serve_mlflow.main(["--stop-with-ray", "nohostport"]) == 2


COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_command_is_valid_bash_after_yaml_parsing(name):
    """What `ray up` hands to bash is the command as YAML parsed it: a ` #` in a plain scalar
    starts a YAML comment and a `: ` a mapping, either of which silently cuts a command."""
    config = load(name)
    for key in COMMAND_KEYS:
        for command in config.get(key) or []:
            assert isinstance(command, str), f"{name} {key}: {command!r} is not one command line"
            check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert check.returncode == 0, f"{name} {key}: {command!r}: {check.stderr.strip()}"


def test_a_yaml_cut_command_is_caught():
    cut = yaml.safe_load("""- echo 'export PATH="$HOME/venv/bin:$PATH"  # marker' >> ~/.bashrc""")[0]
    assert subprocess.run(["bash", "-n", "-c", cut], capture_output=True).returncode != 0


def repository_packages() -> set[str]:
    """Every directory of the repository a cluster needs: Python packages and the entry points."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [f for f in tracked.splitlines() if f.endswith((".py", "pyproject.toml"))]
    return {str(Path(f).parent) for f in files if not f.startswith(("tests/", "benchmarks/"))}


@pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed")
@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_the_synced_tree_holds_every_package(name, tmp_path):
    """The repository copied to the head as `ray up` copies it (rsync with the file's
    rsync_exclude and rsync_filter, Ray's own argument builder) holds every package."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    config = load(name)
    filters = SSHCommandRunner._create_rsync_filter_args(None, config)
    subprocess.run(["rsync", "-a", *filters, f"{ROOT}/", f"{tmp_path}/"], check=True, capture_output=True)
    copied = {str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    missing = sorted(repository_packages() - copied)
    assert not missing, f"{name}: rsync_exclude/rsync_filter drop {missing}"
    assert (tmp_path / "jepa_ray" / "pareto" / "__init__.py").exists()


@pytest.mark.parametrize(
    "provider, name",
    [("local", "cluster-onprem.yaml"), ("aws", "cluster.yaml"), (None, "cluster.yaml or cluster-onprem.yaml")],
)
def test_hints_name_the_cluster_file_that_launched_the_head(provider, name, tmp_path):
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    if provider:
        bootstrap.write_text(yaml.safe_dump({"cluster_name": "x", "provider": {"type": provider}}))
    assert cluster.attach_hint(bootstrap) == f"ray attach {name} -p 5000"
