"""A throwaway PostgreSQL server for the tests and benchmarks that need a real database (MLflow's
tracking server and Optuna's storage as on a cluster): Debian's `postgresql` binaries, a data
directory and socket directory in a temporary directory, loopback only, trust authentication,
on a free TCP port that a restart keeps. Importable from benchmarks/ (like syne_moasha.py):

    from postgres import PostgresServer, unavailable

    why = unavailable()                  # None, or one line saying what is missing
    with PostgresServer() as pg:         # initdb + start; stop and delete on exit
        url = pg.create_database("mlflow")   # postgresql://postgres@127.0.0.1:PORT/mlflow
        pg.kill()                        # SIGKILL the postmaster and every backend (a crash)
        pg.restart()                     # start again on the same data and port (crash recovery)
        pg.query("mlflow", "SELECT count(*) FROM runs")

PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user (the
Debian package's), which owns the temporary directory; as any other user it runs as that user.
`python benchmarks/postgres.py` starts one and prints its URL until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUPERUSER = "postgres"
"""The database superuser initdb creates (the URLs' user), whoever runs the server."""
SYSTEM_USER = "postgres"
"""The system user the server runs as when this process is root (Debian's package creates it)."""
BINARIES = ("initdb", "postgres")


def bin_dir() -> Path | None:
    """The directory of PostgreSQL's server binaries: initdb on PATH, else the newest Debian
    /usr/lib/postgresql/N/bin; None where neither is installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(Path(p).parent.name))
    for candidate in reversed(versions):
        if all((Path(candidate) / b).is_file() for b in BINARIES):
            return Path(candidate)
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def run_as() -> str | None:
    """The system user the server must run as: `postgres` when this process is root (PostgreSQL
    refuses root), else None (this process's own user)."""
    return SYSTEM_USER if os.geteuid() == 0 else None


def unavailable() -> str | None:
    """Why no server can be started here, in one line (None: it can)."""
    if bin_dir() is None:
        return "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): apt install postgresql"
    user = run_as()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"running as root and there is no '{user}' system user to run PostgreSQL as (it refuses root)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver is missing: pip install 'psycopg[binary]' (or pip install -e '.[postgres]')"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary directory of its own (`root`): start(), kill(),
    restart(), stop(), url(database), create_database(name), query(database, sql). It runs with
    fsync off: kill() is a process crash, not a power loss, so the OS keeps every write that
    PostgreSQL made, and a test or benchmark does not wait on the disk."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 60.0):
        why = unavailable()
        if why is not None:
            raise RuntimeError(why)
        self.bin = bin_dir()
        self.user = run_as()
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.root = Path(tempfile.mkdtemp(prefix="jepa_ray_pg_"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None
        if self.user is not None:  # the server's user must own its directory (mkdtemp: 0700, root's)
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of `database` (no password: the server trusts loopback)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Create the cluster on the first start, start the server and wait until it takes
        connections. After kill(), PostgreSQL recovers from its write-ahead log."""
        if self.process is not None and self.process.poll() is None:
            return
        if not (self.data / "PG_VERSION").exists():
            self._run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust"]
                + ["-E", "UTF8", "--locale=C", "--no-sync"]
            )
        cmd = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root)]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "fsync=off"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                cmd, user=self.user, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def _run(self, cmd: list[str]) -> None:
        out = subprocess.run(cmd, user=self.user, cwd=self.root, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({out.returncode}): {out.stderr.strip()[-500:]}")

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace").splitlines()[-10:]
                    raise RuntimeError(
                        f"PostgreSQL did not start on port {self.port} ({err}); log:\n" + "\n".join(tail)
                    ) from None
                time.sleep(0.2)

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...) now."""
        if self.process is None or self.process.poll() is not None:
            return []
        return [self.process.pid] + _children(self.process.pid)

    def kill(self) -> None:
        """SIGKILL the postmaster and every process of the server at once (a crash: no
        shutdown checkpoint, open transactions lost), and wait until they are gone."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
        _wait_gone(pids)

    def restart(self) -> None:
        """Start again after kill() or stop(), on the same data directory and port."""
        self.start()

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, a checkpoint written), then delete its directory."""
        if self.process is not None and self.process.poll() is None:
            pids = self.pids()
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
            _wait_gone(pids)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` (a plain identifier); its URL."""
        if not name.isidentifier():
            raise ValueError(f"database name {name!r}: allowed: letters, digits and _")
        self._execute("postgres", f"CREATE DATABASE {name}", autocommit=True)
        return self.url(name)

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        """The rows of one SELECT on `database`."""
        return self._execute(database, sql, params)

    def _execute(self, database: str, sql: str, params: tuple = (), autocommit: bool = False) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), connect_timeout=5, autocommit=autocommit) as con:
            cur = con.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_gone(pids: list[int], timeout_s: float = 30.0) -> None:
    """Wait until none of `pids` is alive (a zombie counts as gone); RuntimeError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL processes {alive} still run {timeout_s:g} s after they were stopped")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def main() -> int:
    why = unavailable()
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 1
    with PostgresServer() as pg:
        print(f"PostgreSQL on {pg.url()} (data {pg.data}); Ctrl-C stops it and deletes the data", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
