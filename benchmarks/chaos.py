"""Faults injected into a busy sweep: a replayed sweep (the real driver, searcher, MOASHA
scheduler, MLflow tracking server and Optuna study over synthetic curves that sleep their epochs)
run as a user runs it, on this benchmark's own Ray instance, while faults drawn from a seed hit
it at random points of its progress, one at a time:

- `trial_actor`: kill -9 of a Ray worker process running a trial (Tune tries the trial again);
- `ray_worker`: kill -9 of any worker process of the sweep's Ray instance (idle ones included);
- `tracking_server`: kill -9 of the MLflow tracking server and its workers, restarted on its
  port after 0-5 s (within the writer's `--tracking-patience`: the sweep goes on);
- `tracking_outage`: the server killed and kept down until the writer's patience is spent and
  the driver stops (exit 1); then the server restarted and the sweep `--resume`d (the trials the
  scheduler pruned meanwhile must get their MLflow runs, with their epochs, from `--resume`);
- `driver`: kill -9 of the sweep's driver, then the same command with `--resume`;
- `database` (with `--store postgres`): kill -9 of the PostgreSQL server under MLflow's tracking
  server and Optuna's study, restarted after 0-5 s (the writer and the searcher wait for it).

Each kind is one entry of FAULTS. Per run:
the faults injected and survived (a trial ended after it, or the sweep ended well), trials lost
(asked for, and not ended COMPLETE or PRUNED in Optuna with their MLflow run ended), epochs
logged twice, Optuna trials left RUNNING, and the seconds from each fault to the next trial end.

    python benchmarks/chaos.py                  # 200 trials x 10 epochs, 16 at a time, 22 faults
    python benchmarks/chaos.py --trials 24 --concurrency 4 --epochs 4 --faults driver=1   # small
    python benchmarks/chaos.py --store postgres # the same on PostgreSQL, 3 database faults more

One JSON line per figure (docs/design.md format). Run it alone (`flock /tmp/ray-heavy.lock` on
a shared machine): it is the machine's whole CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from postgres import PostgresServer, unavailable  # noqa: E402 (benchmarks/)
from scale import SYNTHETIC_EPOCH_S, check_records, start_tracking_server, synthetic_table  # noqa: E402 (benchmarks/)

EXPERIMENT = "chaos"
RECOVERY_S = 600.0
"""Seconds a fault's sweep gets to end a trial again before the fault counts as not survived."""
ENDED_STATES = ("COMPLETE", "PRUNED")
SERVER_START_S = 300.0
"""Seconds a (re)started tracking server gets to answer (about 20 s on a quiet 2-core machine)."""
MAX_UNPLANNED_EXITS = 3
"""Drivers that may end badly unasked (each then --resumed) before the benchmark gives up."""
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
"""The raylet's agents, titled like its workers: killing one ends the raylet (its node), which is
another fault than a worker's."""


def emit(case: str, metric: str, value, **extra) -> None:
    row = {"bench": "chaos", "case": case, "metric": metric, "value": value, "device": "cpu", **extra}
    print(json.dumps(row), flush=True)


