"""Connecting the sweep driver to Ray, and the checks a multi-node run needs before any trial.

On one machine every path and every port is shared. On a cluster, trial workers run on other
nodes: they only see storage that every node sees, and the driver only reaches servers that
answer. These helpers turn the usual multi-node failures (a local `storage_path` that Ray Train
cannot sync between nodes, a tracking server nobody started or forwarded, a Ray address that
does not answer and on which `ray.init` would retry for minutes) into one clear error before
any work starts.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from jepa_ray import adapter, reaper
from jepa_ray.databases import OPTUNA_TABLES, check_database, check_no_password, is_database_uri
from jepa_ray.errors import UsageError

logger = logging.getLogger(__name__)
RAY_LOGGING_LEVEL = logging.INFO
"""The level of Ray's own log lines in this driver (a sweep without --verbose raises it: Ray's
start-up notices are not for its user)."""
RAY_LOG_TO_DRIVER = True
"""Whether the workers' output reaches this driver's console (a sweep without --verbose turns it
off: a trial's failure reaches the user as one line through the outcome ledger, and the worker
logs stay in Ray's session directory)."""

SHARED_FS_ENV = "JEPA_RAY_SHARED_FS"
"""Set to 1 when a local-looking storage path is a shared mount (NFS, Lustre, EFS) that is
mounted at the same path on every node."""

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
"""Where `ray up` leaves the resolved cluster config on the head node."""

CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 3.0

TRACKING_SCHEMES = (
    "",
    "file",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "http",
    "https",
    "databricks",
    "databricks-uc",
    "uc",
)


def connect(address: str | None, *, num_cpus: int | None = None, runtime_env: dict | None = None) -> None:
    """Connect this driver to Ray (no-op when already connected).

    `address`: None connects to a running cluster when one is found ($RAY_ADDRESS, or one started
    on this machine with `ray start`) and starts a local instance otherwise; "local" always starts
    a local instance; "auto" requires a cluster on this machine; anything else ("HOST:PORT",
    "ray://HOST:PORT") is a cluster to connect to. `num_cpus` applies only to a local instance
    (a running cluster has its own resources). An address that does not answer raises ConfigError
    within seconds instead of letting `ray.init` retry for minutes.
    """
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        _start_local(num_cpus, runtime_env)
        return
    if address is None:
        env_address = os.environ.get("RAY_ADDRESS", "").strip()
        if env_address:
            _connect_to(env_address, runtime_env, source="RAY_ADDRESS", num_cpus=num_cpus)
            return
        found = _running_cluster_address()
        if found is not None and _reachable(found):
            _connect_auto(runtime_env)
            return
        if found is not None:
            logger.warning(
                "the last Ray cluster started on this machine (%s) does not answer; starting a local instance", found
            )
        _start_local(num_cpus, runtime_env)
        return
    if address == "auto":
        found = _running_cluster_address()
        if found is None or not _reachable(found):
            raise UsageError(
                "--address auto: no running Ray cluster found on this machine; start one "
                "(`ray start --head`, `ray up cluster.yaml`), pass its HOST:PORT, or leave out "
                "--address to run locally"
            )
        _connect_auto(runtime_env)
        return
    _connect_to(address, runtime_env, source="--address", num_cpus=num_cpus)
    if num_cpus is not None:
        logger.info("num_cpus=%s ignored: connected to an existing cluster", num_cpus)


def _start_local(num_cpus: int | None, runtime_env: dict | None) -> None:
    import ray

    reaper.start()  # the instance's agents would outlive a driver killed with SIGKILL
    ray.init(
        address="local",
        num_cpus=num_cpus,
        runtime_env=runtime_env,
        logging_level=RAY_LOGGING_LEVEL,
        log_to_driver=RAY_LOG_TO_DRIVER,
    )
    cpus = int(ray.cluster_resources().get("CPU", 0))
    logger.info("started a local Ray instance with %d CPUs (this process's own; it ends with it)", cpus)


def _connect_auto(runtime_env: dict | None) -> None:
    import ray

    # "auto" (not the resolved HOST:PORT) so that Ray picks up ~/.ray/auth_token for a cluster
    # started with token authentication: Ray does so only for automatically found clusters.
    ray.init(address="auto", runtime_env=runtime_env, logging_level=RAY_LOGGING_LEVEL, log_to_driver=RAY_LOG_TO_DRIVER)
    _log_joined(ray.get_runtime_context().gcs_address)


def _log_joined(address: str) -> None:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 0))
    logger.info("joined the Ray cluster at %s (%d CPUs, %d nodes)", address, cpus, node_count())


