"""The MLflow tracking server of a cluster's head node: started bound to loopback, detached on
request, and known to answer before the caller goes on.

`python -m jepa_ray.serve_mlflow [--host 127.0.0.1] [--port 5000] [--backend-store-uri URI]
[--artifacts-destination PATH_OR_URI] [--workers N] [--daemon] [--check] [--stop]`

Why a wrapper around `mlflow server`:

- The server has no authentication: binding it to anything but loopback has to be a deliberate
  choice (`--allow-public`); users reach it through an SSH port-forward
  (`ray attach CLUSTER_FILE -p 5000`).
- Artifacts are always proxied (`--serve-artifacts`): clients upload through HTTP and only the
  server touches the store (a local directory, S3), so no other node needs the database file or
  credentials for the artifact store.
- `--daemon` detaches the server (pid and log files) and returns only once `/health` answers, so
  the head node's start commands can chain on it; starting it again while it answers is a no-op.
- `--stop-with-ray HOST:PORT` ties the server to the head's Ray: it stops once Ray's GCS there
  stops answering (`ray down` runs only `ray stop` on the head, and would leave it running).
- A database password never comes from the repository or the command line (where `ps` shows it):
  the backend URI is read from `MLFLOW_BACKEND_STORE_URI` when no `--backend-store-uri` is given,
  passwords come from `PGPASSWORD` / `~/.pgpass` otherwise, and the URI reaches `mlflow server`
  through its environment, not its arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from jepa_ray.cluster import attach_hint, check_sqlite_directory
from jepa_ray.databases import OPTUNA_TABLES, check_database, check_database_driver, is_database_uri, redact
from jepa_ray.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_BACKEND_STORE_URI = "sqlite:///mlflow.db"
BACKEND_URI_ENV = "MLFLOW_BACKEND_STORE_URI"
DEFAULT_PID_FILE = "mlflow-server.pid"
DEFAULT_LOG_FILE = "mlflow-server.log"


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_host(host: str, allow_public: bool) -> None:
    """Refuse a non-loopback bind address unless the caller allowed it explicitly."""
    if allow_public or is_loopback(host):
        return
    raise UsageError(
        f"--host {host}: refusing to bind the MLflow server (no authentication) to a non-loopback "
        f"address; use 127.0.0.1 with an SSH port-forward (`{attach_hint()}`), "
        "or pass --allow-public behind a firewall"
    )


def resolve_backend_store_uri(cli_value: str | None, environ: dict[str, str] | None = None) -> str:
    """The backend store URI: --backend-store-uri, else $MLFLOW_BACKEND_STORE_URI, else the
    DESIGN default `sqlite:///mlflow.db`. A password is accepted only from the environment; a
    database server's driver must be installed (checked here, before anything starts)."""
    environ = os.environ if environ is None else environ
    if cli_value:
        if urlsplit(cli_value).password is not None:
            raise UsageError(
                f"--backend-store-uri {redact(cli_value)}: do not put a password on the command "
                f"line; set PGPASSWORD (or ~/.pgpass), or pass the whole URI in ${BACKEND_URI_ENV}"
            )
        uri = cli_value
    else:
        uri = environ.get(BACKEND_URI_ENV) or DEFAULT_BACKEND_STORE_URI
    check_sqlite_directory(uri, "--backend-store-uri")
    if is_database_uri(uri):
        check_database_driver(uri, "--backend-store-uri")
    return uri


def health_url(host: str, port: int) -> str:
    """The URL of the server's /health endpoint as a local client reaches it."""
    bare = host.strip("[]")
    if bare in ("0.0.0.0", ""):
        bare = "127.0.0.1"
    elif bare == "::":
        bare = "::1"
    if ":" in bare:
        bare = f"[{bare}]"
    return f"http://{bare}:{port}/health"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers 200 within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_free(host: str, port: int) -> bool:
    """True when `port` can be bound on `host` (so the server will not fail on it)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def server_command(host: str, port: int, artifacts_destination: str | None, workers: int | None) -> list[str]:
    """The `mlflow server` command line (the backend URI travels in the environment)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--serve-artifacts"]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    if workers:
        cmd += ["--workers", str(workers)]
    return cmd


