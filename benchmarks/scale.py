"""The sweep driver at cluster scale, by simulation: the real driver (searcher, scheduler, ledger,
MLflow writer, progress) over replayed trials that report instantly, many at a time on
over-subscribed logical CPUs, so the driver carries a cluster's load on one machine.

Per case (trials x epochs, concurrent trials, MLflow on a sqlite store, a tracking server on a
sqlite store, or a tracking server on PostgreSQL with Optuna's study on the same server: STORES):
- results per second the driver sustains, against the same Tune run with no callbacks (ratio);
- per-result time the driver's callbacks spend on Tune's event loop (median, p99; a trial's end
  included) and the number of Ray "may be a performance bottleneck" warnings;
- driver RSS growth over the run;
- what MLflow and Optuna hold: every trial one run, every epoch exactly once, none RUNNING,
  every Optuna trial in its right state;
and, with --kill, a driver killed with SIGKILL at half its trials then `--resume`d: the seconds
until the resumed driver ends a trial and to its end, trials and epochs lost or duplicated.

    python benchmarks/scale.py                                   # 1,000 trials x 30 epochs, 64 at a time
    python benchmarks/scale.py --trials 1000 --concurrency 64,128 --stores sqlite,server --kill
    python benchmarks/scale.py --trials 1000 --concurrency 128 --stores server,postgres   # a cluster's database
    python benchmarks/scale.py --trials 40 --concurrency 4 --epochs 5   # quick
    python benchmarks/scale.py --trials 300 --epochs 10 --stores none --kill   # the kill case alone

Trials are synthetic curves in a curve table (the replay machinery serves any table). One JSON
line per figure (docs/design.md format). Run it alone: it is the machine's whole CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def emit(case: str, metric: str, value, **extra) -> None:
    row = {"bench": "scale", "case": case, "metric": metric, "value": value, "device": "cpu", **extra}
    print(json.dumps(row), flush=True)


SYNTHETIC_EPOCH_S = 0.01
"""The seconds each synthetic epoch records (a replayed sweep sleeps them / --replay-speed)."""


def synthetic_table(path: Path, configs: int, epochs: int) -> Path:
    """`configs` rows of smooth synthetic curves over a density x lambda grid (digits-sweep's
    config, `epochs` epochs), written as a curve table."""
    import numpy as np

    from jepa_ray import config as config_lib
    from jepa_ray.contract import TRAINING_REVISION
    from jepa_ray.curves.table import STATUS_FINISHED, CurveTable, Row, row_key

    rng = np.random.default_rng(0)
    rows = []
    densities = np.geomspace(0.01, 0.9, max(2, int(np.sqrt(configs))))
    lambdas = np.linspace(0.1, 0.9, max(2, -(-configs // len(densities))))
    for i in range(configs):
        params = {"target_density": round(float(densities[i % len(densities)]), 4)}
        params["lambd"] = round(float(lambdas[i // len(densities)]), 4)
        cfg = config_lib.build("digits-sweep", overrides={**params, "epochs": epochs})
        acc = 0.9 - 0.1 * np.exp(-params["target_density"] / 0.05) + rng.normal(0, 0.01)
        history = []
        for e in range(epochs):
            frac = (e + 1) / epochs
            history.append(
                {
                    "epoch": e,
                    "train/loss": 1.0 / (1 + e),
                    "train/invariance": 0.1,
                    "train/regularizer": 0.2,
                    "train/l0_density": params["target_density"] * (1 + 0.5 * (1 - frac)),
                    "train/rank_me": 50.0,
                    "online/linear_acc": acc * frac,
                    "online/linear_acc_z": acc * frac * 0.9,
                    "time/epoch_s": SYNTHETIC_EPOCH_S,
                    "time/epoch_wall_s": SYNTHETIC_EPOCH_S,
                    "data/train_images": 1437,
                    "data/test_images": 360,
                }
            )
        final = {**history[-1], "linear_acc": acc, "l0_density": params["target_density"], "knn_acc": acc}
        final.update({"target_l0_density": params["target_density"], "linear_acc_z": acc * 0.9, "rank_me": 50.0})
        rows.append(
            Row(
                key=row_key(params, 0),
                grid="synthetic",
                setting="",
                revision=TRAINING_REVISION,
                params=params,
                seed=0,
                status=STATUS_FINISHED,
                config=config_lib.to_dict(cfg),
                history=history,
                final=final,
                command="",
            )
        )
    return CurveTable(rows).write(path)


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def mem_available() -> int | None:
    """The machine's available memory in bytes (Linux /proc/meminfo; None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 where unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class CallbackTimer:
    """A Tune callback in front of the driver's: times every hook the driver's callbacks run on
    Tune's event loop (per result, and per trial end)."""

    def __init__(self, inner: list):
        from ray.tune import Callback

        timer = self

        class Timed(Callback):
            def on_trial_start(self, **kw):
                timer.time("start", inner, "on_trial_start", kw)

            def on_trial_result(self, **kw):
                timer.time("result", inner, "on_trial_result", kw)

            def on_trial_complete(self, **kw):
                timer.time("end", inner, "on_trial_complete", kw)

            def on_trial_error(self, **kw):
                timer.time("end", inner, "on_trial_error", kw)

            def on_step_end(self, **kw):
                timer.time("step", inner, "on_step_end", kw)

        self.callback = Timed()
        self.seconds: dict[str, list[float]] = {"start": [], "result": [], "end": [], "step": []}
        self.first = self.last = None
        self.rss_at_first_end: int | None = None

    def time(self, what: str, inner: list, hook: str, kw: dict) -> None:
        start = time.perf_counter()
        for cb in inner:
            getattr(cb, hook)(**kw)
        end = time.perf_counter()
        self.seconds[what].append(end - start)
        if what in ("start", "result", "end"):
            self.first = self.first or start
            self.last = end
        if what == "end" and self.rss_at_first_end is None:
            self.rss_at_first_end = rss_bytes()