def _connect_to(address: str, runtime_env: dict | None, *, source: str, num_cpus: int | None = None) -> None:
    import ray

    if address in ("auto", "local"):  # RAY_ADDRESS=local keeps the local instance's CPU count
        connect(address, num_cpus=num_cpus, runtime_env=runtime_env)
        return
    try:
        host, port = parse_address(address)
    except ValueError as err:
        raise UsageError(f"{source} {address!r}: {err}") from None
    if not _reachable(f"{host}:{port}"):
        raise UsageError(
            f"{source} {address!r}: Ray cluster unreachable (no answer on {host}:{port} within "
            f"{CONNECT_TIMEOUT_S:g} s); start it (`ray up cluster.yaml`, `ray start --head`), check "
            "the address and port (6379 by default), or leave out --address to run locally"
        )
    ray.init(address=address, runtime_env=runtime_env, logging_level=RAY_LOGGING_LEVEL, log_to_driver=RAY_LOG_TO_DRIVER)
    _log_joined(address)


def parse_address(address: str) -> tuple[str, int]:
    """("HOST", PORT) of "HOST:PORT", "ray://HOST:PORT" or "[IPV6]:PORT"."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or 'local'")
    return host.strip("[]"), int(port)


def _running_cluster_address() -> str | None:
    """HOST:PORT of the cluster `ray start` last started on this machine for sharing, if any
    (not another driver's private local instance)."""
    return adapter.shared_cluster_address()


def _reachable(address: str) -> bool:
    """True when a TCP connection to the Ray GCS at HOST:PORT opens. Ray maps loopback names
    to this node's IP, so for loopback both are tried."""
    try:
        host, port = parse_address(address)
    except ValueError:
        return False
    candidates = [host]
    if host in ("localhost", "127.0.0.1", "::1"):
        try:
            candidates.append(adapter.node_ip_address())
        except Exception:  # a best-effort extra candidate; the loopback one stands alone
            pass
    for candidate in candidates:
        try:
            with socket.create_connection((candidate, port), timeout=CONNECT_TIMEOUT_S):
                return True
        except OSError:
            continue
    return False


def node_count() -> int:
    """The number of alive nodes of the connected Ray cluster."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def bootstrap_config(path: str | os.PathLike = BOOTSTRAP_CONFIG) -> dict | None:
    """The resolved launcher config `ray up` keeps on a head (~/ray_bootstrap_config.yaml), or
    None where this is no such head (or the file cannot be read)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None


def max_node_count(bootstrap: str | os.PathLike = BOOTSTRAP_CONFIG) -> int:
    """The most nodes the connected cluster can have: on a head launched by `ray up` (which
    keeps the resolved launcher config in ~/ray_bootstrap_config.yaml) 1 + its max_workers,
    else the alive nodes. An autoscaling cluster may be just its head when the sweep starts
    and have GPU workers a minute later, so checks about sharing must not count only the
    nodes alive now."""
    alive = node_count()
    config = bootstrap_config(bootstrap)
    return alive if config is None else max(alive, 1 + int(config.get("max_workers", 0)))


LAUNCHER_FILES = {"local": "cluster-onprem.yaml", "aws": "cluster.yaml"}  # Ray provider type -> our file


def attach_hint(bootstrap: str | os.PathLike = BOOTSTRAP_CONFIG) -> str:
    """`ray attach FILE -p 5000` with the repository's cluster file that launched this head (Ray
    keeps the provider in ~/ray_bootstrap_config.yaml); both files where this is no head."""
    provider = ((bootstrap_config(bootstrap) or {}).get("provider") or {}).get("type", "")
    name = LAUNCHER_FILES.get(provider, "cluster.yaml or cluster-onprem.yaml")
    return f"ray attach {name} -p 5000"


def is_local_path(path: str) -> bool:
    """True for a plain path or a file:// URI (as opposed to s3://, gs://, hdfs://, ...)."""
    scheme = urlsplit(path).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


def check_storage_path(storage_path: str, num_nodes: int) -> None:
    """Refuse a node-local Ray storage path on a cluster of several nodes.

    Since Ray 2.7 Ray Train and Tune do not sync checkpoints between nodes: every node must be
    able to read and write `storage_path`, so on more than one node it must be cloud storage
    (s3://, gs://, ...) or a shared filesystem. Set JEPA_RAY_SHARED_FS=1 when a local-looking
    path is such a shared mount (NFS, EFS, Lustre) at the same path on every node.
    """
    if not storage_path:
        raise UsageError("storage_path is empty; give a directory, s3://BUCKET/PREFIX or gs://...")
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if num_nodes == 1 or not is_local_path(storage_path):
        return
    if os.environ.get(SHARED_FS_ENV, "") == "1":
        return
    raise UsageError(
        f"storage_path {storage_path} is a local path but the cluster has {num_nodes} nodes; use "
        "s3://... or a shared filesystem path (NFS) mounted on every node, and pass "
        f"--storage-path (set {SHARED_FS_ENV}=1 if this path already is such a shared mount)"
    )


def check_tracking_uri(uri: str, *, multi_node: bool, existing: bool = False) -> None:
    """Refuse a tracking URI the driver cannot use: the one check of a tracking URI (the sweep
    and the Pareto export both call it).

    http(s):// must answer GET /health within a few seconds (an HTTP error below 500, such as
    401 from an authenticating proxy, is an answer). A database server (postgresql://, ...) must
    have its driver installed, accept a connection and not hold Optuna's tables. No URI may carry
    a password (the sweep prints it). A sqlite:// (or file) store is local to
    the driver's node; that is fine on a cluster too, because the sweep driver makes every
    MLflow write (trials on other nodes report to it through Ray and never open the store), so
    with `multi_node` it is only noted in the log. A sqlite file's directory must exist, and
    with `existing` (a reader) the file itself.
    """
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if len(scheme) == 1:  # a Windows drive letter: a plain path
        scheme = ""
    if scheme not in TRACKING_SCHEMES:
        allowed = "sqlite:///PATH, http(s)://HOST:PORT, postgresql://..., mysql://..., file:PATH"
        raise UsageError(f"tracking URI {uri}: unknown scheme '{scheme}'; allowed: {allowed}")
    check_no_password(uri, "tracking URI")
    if scheme in ("http", "https"):
        _check_http_tracking(uri)
    elif is_database_uri(uri):
        check_database(uri, "tracking URI", foreign=OPTUNA_TABLES, owner="MLflow")
    elif scheme == "sqlite":
        _check_sqlite_tracking(uri)
        path = sqlite_path(uri)
        if existing and (path is None or not path.is_file()):
            raise UsageError(f"tracking URI {uri}: database file {path} does not exist")
    if multi_node and scheme in ("", "file", "sqlite"):
        logger.info(
            "tracking URI %s is local to the driver's node; fine on a cluster because only the driver writes to MLflow",
            uri,
        )


def _check_http_tracking(uri: str) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S):
            return
    except urllib.error.HTTPError as err:
        if err.code < 500:  # it answered (401/403: an authenticating proxy or basic-auth app)
            return
        reason = f"HTTP {err.code} {err.reason}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = str(getattr(err, "reason", err))
    raise UsageError(
        f"tracking URI {uri} unreachable: {reason}; start the server "
        "(`python -m jepa_ray.serve_mlflow --daemon`) or forward its port "
        f"(`{attach_hint()}`)"
    )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other URIs and in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_sqlite_directory(uri: str, what: str) -> None:
    """ConfigError naming `what` when the directory of a sqlite URI's file does not exist."""
    path = sqlite_path(uri)
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{what} {uri}: directory {path.parent} does not exist; create it first")


def _check_sqlite_tracking(uri: str) -> None:
    if not uri.startswith("sqlite:///"):
        raise UsageError(f"tracking URI {uri}: expected sqlite:///RELATIVE/PATH or sqlite:////ABS/PATH")
    check_sqlite_directory(uri, "tracking URI")