def server_env(backend_store_uri: str) -> dict[str, str]:
    """This process's environment with the backend URI set for `mlflow server` to read."""
    env = dict(os.environ)
    env[BACKEND_URI_ENV] = backend_store_uri
    # MLflow 3's server starts a job runner and 7 Huey consumers (each a full process) for GenAI
    # jobs a sweep never submits; a head running 128 trials' worth of driver ran out of memory
    # with them. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings them back.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` if that process still runs `mlflow`, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"mlflow" not in cmdline.read_bytes():
        return None  # the pid was reused by an unrelated process
    return pid


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Block until `url` answers; raise RuntimeError if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(url, timeout=1.0):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode} before {url} answered")
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {url} within {timeout:g} s")


def start_daemon(cmd: list[str], env: dict[str, str], pid_file: Path, log_file: Path, url: str, timeout: float) -> int:
    """Start the server detached (own session, output to `log_file`), record its pid and wait
    until `url` answers. On failure the server's process group is stopped and the log tail is
    part of the error."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{process.pid}\n")
    try:
        wait_healthy(url, timeout, process)
    except RuntimeError as err:
        _stop_group(process.pid, grace=5.0)
        pid_file.unlink(missing_ok=True)
        raise RuntimeError(f"{err}; last lines of {log_file}:\n{_tail(log_file)}") from None
    return process.pid


def stop_daemon(pid_file: Path, grace: float = 10.0) -> bool:
    """Stop the server recorded in `pid_file` (its whole process group); False if none ran."""
    pid = read_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    _stop_group(pid, grace)
    return True


def _stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group led by `pgid`, SIGKILL it after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.waitpid(pgid, os.WNOHANG)  # reap it when it is our own child
        except ChildProcessError:
            pass
        if not group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` runs. Zombies do not count: once the launcher has
    exited, the server's parent is PID 1, which in containers often never reaps them."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # Fields after the parenthesised command name: state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def parse_ray_address(address: str) -> tuple[str, int]:
    """HOST:PORT of `--stop-with-ray` as (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--stop-with-ray {address!r}: allowed HOST:PORT, e.g. 127.0.0.1:6379")
    return host.strip("[]"), int(port)


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def supervise(cmd: list[str], env: dict[str, str], ray: tuple[str, int], interval: float = 2.0, misses: int = 3) -> int:
    """Run the server until it exits, or stop it once Ray at `ray` has refused `misses` probes in
    a row. Returns the server's exit status (0 when Ray's end stopped it)."""
    server = subprocess.Popen(cmd, env=env)
    if threading.current_thread() is threading.main_thread():  # a lone SIGTERM reaches the server too
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    down = 0
    while server.poll() is None:
        time.sleep(interval)
        down = 0 if answers(*ray) else down + 1
        if down >= misses and server.poll() is None:
            print(f"Ray at {ray[0]}:{ray[1]} stopped answering; stopping the MLflow server", flush=True)
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
            return 0
    return server.returncode


def supervisor_command(args: argparse.Namespace) -> list[str]:
    """This module's command line that runs the server under `supervise` in the foreground (the
    backend URI travels in the environment, as for the server)."""
    cmd = [sys.executable, "-m", "jepa_ray.serve_mlflow", "--host", args.host, "--port", str(args.port)]
    cmd += ["--stop-with-ray", args.stop_with_ray] + (["--allow-public"] if args.allow_public else [])
    cmd += ["--artifacts-destination", args.artifacts_destination] if args.artifacts_destination else []
    return cmd + (["--workers", str(args.workers)] if args.workers else [])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jepa_ray.serve_mlflow",
        description="Start the MLflow tracking server bound to loopback (reach it through an SSH "
        "port-forward), with proxied artifacts.",
    )
    p.add_argument(
        "--host", default=DEFAULT_HOST, help="bind address (default 127.0.0.1); non-loopback needs --allow-public"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 5000)")
    p.add_argument(
        "--backend-store-uri",
        default=None,
        help=f"sqlite:///PATH or postgresql://USER@HOST/DB (default: ${BACKEND_URI_ENV}, "
        f"else {DEFAULT_BACKEND_STORE_URI}); passwords only via PGPASSWORD/~/.pgpass "
        f"or ${BACKEND_URI_ENV}",
    )
    p.add_argument(
        "--artifacts-destination",
        default=None,
        help="where proxied artifacts are stored: a directory or s3://BUCKET/PREFIX (default: mlflow's ./mlartifacts)",
    )
    p.add_argument("--workers", type=int, default=None, help="server worker processes (mlflow default: 4)")
    p.add_argument(
        "--allow-public", action="store_true", help="allow a non-loopback --host (the server has no authentication)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--daemon",
        action="store_true",
        help="start detached and return once /health answers (no-op if it already does)",
    )
    mode.add_argument(
        "--check", action="store_true", help="only report whether a server answers at --host/--port (exit 0 yes, 1 no)"
    )
    mode.add_argument("--stop", action="store_true", help="stop the server recorded in --pid-file")
    p.add_argument(
        "--stop-with-ray",
        metavar="HOST:PORT",
        default=None,
        help="stop the server once the Ray head's GCS at HOST:PORT stops answering (so `ray down` stops it)",
    )
    p.add_argument("--pid-file", type=Path, default=Path(DEFAULT_PID_FILE), help="daemon pid file")
    p.add_argument("--log-file", type=Path, default=Path(DEFAULT_LOG_FILE), help="daemon log file")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds --daemon waits for /health (default 120)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = health_url(args.host, args.port)
    if args.check:
        healthy = is_healthy(url)
        print(f"MLflow server at {url}: {'healthy' if healthy else 'not answering'}")
        return 0 if healthy else 1
    if args.stop:
        stopped = stop_daemon(args.pid_file)
        print(f"MLflow server {'stopped' if stopped else 'was not running'} ({args.pid_file})")
        return 0
    try:
        if not 0 < args.port < 65536:
            raise UsageError(f"--port {args.port}: allowed 1-65535")
        check_host(args.host, args.allow_public)
        backend = resolve_backend_store_uri(args.backend_store_uri)
        ray = parse_ray_address(args.stop_with_ray) if args.stop_with_ray else None
        if ray and not answers(*ray):
            raise UsageError(
                f"--stop-with-ray {args.stop_with_ray}: nothing answers there; allowed: a running Ray head"
            )
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if is_healthy(url):
        if args.daemon:
            print(f"MLflow server already answers at {url}; not starting another")
            return 0
        print(f"error: an MLflow server already answers at {url}", file=sys.stderr)
        return 1
    try:  # one line now, not the server's traceback after --timeout (a running server: no-op above)
        if is_database_uri(backend):
            check_database(backend, "--backend-store-uri", foreign=OPTUNA_TABLES, owner="MLflow")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not port_free(args.host, args.port):
        print(
            f"error: port {args.port} on {args.host} is in use by something that is not an "
            "MLflow server; choose another --port",
            file=sys.stderr,
        )
        return 1
    cmd = server_command(args.host, args.port, args.artifacts_destination, args.workers)
    env = server_env(backend)
    where = f"backend {redact(backend)}, artifacts {args.artifacts_destination or './mlartifacts'}"
    if not args.daemon:
        print(f"MLflow server on http://{args.host}:{args.port} ({where})", flush=True)
        if ray:
            return supervise(cmd, env, ray)
        os.execve(cmd[0], cmd, env)
    if ray:
        cmd = supervisor_command(args)
        where += f", stops with Ray at {args.stop_with_ray}"
    try:
        pid = start_daemon(cmd, env, args.pid_file, args.log_file, url, args.timeout)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"MLflow server pid {pid} answers at {url} ({where}); log {args.log_file}, "
        f"stop with: python -m jepa_ray.serve_mlflow --stop --pid-file {args.pid_file}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