class RssSampler:
    """The driver's RSS, and the CPU seconds of the MLflow writer process once it is known (its
    last reading before it exits)."""

    def __init__(self, every_s: float = 0.5):
        self.samples, self.stop = [], threading.Event()
        self.min_available = None  # the machine's MemAvailable, bytes (Linux)
        self.writer_pid: int | None = None
        self.writer_cpu_s = 0.0
        self.cpu_s = 0.0  # this process's, over a watched() block
        self.warnings: WarningCounter | None = None  # Ray's, over a watched() block
        threading.Thread(target=self._run, args=(every_s,), daemon=True).start()

    def _run(self, every_s: float) -> None:
        while not self.stop.is_set():
            self.samples.append(rss_bytes())
            available = mem_available()
            if available is not None:
                self.min_available = min(available, self.min_available or available)
            if self.writer_pid is not None:
                self.writer_cpu_s = max(self.writer_cpu_s, cpu_seconds(self.writer_pid))
            time.sleep(every_s)


class WarningCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.count, self.examples = 0, []

    def emit(self, record) -> None:
        message = record.getMessage()
        if "performance bottleneck" in message:
            self.count += 1
            if len(self.examples) < 3:
                self.examples.append(message[:160])


@contextlib.contextmanager
def watched():
    """What both runs measure in this process, the same way: RSS samples, Ray's bottleneck
    warnings and the CPU seconds spent inside the block (`watch.cpu_s`, set on exit)."""
    rss, warnings = RssSampler(), WarningCounter()
    logging.getLogger("ray.tune").addHandler(warnings)
    rss.warnings, start = warnings, cpu_seconds()
    try:
        yield rss
    finally:
        rss.cpu_s = cpu_seconds() - start
        rss.stop.set()
        logging.getLogger("ray.tune").removeHandler(warnings)


