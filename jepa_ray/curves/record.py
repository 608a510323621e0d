"""The recorder: trains a grid's trials with `python -m jepa_ray.train` (one process per trial,
`jobs` at a time) and appends each finished trial to the curve table as it ends, so an
interrupted recording loses at most the trials in flight and resumes where it stopped (rows
already in the table are skipped). Each row's `command` retrains it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jepa_ray import __version__
from jepa_ray import config as config_lib
from jepa_ray.contract import TRAINING_REVISION
from jepa_ray.curves.grids import Grid
from jepa_ray.curves.table import STATUS_FAILED, STATUS_FINISHED, CurveTable, Row, read_table, row_key
from jepa_ray.errors import UsageError, one_line
from jepa_ray.tracking.store import git_commit

NOT_SETTING = config_lib.RUNTIME_KEYS | {"seed", "data_dir", "download", "data_workers", "prefetch_batches", "stream"}
"""Config keys that do not make a recording's setting: where and how it runs, the seed, the data's
location (its content is fixed by the dataset and the sample sizes)."""

ROOT = Path(__file__).resolve().parents[2]


def base_overrides(grid: Grid, data_dir: str | None) -> dict[str, Any]:
    out = dict(grid.base)
    if data_dir is not None:
        out["data_dir"] = data_dir
    return out


def trial_config(grid: Grid, params: dict[str, Any], seed: int, data_dir: str | None) -> config_lib.TrialConfig:
    return config_lib.build(grid.preset, overrides={**base_overrides(grid, data_dir), **params, "seed": seed})


def setting_digest(grid: Grid, data_dir: str | None) -> str:
    """What every row of a recording shares, as a digest kept with each row for reference: the
    grid's resolved base config without the keys of NOT_SETTING (check_table compares configs
    key by key, so that a config key added later does not orphan a table)."""
    cfg = config_lib.build(grid.preset, overrides=base_overrides(grid, data_dir))
    flat = {k: v for k, v in config_lib.flatten(cfg).items() if k not in NOT_SETTING}
    return hashlib.sha256(json.dumps([grid.preset, flat], sort_keys=True).encode()).hexdigest()[:16]


def command_for(grid: Grid, params: dict[str, Any], seed: int, data_dir: str | None, out: str = "OUT") -> list[str]:
    """The command line that trains one row (run from the repository root)."""
    sets = {**base_overrides(grid, data_dir), **params, "seed": seed}
    argv = ["python", "-m", "jepa_ray.train", "--preset", grid.preset]
    for k, v in sets.items():
        argv += ["--set", f"{k}={_text(v)}"]
    return argv + ["--out", out]


def recording_precision(table: CurveTable, grid: Grid, data_dir: str | None) -> str:
    """The precision a recording trains at, pinned in its rows' commands (a row's command retrains
    it as recorded on any machine): what the grid sets, else (auto) that of the rows the table
    holds (a table is one recording), else what auto gives on this machine."""
    cfg = config_lib.build(grid.preset, overrides=base_overrides(grid, data_dir))
    if cfg.system.precision != "auto":
        return cfg.system.precision
    for row in table.rows[:1]:
        if "system" in row.config:
            return row.config["system"]["precision"]  # never auto: read_table resolves old rows'
    from jepa_ray.train.step import default_device, resolve_precision  # torch: the trainer's, for precision auto

    return resolve_precision("auto", default_device(cfg))[0]


def check_native_precision(grid: Grid, data_dir: str | None) -> None:
    """UsageError for a recording at bf16 on a CPU that multiplies bf16 in software (no AMX-BF16,
    AVX512-BF16 or Arm BF16): torch emulates it and every row trains many times slower than at
    fp32. Found when the cifar10-long recording, pinned at bf16, was started on an AVX2-only
    machine: its rows trained at 2 images/s (beside a test run) and none ended in an hour."""
    if grid.base.get("precision") != "bf16":  # pinned: never auto here
        return
    from jepa_ray.train import step  # torch: the trainer's own test of the CPU

    cfg = config_lib.build(grid.preset, overrides=base_overrides(grid, data_dir))
    if step.emulates_bf16(cfg.system.precision, step.default_device(cfg)):
        import torch

        raise UsageError(
            f"grid {grid.name!r} records at precision bf16 on the CPU, and this CPU has no native bf16 "
            f"matrix support (torch: {torch.backends.cpu.get_cpu_capability()}): torch would emulate bf16 and "
            "every row would train many times slower; record it on a CPU with AMX-BF16 or AVX512-BF16 "
            "(or Arm BF16)"
        )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def check_table(table: CurveTable, grid: Grid, data_dir: str | None, mix: bool) -> None:
    """UsageError when the table holds rows of another grid or training revision, or rows whose
    recorded config differs from what the grid gives now in anything but where and how it ran
    (unless `mix`): a table means one recording. Keys a newer config added are not compared."""
    if mix:
        return
    for row in table:
        where = f"curve table {table.path}"
        if row.grid != grid.name:
            raise UsageError(
                f"{where} holds rows of grid {row.grid!r}, not {grid.name!r}; "
                "record into another table, or pass --mix to add to it anyway"
            )
        if row.revision != TRAINING_REVISION:
            raise UsageError(
                f"{where} was recorded at training revision {row.revision}, this code is at "
                f"{TRAINING_REVISION}; record into another table, or pass --mix to add to it anyway"
            )
    for row in table.rows[:1]:
        recorded = {k: v for section in row.config.values() if isinstance(section, dict) for k, v in section.items()}
        now = config_lib.flatten(trial_config(grid, row.params, row.seed, data_dir))
        changed = sorted(k for k in now if k in recorded and k not in NOT_SETTING and str(now[k]) != str(recorded[k]))
        if changed:
            diff = ", ".join(f"{k}={now[k]} (recorded: {recorded[k]})" for k in changed)
            raise UsageError(
                f"curve table {table.path} was recorded with another setting: grid {grid.name} now gives {diff}; "
                "record into another table, or pass --mix to add to it anyway"
            )


def _provenance() -> dict[str, str]:
    import torch

    return {
        "jepa_ray_version": __version__,
        "git_commit": git_commit(ROOT),
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.system()} {platform.release()}",
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _failure_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return one_line("\n".join(lines[-5:]) or "no output")


@dataclass
class Recorder:
    """Records a grid into a table; `run()` returns the rows it added."""

    grid: Grid
    table_path: Path
    data_dir: str | None = None
    jobs: int = 2
    mix: bool = False
    limit: int | None = None
    work_dir: Path | None = None
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.table_path = Path(self.table_path)
        if self.data_dir is not None:  # the trials run from the repository root; commands name it from there
            self.data_dir = os.path.relpath(Path(self.data_dir).resolve(), ROOT)
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.drained = False
        """True when an interrupt stopped the recording after the rows in flight were written."""

    def prepare(self) -> tuple[CurveTable, list[tuple[dict, int]]]:
        """Every check before any training: the grid resolves, the table (when it exists) is of
        this recording; the recording's precision is pinned (`pinned`: the grid with it).
        Returns the table and the (params, seed) still to record."""
        if self.jobs < 1:
            raise UsageError(f"--jobs {self.jobs} is not allowed; allowed: 1 or more")
        if self.grid.needs_data_dir and not self.data_dir:
            raise UsageError(f"--data-dir is required by grid {self.grid.name!r} (its dataset is read from disk)")
        setting = setting_digest(self.grid, self.data_dir)
        for params, seed in self.grid.points()[:1]:
            trial_config(self.grid, params, seed, self.data_dir)  # a bad factor value fails here
        table = read_table(self.table_path) if self.table_path.exists() else CurveTable(path=self.table_path)
        precision = recording_precision(table, self.grid, self.data_dir)
        self.pinned = dataclasses.replace(self.grid, base={**self.grid.base, "precision": precision})
        check_table(table, self.pinned, self.data_dir, self.mix)
        check_native_precision(self.pinned, self.data_dir)
        todo = [(p, s) for p, s in self.grid.points() if row_key(p, s) not in table]
        self.setting = setting
        return table, todo[: self.limit] if self.limit is not None else todo

    def run(self) -> list[Row]:
        table, todo = self.prepare()
        self.log(
            f"grid {self.grid.name}: {len(table)} rows recorded, {len(todo)} to record, {self.jobs} at a time "
            f"at precision {self.pinned.base['precision']} -> {self.table_path}"
        )
        work = Path(self.work_dir or tempfile.mkdtemp(prefix="jepa-curves-"))
        work.mkdir(parents=True, exist_ok=True)
        added: list[Row] = []
        start = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        try:
            pending: set[Future] = {pool.submit(self._train, p, s, work) for p, s in todo}
            while pending:
                try:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    if self.drained:
                        raise
                    pending = self._drain(pending)
                    continue
                for fut in done:
                    row = fut.result()
                    if row is None:  # not started: the recording is draining
                        continue
                    with self._lock:
                        table.add(row)
                        table.write()
                    added.append(row)
                    self._log_row(row, added, len(todo), time.monotonic() - start)
        except BaseException:
            with self._lock:
                self._stopping = True
                procs = list(self._procs)
            for proc in procs:  # before the pool's shutdown, which waits for their threads
                proc.kill()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if self.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
        return added

    def _drain(self, pending: set[Future]) -> set[Future]:
        """The first interrupt: start no more rows, let the ones in flight finish and be written
        (each is minutes of training); a second interrupt stops at once."""
        self.drained = True
        for fut in pending:
            fut.cancel()
        running = {fut for fut in pending if not fut.cancelled()}
        self.log(
            f"interrupted: finishing the {len(running)} row(s) in flight, starting no more; "
            "interrupt again to stop now (rows in flight are then lost)"
        )
        return running

    def _log_row(self, row: Row, added: list[Row], total: int, elapsed: float) -> None:
        nan = float("nan")
        what = (
            f"linear_acc {row.final.get('linear_acc', nan):.4f} l0 {row.final.get('l0_density', nan):.3f}"
            if row.finished
            else f"failed: {row.failure}"
        )
        n = len(added)
        eta = sum(r.wall_s for r in added) / n * (total - n) / self.jobs  # rows run `jobs` at a time
        self.log(
            f"[{n}/{total}] {json.dumps(row.params)} seed {row.seed}: {what} ({row.wall_s:.0f} s; "
            f"elapsed {elapsed / 60:.0f} min, about {eta / 60:.0f} min left)"
        )

    def _train(self, params: dict[str, Any], seed: int, work: Path) -> Row | None:
        if self._stopping:
            raise RuntimeError("recording stopped")
        if self.drained:
            return None
        key = row_key(params, seed)
        out = work / key
        shutil.rmtree(out, ignore_errors=True)
        argv = command_for(self.pinned, params, seed, self.data_dir, str(out))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        log_path = work / f"{key}.log"
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            # Its own process group: a Ctrl-C at the terminal reaches the recorder only, which
            # lets the row finish (drain) or kills it (a second Ctrl-C).
            proc = subprocess.Popen(
                [sys.executable, *argv[1:]],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
            )
            with self._lock:
                self._procs.add(proc)
                if self._stopping:  # started as the recording stopped
                    proc.kill()
            try:
                code = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
        wall = time.perf_counter() - t0
        if code not in (0, 1) or self._stopping:
            raise RuntimeError(f"{shlex.join(argv)} exited {code}: {_failure_line(log_path)}")
        ckpt = out / "checkpoint"
        config = trial_config(self.pinned, params, seed, self.data_dir)
        history: list[dict] = []
        final: dict = {}
        failure = None
        if code == 0:
            history = json.loads((ckpt / "history.json").read_text())
            final = json.loads((ckpt / "metrics.json").read_text())
            config_json = json.loads((ckpt / "config.json").read_text())
        else:
            failure = _failure_line(log_path)
            config_json = config_lib.to_dict(config)
        epoch_s = sum(float(e.get("time/epoch_wall_s", e.get("time/epoch_s", 0.0))) for e in history)
        eval_s = float(final.get("time/eval_s", 0.0))
        shutil.rmtree(out, ignore_errors=True)
        return Row(
            key=key,
            grid=self.grid.name,
            setting=self.setting,
            revision=TRAINING_REVISION,
            params=params,
            seed=seed,
            status=STATUS_FINISHED if code == 0 else STATUS_FAILED,
            failure=failure,
            config=config_json,
            history=history,
            final=final,
            command=shlex.join(command_for(self.pinned, params, seed, self.data_dir)),
            setup_s=max(wall - epoch_s - eval_s, 0.0),
            eval_s=eval_s,
            wall_s=wall,
            provenance=_provenance(),
        )