@dataclass
class Target:
    """The sweep under fire: its driver command, its tracking server, its Optuna study and the
    Ray instance (raylet) its trials run on; which processes are its, and how many trials ended."""

    work: Path
    command: list[str]
    env: dict[str, str]
    backend_uri: str
    port: int
    optuna_url: str
    raylet: int
    server: subprocess.Popen | None = None
    uri: str = ""
    driver: subprocess.Popen | None = None
    exits: list[int] = field(default_factory=list)  # exit codes of the drivers that ended
    unplanned_exits: list[int] = field(default_factory=list)  # ... that no fault asked for
    _ended: int = 0
    end_times: list[float] = field(default_factory=list)  # time.monotonic() of each trial end seen
    _counted: set[int] = field(default_factory=set)  # drivers whose exit is in `exits`
    _engine: object = None
    database: PostgresServer | None = None  # the PostgreSQL server under MLflow and Optuna, if any

    def start_server(self) -> None:
        """The tracking server on its port (the same store), once it answers."""
        self.server, self.uri = start_tracking_server(self.work, self.port, self.backend_uri, SERVER_START_S)

    def kill_server(self) -> None:
        """kill -9 of the server and its workers (its own session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait()

    def start_driver(self, resume: bool) -> None:
        """The sweep's command (with --resume), its output in WORK/driver-N.log."""
        log = (self.work / f"driver-{len(self.exits)}.log").open("w")
        argv = self.command + (["--resume"] if resume else [])
        self.driver = subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_driver(self, timeout: float | None = None) -> int:
        """The driver's exit code, once it ended (kept in `exits`, once per driver)."""
        code = self.driver.wait(timeout=timeout)
        if self.driver.pid not in self._counted:
            self._counted.add(self.driver.pid)
            self.exits.append(code)
        return code

    def driver_ended(self) -> bool:
        """True once the driver ended well; one that ended badly unasked is noted and --resumed."""
        if self.driver.poll() is None:
            return False
        code = self.wait_driver()
        if code == 0:
            return True
        self.unplanned_exits.append(code)
        if len(self.unplanned_exits) > MAX_UNPLANNED_EXITS:
            raise SystemExit(f"the sweep's driver ended badly {len(self.unplanned_exits)} times: see {self.work}")
        self.start_driver(resume=True)
        return False

    def ended(self) -> int:
        """Trials the Optuna study holds COMPLETE or PRUNED (the driver tells Optuna at once,
        whatever MLflow's state): the benchmark's clock, as `watch_ends` last read it."""
        return self._ended

    def watch_ends(self, stop: threading.Event, every_s: float = 0.1) -> None:
        """Read the study until `stop` (in a thread of its own): when each trial end was first
        seen, whatever the main thread waits for (a fault blocked on the server's restart)."""
        while not stop.is_set():
            now = self.count(ENDED_STATES, self._ended)
            self.end_times.extend([time.monotonic()] * max(0, now - self._ended))
            self._ended = max(self._ended, now)
            stop.wait(every_s)

    def count(self, states: tuple[str, ...], last: int = 0) -> int:
        """Trials the Optuna study holds in `states` (`last` while the study is busy)."""
        import sqlalchemy

        listed = ", ".join(f"'{s}'" for s in states)
        try:
            self._engine = self._engine or sqlalchemy.create_engine(self.optuna_url)
            with self._engine.connect() as con:
                return con.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM trials WHERE state IN ({listed})")).scalar()
        except sqlalchemy.exc.SQLAlchemyError:  # not created yet, or locked for a moment
            return last

    def workers(self, title: str) -> list[int]:
        """PIDs of this Ray instance's worker processes whose title starts with `title` (never
        its agents): each names its raylet in RAY_RAYLET_PID, so never another Ray instance's
        on this machine."""
        mine = f"RAY_RAYLET_PID={self.raylet}".encode()
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                name = cmdline.read_bytes()
                if not name.startswith(title.encode()) or name.startswith(tuple(a.encode() for a in AGENTS)):
                    continue
                if mine in (cmdline.parent / "environ").read_bytes().split(b"\0"):
                    pids.append(int(cmdline.parent.name))
            except OSError:
                continue
        return pids


@dataclass(frozen=True)
class Done:
    """What a fault did (one line), and how many trials the scheduler pruned while the tracking
    server was down (those --resume must give their MLflow runs)."""

    detail: str
    pruned_while_down: int = 0


NONE_TO_KILL = Done("none to kill")