def bare_run(table: Path, trials: int, concurrency: int, optuna_url: str) -> dict:
    """The same Tune run with no callbacks but a time stamp (the replay trial, a random searcher):
    seconds from the first trial's start to the last result, results, this process's CPU seconds,
    RSS and Ray's bottleneck warnings over the run, measured as for the driver."""
    import optuna
    from ray import tune

    from jepa_ray import adapter
    from jepa_ray.replay.tables import Replay
    from jepa_ray.sweep.search import JepaOptunaSearch, storage_engine_kwargs

    adapter.set_ray_switches()  # what the driver sets: per-epoch results lack the objectives
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    replay = Replay.open(str(table), [])
    searcher = JepaOptunaSearch(  # the driver's searcher on the same RDB storage
        space=replay.space(0),
        metric=["linear_acc", "l0_density"],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=optuna.storages.RDBStorage(optuna_url, engine_kwargs=storage_engine_kwargs(optuna_url)),
        study_name="bare",
    )
    stamps: list[float] = []
    count = [0]
    at_first_end: list[int] = []

    class Stamp(tune.Callback):
        def on_trial_start(self, **kw):
            stamps.append(time.perf_counter())

        def on_trial_result(self, **kw):
            count[0] += 1
            stamps.append(time.perf_counter())

        def on_trial_complete(self, **kw):
            if not at_first_end:
                at_first_end.append(rss_bytes())

    tuner = tune.Tuner(
        tune.with_resources(replay.trainable(), {"CPU": 1}),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=trials, max_concurrent_trials=concurrency, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(table.parent / "bare"), verbose=0, callbacks=[Stamp()]),
    )
    with watched() as watch:
        tuner.fit()
    return {
        "seconds": stamps[-1] - stamps[0],
        "results": count[0],
        "cpu_s": watch.cpu_s,
        "rss": watch.samples,
        "rss_at_first_end": at_first_end[0] if at_first_end else watch.samples[0],
        "warnings": watch.warnings,
    }


def driver_run(table: Path, work: Path, trials: int, concurrency: int, uri: str, optuna_url: str) -> dict:
    """The real driver in this process, its callbacks timed."""
    from jepa_ray import sweep

    opts = sweep.SweepOptions(
        replay=str(table),
        num_samples=trials,
        max_concurrent=concurrency,
        sampler="random",
        seed=0,
        tracking_uri=uri,
        optuna_storage=optuna_url,
        storage_path=str(work / "ray"),
        experiment="scale",
        max_failed_trials=0,
        print_front=False,
    )
    plan = sweep.plan(opts)
    timers: list[CallbackTimer] = []
    start = time.perf_counter()
    with watched() as watch:

        def instrument(callbacks):
            timers.append(CallbackTimer(callbacks))
            writers = [cb.w for cb in callbacks if getattr(getattr(cb, "w", None), "process", False)]
            watch.writer_pid = writers[0]._worker.pid if writers else None
            return [timers[-1].callback]

        summary = sweep.execute(plan, wrap_callbacks=instrument)
    return {
        "summary": summary,
        "seconds": time.perf_counter() - start,
        "timer": timers[0],
        "rss": watch.samples,
        "min_available": watch.min_available,
        "warnings": watch.warnings,
        "cpu_s": watch.cpu_s,
        "writer_cpu_s": watch.writer_cpu_s,
    }


def check_records(uri: str, optuna_url: str, trials: int, epochs: int, experiment: str = "scale") -> dict:
    """What MLflow and Optuna hold after a sweep: runs, their statuses and epochs (each exactly
    once: a FINISHED run every epoch, a KILLED one, stopped by a scheduler, the epochs Optuna says
    it trained), and the Optuna trials' states; `ended_with_run`: the trials Optuna holds COMPLETE
    or PRUNED whose run (the run tagged with its number) ended too; `not_ended`: the others, and the
    Optuna trials with no run, each with its state and its run's status."""
    import optuna

    from jepa_ray import tracking
    from jepa_ray.contract import ATTR_EPOCHS

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = tracking.search_all_runs(c, [exp.experiment_id], "tags.`jepa_ray.role` = 'trial'")
    keys = [r.data.tags.get("jepa_ray.optuna_trial") for r in runs]  # a resumed trial keeps its run
    statuses = [r.info.status for r in runs]
    storage = optuna.storages.RDBStorage(optuna_url)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    trials_by_number = {str(t.number): t for t in study.get_trials()}
    states = [t.state.name for t in trials_by_number.values()]
    repeated = missing = twice = ended_with_run = 0
    not_ended: list[dict] = []  # what a lost trial looked like: its Optuna state and its run's status
    for r, key in zip(runs, keys):  # every run's history: each epoch exactly once
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train/loss"))
        repeated += steps != sorted(set(steps))
        twice += len(steps) - len(set(steps))
        trial = trials_by_number.get(key)
        trained = epochs if r.info.status == "FINISHED" else None
        if r.info.status == "KILLED" and trial is not None:
            trained = int(trial.user_attrs.get(ATTR_EPOCHS, -1))
        missing += trained is not None and set(steps) != set(range(trained))
        ended = trial is not None and trial.state.name in ("COMPLETE", "PRUNED")
        ended_with_run += ended and r.info.status != "RUNNING"
        if not (ended and r.info.status != "RUNNING"):
            not_ended.append({"trial": key, "optuna": trial.state.name if trial else None, "run": r.info.status})
    runless = [k for k in trials_by_number if k not in keys]
    not_ended += [{"trial": k, "optuna": trials_by_number[k].state.name, "run": None} for k in runless]
    return {
        "runs": len(runs),
        "finished_runs": statuses.count("FINISHED"),
        "killed_runs": statuses.count("KILLED"),
        "duplicate_runs": len(keys) - len(set(keys)),
        "running": statuses.count("RUNNING"),
        "runs_with_repeated_epochs": repeated,
        "epochs_logged_twice": twice,
        "ended_runs_missing_epochs": missing,
        "optuna_running": states.count("RUNNING"),
        "optuna_complete": states.count("COMPLETE"),
        "optuna_pruned": states.count("PRUNED"),
        "ended_with_run": ended_with_run,
        "not_ended": not_ended,
    }


def quantile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.quantile(values, q)) if values else 0.0


STORES = ("sqlite", "server", "postgres")
"""Where MLflow and Optuna keep the sweep: sqlite files the driver writes (sqlite); a tracking
server (serve_mlflow) on a sqlite file, Optuna's study in another (server); a tracking server on
PostgreSQL, Optuna's study in another database of the same server, as on a cluster (postgres)."""


@contextlib.contextmanager
def stores(store: str, work: Path, concurrency: int):
    """(tracking URI, Optuna URL of the driver's study, Optuna URL of the bare run's) of `store`,
    its servers started for the case and stopped after it."""
    if store == "sqlite":
        yield f"sqlite:///{work}/mlflow.db", f"sqlite:///{work}/optuna.db", f"sqlite:///{work}/bare.db"
        return
    with contextlib.ExitStack() as stack:
        if store == "postgres":
            from postgres import PostgresServer, unavailable

            why = unavailable()
            if why is not None:
                raise SystemExit(f"error: --stores postgres: {why}")
            pg = stack.enter_context(PostgresServer())
            backend, optuna_url, bare_url = (pg.create_database(n) for n in ("mlflow", "optuna", "bare"))
        else:
            backend, optuna_url, bare_url = (f"sqlite:///{work}/{n}.db" for n in ("mlflow", "optuna", "bare"))
        server = stack.enter_context(tracking_server(backend, work, port=5900 + concurrency % 97))
        yield server, optuna_url, bare_url