def kill_worker(target: Target, rng: random.Random, title: str) -> Done:
    """kill -9 of a random worker process titled `title` (waiting up to 10 s for one)."""
    deadline = time.monotonic() + 10
    while not (pids := target.workers(title)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not pids:
        return NONE_TO_KILL
    pid = rng.choice(sorted(pids))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return Done(f"killed {title} {pid} (of {len(pids)})")


def kill_trial_actor(target: Target, rng: random.Random) -> Done:
    return kill_worker(target, rng, "ray::ImplicitFunc")


def kill_ray_worker(target: Target, rng: random.Random) -> Done:
    return kill_worker(target, rng, "ray::")


def restart_tracking_server(target: Target, rng: random.Random) -> Done:
    """The server killed, down 0-5 s, restarted: the writer's retries carry the sweep over."""
    down = rng.uniform(0, 5)
    start = time.monotonic()
    target.kill_server()
    time.sleep(down)
    target.start_server()
    return Done(f"server down {time.monotonic() - start:.1f} s (restarted after {down:.1f} s)")


def restart_database(target: Target, rng: random.Random) -> Done:
    """The PostgreSQL server under MLflow's tracking server and Optuna's study killed, down 0-5 s,
    restarted on the same data: the writer's and the searcher's retries carry the sweep over."""
    down = rng.uniform(0, 5)
    start = time.monotonic()
    target.database.kill()
    time.sleep(down)
    target.database.restart()
    return Done(f"database down {time.monotonic() - start:.1f} s (restarted after {down:.1f} s)")


def tracking_outage(target: Target, rng: random.Random) -> Done:
    """The server killed and kept down until the driver gives up on MLflow; then restarted and
    the sweep resumed (what MLflow missed meanwhile is recorded by --resume). Says how many
    trials the scheduler pruned while the server was down."""
    start, pruned = time.monotonic(), target.count(("PRUNED",))
    target.kill_server()
    code = target.wait_driver(timeout=RECOVERY_S)
    stopped = time.monotonic() - start
    pruned = target.count(("PRUNED",)) - pruned
    target.start_server()
    target.start_driver(resume=True)
    down = time.monotonic() - start
    return Done(f"driver stopped after {stopped:.0f} s (exit {code}); server down {down:.0f} s", pruned)


def kill_driver(target: Target, rng: random.Random) -> Done:
    """kill -9 of the driver, then the same command with --resume."""
    target.driver.kill()
    code = target.wait_driver()
    target.start_driver(resume=True)
    return Done(f"driver killed (exit {code}), resumed")


FAULTS: dict[str, Callable[[Target, random.Random], Done]] = {
    "trial_actor": kill_trial_actor,
    "ray_worker": kill_ray_worker,
    "tracking_server": restart_tracking_server,
    "tracking_outage": tracking_outage,
    "driver": kill_driver,
    "database": restart_database,
}
"""Every fault kind: inject it into the running sweep and say what was done."""
DEFAULT_FAULTS = "trial_actor=7,ray_worker=5,tracking_server=5,driver=4,tracking_outage=1"
DATABASE_FAULTS = "database=3"
"""Added to the default faults with --store postgres."""
STORES = ("sqlite", "postgres")


@dataclass(frozen=True)
class Planned:
    """A fault to inject once `at_ended` trials ended, `delay_s` seconds later."""

    kind: str
    at_ended: int
    delay_s: float


@dataclass
class Injected:
    """A fault as it happened: what was done, and the seconds to the next trial end (None: none
    within RECOVERY_S)."""

    kind: str
    done: Done
    to_next_end_s: float | None
    survived: bool


def parse_faults(spec: str, store: str = "postgres") -> dict[str, int]:
    """`kind=count,...` -> {kind: count}; SystemExit (exit 2, one line) on a kind not in FAULTS,
    or a database fault without a database server (`store` sqlite)."""
    counts: dict[str, int] = {}
    for item in filter(None, spec.split(",")):
        kind, _, count = item.partition("=")
        if kind not in FAULTS or not count.isdigit():
            print(f"error: --faults {item}: allowed: KIND=COUNT, KIND one of {', '.join(FAULTS)}", file=sys.stderr)
            raise SystemExit(2)
        if kind == "database" and store != "postgres":
            print(f"error: --faults {item}: a database fault needs --store postgres", file=sys.stderr)
            raise SystemExit(2)
        counts[kind] = counts.get(kind, 0) + int(count)
    return counts


def draw_schedule(counts: dict[str, int], trials: int, seed: int) -> list[Planned]:
    """The faults in a random order, each at a random point of the sweep's progress (between 5%
    and 60% of its trials ended: faults queue up behind a resumed driver, and the sweep must
    not end before the last) plus 0-3 s: the same for the same seed, whatever the machine."""
    rng = random.Random(seed)
    kinds = [k for k, n in sorted(counts.items()) for _ in range(n)]
    rng.shuffle(kinds)
    points = sorted(rng.randint(max(1, trials // 20), max(1, trials * 3 // 5)) for _ in kinds)
    return [Planned(kind, at, round(rng.uniform(0, 3), 2)) for kind, at in zip(kinds, points)]


def next_end(target: Target, start: float, timeout: float) -> float | None:
    """Seconds from `start` to the first trial end seen after it (None when the driver ended
    well first, or after `timeout`); a driver that ended badly unasked is resumed meanwhile."""
    while time.monotonic() - start < timeout:
        later = [t for t in target.end_times if t > start]
        if later:
            return later[0] - start
        if target.driver_ended():
            return None
        time.sleep(0.1)
    return None


def inject_all(target: Target, schedule: list[Planned], rng: random.Random) -> Iterator[Injected]:
    """Inject the planned faults one at a time: each once its point of progress is reached and
    the previous one's sweep ended a trial again; stops early when the sweep ends."""
    for planned in schedule:
        while target.ended() < planned.at_ended:
            if target.driver_ended():
                return
            time.sleep(0.1)
        time.sleep(planned.delay_s)
        if target.driver_ended():
            return
        start = time.monotonic()
        done = FAULTS[planned.kind](target, rng)
        if done == NONE_TO_KILL:
            continue
        to_next = next_end(target, start, RECOVERY_S)
        survived = to_next is not None or (target.exits[-1:] == [0] and target.driver.poll() == 0)
        yield Injected(planned.kind, done, None if to_next is None else round(to_next, 2), survived)


def own_raylet() -> int:
    """The raylet of the Ray instance this process started (a child of this process)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text.split("(", 1)[1].rsplit(")", 1)[0], text.rsplit(")", 1)[1].split()
        if name == "raylet" and int(fields[1]) == os.getpid():
            return int(stat.parent.name)
    raise SystemExit("no raylet below this process: did ray.init start a local instance?")


def driver_command(args: argparse.Namespace, table: Path, work: Path, address: str, optuna_url: str) -> list[str]:
    """The sweep as a user runs it on a cluster with a tracking server (--resume added later)."""
    cmd = [sys.executable, str(ROOT / "sweeps" / "rectified.py"), "--replay", str(table), "--address", address]
    cmd += ["--num-samples", str(args.trials), "--max-concurrent", str(args.concurrency)]
    cmd += ["--sampler", "random", "--seed", str(args.seed), "--name", "chaos", "--experiment", EXPERIMENT]
    cmd += ["--tracking-uri", f"http://127.0.0.1:{args.port}", "--optuna-storage", optuna_url]
    cmd += ["--storage-path", str(work / "ray"), "--replay-speed", str(SYNTHETIC_EPOCH_S / args.epoch_s)]
    cmd += ["--scheduler", "moasha", "--scheduler-min-epochs", str(args.min_epochs)]
    cmd += ["--tracking-patience", str(args.patience), "--max-failed-trials", "0"]
    # Each kill of a trial's actor costs the trial one of Tune's tries, and the same trial may be
    # hit twice: tries enough that a trial fails only for a reason of its own.
    cmd += ["--set", f"max_failures={args.max_failures}"]
    return cmd


def report(args: argparse.Namespace, injected: list[Injected], target: Target, records: dict, wall_s: float) -> None:
    """The benchmark's JSON lines."""
    counts = parse_faults(args.faults)
    case = (
        f"{args.trials} trials x {args.epochs} epochs, {args.concurrency} at a time, "
        f"{sum(counts.values())} faults (seed {args.seed}), {args.store}"
    )
    by_kind = {
        k: [sum(i.kind == k for i in injected), sum(i.kind == k and i.survived for i in injected)] for k in counts
    }
    emit(
        case,
        "faults_injected",
        len(injected),
        planned=sum(counts.values()),
        survived=sum(i.survived for i in injected),
        by_kind_injected_survived=by_kind,
    )
    lost = args.trials - records["ended_with_run"]
    emit(
        case,
        "trials_lost",
        lost,
        goal=0,
        optuna_complete=records["optuna_complete"],
        optuna_pruned=records["optuna_pruned"],
        runs=records["runs"],
        duplicate_runs=records["duplicate_runs"],
        not_ended=records["not_ended"],
    )
    emit(
        case,
        "epochs_logged_twice",
        records["epochs_logged_twice"],
        goal=0,
        runs_with_repeated_epochs=records["runs_with_repeated_epochs"],
        ended_runs_missing_epochs=records["ended_runs_missing_epochs"],
    )
    emit(case, "optuna_trials_running", records["optuna_running"], goal=0, mlflow_runs_running=records["running"])
    for kind in counts:
        seconds = [i.to_next_end_s for i in injected if i.kind == kind and i.to_next_end_s is not None]
        if seconds:
            emit(
                f"{case}: {kind}",
                "s_to_next_trial_end",
                round(statistics.median(seconds), 2),
                max_s=max(seconds),
                each_s=seconds,
                injected=by_kind[kind][0],
            )
    pruned = sum(i.done.pruned_while_down for i in injected)
    emit(case, "trials_pruned_while_mlflow_was_down", pruned, lost_of_all_trials=lost)
    emit(case, "sweep_s", round(wall_s, 1), driver_exits=target.exits, unplanned_exits=target.unplanned_exits)


def run(args: argparse.Namespace, tmp: Path) -> None:
    import ray

    from jepa_ray import reaper

    reaper.start()  # this benchmark's Ray instance, server and drivers end with it, even killed
    work = tmp / "sweep"
    work.mkdir()
    table = synthetic_table(tmp / "synthetic.parquet", args.configs, args.epochs)
    ray.init(address="local", num_cpus=args.concurrency + 2, include_dashboard=False, log_to_driver=False)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    database = PostgresServer() if args.store == "postgres" else None
    if database is not None:
        database.start()
        backend_uri, optuna_url = database.create_database("mlflow"), database.create_database("optuna")
    else:
        backend_uri, optuna_url = f"sqlite:///{work}/mlflow.db", f"sqlite:///{work}/optuna.db"
    target = Target(
        work=work,
        command=driver_command(args, table, work, ray.get_runtime_context().gcs_address, optuna_url),
        env=env,
        backend_uri=backend_uri,
        port=args.port,
        optuna_url=optuna_url,
        raylet=own_raylet(),
        database=database,
    )
    schedule = draw_schedule(parse_faults(args.faults, args.store), args.trials, args.seed)
    start, stop = time.monotonic(), threading.Event()
    threading.Thread(target=target.watch_ends, args=(stop,), daemon=True).start()
    try:
        target.start_server()
        target.start_driver(resume=False)
        injected = []
        for fault in inject_all(target, schedule, random.Random(args.seed + 1)):
            print(f"# {fault.kind}: {fault.done.detail}; next trial end after {fault.to_next_end_s} s", file=sys.stderr)
            injected.append(fault)
        while not target.driver_ended():
            time.sleep(0.5)
        wall_s = time.monotonic() - start
        records = check_records(target.uri, target.optuna_url, args.trials, args.epochs, experiment=EXPERIMENT)
        report(args, injected, target, records, wall_s)
    finally:
        stop.set()
        if target.driver is not None and target.driver.poll() is None:
            target.driver.kill()
        if target.server is not None:
            target.kill_server()
        if database is not None:
            database.stop()
        ray.shutdown()
        if args.keep:
            print(f"# kept: {work}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--configs", type=int, default=100, help="distinct configurations in the synthetic table")
    p.add_argument(
        "--faults",
        help=f"KIND=COUNT,... of {', '.join(FAULTS)} (default {DEFAULT_FAULTS}, and {DATABASE_FAULTS} on postgres)",
    )
    p.add_argument(
        "--store",
        choices=STORES,
        default="sqlite",
        help="MLflow's tracking server and Optuna on sqlite files, or both on one PostgreSQL server",
    )
    p.add_argument("--seed", type=int, default=0, help="the faults' kinds, order and points; the sweep's sampler")
    p.add_argument("--epoch-s", type=float, default=2.0, help="seconds a replayed epoch sleeps")
    p.add_argument("--min-epochs", type=int, default=3, help="MOASHA's first rung (then x3)")
    p.add_argument("--patience", type=float, default=45.0, help="the driver's --tracking-patience (seconds)")
    p.add_argument("--max-failures", type=int, default=4, help="Tune's tries per trial (--set max_failures)")
    p.add_argument("--port", type=int, default=5977, help="the tracking server's port")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    args = p.parse_args()
    if args.faults is None:
        args.faults = DEFAULT_FAULTS + ("," + DATABASE_FAULTS if args.store == "postgres" else "")
    parse_faults(args.faults, args.store)
    if args.store == "postgres" and unavailable() is not None:
        print(f"error: --store postgres: no PostgreSQL server can start here: {unavailable()}", file=sys.stderr)
        raise SystemExit(2)
    if args.keep:
        run(args, Path(tempfile.mkdtemp(prefix="jepa_ray_chaos_")))
        return
    with tempfile.TemporaryDirectory(prefix="jepa_ray_chaos_") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