@contextlib.contextmanager
def tracking_server(backend: str, work: Path, port: int):
    """serve_mlflow (2 workers) on `backend` at 127.0.0.1:`port`; on an error inside the block,
    the server's state and its log's end on stderr (why it stopped answering)."""
    server, uri = start_tracking_server(work, port, backend)
    log = work / "server.log"
    try:
        yield uri
    except Exception:
        alive = "running" if server.poll() is None else f"exited {server.returncode}"
        tail = log.read_text(errors="replace").splitlines()[-40:]
        print(f"tracking server {alive}; its log's end:", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def run_case(table: Path, trials: int, epochs: int, concurrency: int, store: str, tmp: Path) -> None:
    work = tmp / f"{store}-{concurrency}"
    work.mkdir()
    with stores(store, work, concurrency) as (uri, optuna_url, bare_url):
        measure_case(table, trials, epochs, concurrency, store, work, uri, optuna_url, bare_url)


def measure_case(
    table: Path,
    trials: int,
    epochs: int,
    concurrency: int,
    store: str,
    work: Path,
    uri: str,
    optuna_url: str,
    bare_url: str,
) -> None:
    """Bare Tune, then the driver, on the same stores; every figure of the case."""
    case = f"{trials} trials x {epochs} epochs, {concurrency} at a time, MLflow {store}"
    bare = bare_run(table, trials, concurrency, bare_url)
    bare_results, bare_cpu_s = bare["results"], bare["cpu_s"]
    ours = driver_run(table, work, trials, concurrency, uri, optuna_url)
    timer = ours["timer"]
    results = len(timer.seconds["result"])
    rate, bare_rate = results / (timer.last - timer.first), bare_results / bare["seconds"]
    emit(case, "results_per_s", round(rate, 2), baseline=round(bare_rate, 2), ratio=round(rate / bare_rate, 3))
    # What the driver costs in CPU, whatever the machine: where the writer has a core of its
    # own (a cluster's head node), the loop's rate is bounded by the driver process's CPU per
    # result, and the writer keeps up while its CPU per result is below the interval.
    emit(
        f"{case}: CPU per result, driver process (Tune's loop, searcher, our callbacks)",
        "ms",
        round(1000 * ours["cpu_s"] / results, 3),
        baseline=round(1000 * bare_cpu_s / bare_results, 3),
        ratio=round(ours["cpu_s"] / results / (bare_cpu_s / bare_results), 3),
    )
    emit(
        f"{case}: CPU per result, MLflow writer process",
        "ms",
        round(1000 * ours["writer_cpu_s"] / results, 3),
        results_per_s_one_core=round(results / ours["writer_cpu_s"], 1) if ours["writer_cpu_s"] else None,
    )
    for what in ("result", "end"):
        seconds = ours["timer"].seconds[what]
        emit(
            f"{case}: our callbacks on Tune's event loop per trial {what}",
            "ms",
            round(1000 * quantile(seconds, 0.5), 3),
            p99_ms=round(1000 * quantile(seconds, 0.99), 3),
            max_ms=round(1000 * max(seconds, default=0.0), 3),
            count=len(seconds),
            goal="median <= 10 ms, p99 <= 100 ms",
        )
    emit(
        f"{case}: Ray 'performance bottleneck' warnings",
        "count",
        ours["warnings"].count,
        bare=bare["warnings"].count,  # Tune's own: the bare run has none of our callbacks
        examples=ours["warnings"].examples,
        goal=0,
    )
    base = timer.rss_at_first_end or ours["rss"][0]  # after the imports and the first trial's writes
    bare_growth = max(bare["rss"]) - bare["rss_at_first_end"]
    emit(
        f"{case}: driver RSS growth from the first trial's end to the sweep's end",
        "MB",
        round((max(ours["rss"]) - base) / 2**20, 1),
        bare_mb=round(bare_growth / 2**20, 1),
        at_first_end_mb=round(base / 2**20, 1),
        peak_mb=round(max(ours["rss"]) / 2**20, 1),
        machine_min_available_mb=round(ours["min_available"] / 2**20) if ours["min_available"] else None,
        goal="<= 200 MB",
    )
    records = check_records(uri, optuna_url, trials, epochs)
    emit(f"{case}: MLflow and Optuna after the sweep", "runs", records["runs"], **records, expected=trials)


def kill_and_resume(table: Path, trials: int, epochs: int, concurrency: int, tmp: Path, address: str) -> None:
    """The driver as a user runs it, SIGKILLed at half its trials, then --resume."""
    work = tmp / "kill"
    work.mkdir()
    cmd = [sys.executable, str(ROOT / "sweeps" / "rectified.py"), "--replay", str(table), "--address", address]
    cmd += ["--num-samples", str(trials), "--max-concurrent", str(concurrency), "--sampler", "random", "--seed", "0"]
    cmd += [
        "--experiment",
        "scale",
        "--tracking-uri",
        f"sqlite:///{work}/mlflow.db",
        "--storage-path",
        str(work / "ray"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"  # each console line when the driver says it
    log = (work / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    db = work / "mlflow.db"
    while proc.poll() is None:
        if db.exists():
            try:  # a read while the driver's writer holds the write lock waits, or tries again
                with sqlite3.connect(db, timeout=30) as con:
                    ended = con.execute(
                        "SELECT COUNT(*) FROM runs WHERE status != 'RUNNING' AND name LIKE 'trial-%'"
                    ).fetchone()[0]
            except sqlite3.OperationalError:
                ended = 0
            if ended >= trials // 2:
                break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    second = work / "resume.log"
    start, first_end = time.perf_counter(), None
    with second.open("w") as out:
        again = subprocess.Popen(cmd + ["--resume"], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        while again.poll() is None:  # until the resumed driver reports a trial's end again
            if first_end is None and "\ntrial " in second.read_text(errors="replace"):
                first_end = time.perf_counter() - start
            time.sleep(0.5)
    seconds = time.perf_counter() - start
    output = (work / "first.log").read_text(errors="replace") + second.read_text(errors="replace")
    records = check_records(f"sqlite:///{work}/mlflow.db", f"sqlite:///{work}/optuna.db", trials, epochs)
    emit(
        f"kill -9 at half of {trials} trials, then --resume",
        "resume_s",
        round(seconds, 1),
        first_trial_end_s=round(first_end, 1) if first_end is not None else None,
        exit_code=again.returncode,
        lost_trials=trials - records["finished_runs"],
        database_locked=output.count("database is locked"),
        bottleneck_warnings=output.count("performance bottleneck"),
        console_lines=output.count("\n"),
        **records,
    )


def start_tracking_server(
    work: Path, port: int, backend_uri: str, timeout_s: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """`jepa_ray.serve_mlflow` over `backend_uri` with 2 workers (as on a cluster head), in a
    session of its own (os.killpg ends it with its workers), once it answers (killed when it does
    not within `timeout_s`); its log goes on in WORK/server.log. Returns the process and the
    server's URI."""
    server = subprocess.Popen(
        [sys.executable, "-m", "jepa_ray.serve_mlflow", "--port", str(port), "--backend-store-uri", backend_uri]
        + ["--artifacts-destination", str(work / "artifacts"), "--workers", "2"],
        cwd=work,
        stdout=(work / "server.log").open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri, timeout_s)
    except BaseException:
        os.killpg(server.pid, signal.SIGKILL)
        raise
    return server, uri


def wait_http(uri: str, timeout_s: float = 120.0) -> None:
    """Wait until the tracking server at `uri` answers /health (SystemExit after `timeout_s`)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"tracking server at {uri} did not start") from None
            time.sleep(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--configs", type=int, default=100, help="distinct configurations in the synthetic table")
    p.add_argument("--concurrency", default="64", help="comma separated")
    p.add_argument(
        "--stores", default="sqlite", help=f"{', '.join(STORES)} (comma separated; see STORES); none: only --kill"
    )
    p.add_argument("--kill", action="store_true", help="also the kill -9 and --resume case")
    p.add_argument("--address", help="join this Ray cluster (default: a local one with enough logical CPUs)")
    args = p.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    stores = [s for s in args.stores.split(",") if s != "none"]
    unknown = [s for s in stores if s not in STORES]
    if unknown:
        p.error(f"--stores {args.stores}: '{unknown[0]}' is not a store; allowed: {', '.join(STORES)}, none")

    import ray

    with tempfile.TemporaryDirectory(prefix="jepa_ray_scale_") as tmp:
        tmp = Path(tmp)
        table = synthetic_table(tmp / "synthetic.parquet", args.configs, args.epochs)
        if args.address:  # a cluster with at least max(--concurrency) + 1 CPUs
            ray.init(address=args.address, log_to_driver=False)
        else:  # logical CPUs over-subscribed: replayed trials take no CPU of their own
            ray.init(address="local", num_cpus=max(concurrencies) + 2, include_dashboard=False, log_to_driver=False)
        try:
            for concurrency in concurrencies:
                for store in stores:
                    run_case(table, args.trials, args.epochs, concurrency, store, tmp)
            if args.kill:
                address = ray.get_runtime_context().gcs_address
                kill_and_resume(table, args.trials, args.epochs, concurrencies[0], tmp, address)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
