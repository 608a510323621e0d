"""A full disk under a sweep's storage path or under its MLflow / Optuna store: one line naming
the path, exit 1, and `--resume` once space is freed loses nothing (no trial lost, no epoch logged
twice, no configuration counted as failed for it).

The unit tests fill a disk by hand: a file object whose writes stop at a quota (what torch
writes a checkpoint through) and a sqlite database capped with `max_page_count` (sqlite's own
"database or disk is full"). The sweeps run on a real full disk: a small tmpfs, mounted and grown
again with `mount` (root only: skipped where it cannot be mounted).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import re
import sqlite3
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from test_sweep import RESUME_ARGS

from jepa_ray import sweep, tracking
from jepa_ray.config import TrialConfig
from jepa_ray.contract import FailureKind
from jepa_ray.errors import StorageFull
from jepa_ray.outcome import Ledger, Outcome
from jepa_ray.sweep.failures import EpochBudget, StopOnFailuresOrBudget, full_disk, stop_reason
from jepa_ray.tracking.writer import MlflowWriter, RunRef
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train.store import TrialStore

MB = 1024 * 1024
FULL_LINE = re.compile(r"^error: no space left on device writing (.+): free space and rerun with --resume$")


# --------------------------------------------------------------------------------------------
# Disks that fill


class QuotaFile(io.FileIO):
    """A file on a disk with `room` bytes left (shared by every file of that disk)."""

    def __init__(self, path, mode, room: list[int]):
        super().__init__(path, mode)
        self.room = room

    def write(self, data) -> int:
        size = len(memoryview(data))
        if size > self.room[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room[0] -= size
        return super().write(data)


def fill_checkpoint_disk(monkeypatch, room: int) -> None:
    """The checkpoint's state files (model.pt, train_state.pt: the binary files its module
    opens) find `room` bytes left on their disk."""
    left = [room]

    def quota_open(path, mode="r", *args, **kwargs):
        return QuotaFile(path, mode, left) if "b" in mode else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt_lib, "open", quota_open, raising=False)


@contextlib.contextmanager
def capped_sqlite(db: Path) -> Iterator[None]:
    """Inside it, `db` cannot grow (SQLITE_FULL), for every connection of this process that
    any pool checks out (MLflow's, Optuna's)."""
    import sqlalchemy
    from sqlalchemy import event

    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    limit = [pages]

    def cap(dbapi_connection, record, proxy) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {limit[0]}")

    event.listen(sqlalchemy.pool.Pool, "checkout", cap)
    try:
        yield
    finally:
        limit[0] = 1073741823  # sqlite's default: pooled connections keep the pragma
        event.remove(sqlalchemy.pool.Pool, "checkout", cap)


@dataclass
class Disk:
    """A tmpfs mounted at `path`: a device that really fills; `resize` frees space (or takes it)."""

    path: Path

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def disk(tmp_path) -> Iterator[Disk]:
    path = tmp_path / "disk"
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"a tmpfs cannot be mounted here (root only): {err}")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


# --------------------------------------------------------------------------------------------
# A checkpoint, a trial's end, the MLflow writer, the Optuna study, the command lines


def small_write(path: Path) -> Path:
    model = {"w": torch.randn(64, 64)}
    return ckpt_lib.save_checkpoint(
        path, model=model, cfg=TrialConfig(), metrics={"epoch": 0}, train_state={"m": torch.randn(64, 64)}, history=[]
    )


@pytest.mark.parametrize("how", ["a quota on its files", "a tmpfs"])
def test_a_checkpoint_that_finds_its_disk_full_raises_one_line_naming_it_and_leaves_the_store_as_it_was(
    how, request, tmp_path, monkeypatch
):
    root = request.getfixturevalue("disk").path if how == "a tmpfs" else tmp_path
    store = TrialStore(root / "trial")
    first = store.save_epoch(1, small_write)
    with contextlib.ExitStack() as full:
        if how == "a tmpfs":
            full.enter_context(filled(Disk(root)))
        else:
            fill_checkpoint_disk(monkeypatch, room=20_000)  # less than one state file: torch's write fails
        with pytest.raises(StorageFull) as raised:
            store.save_epoch(2, small_write)
        assert str(raised.value) == (
            f"no space left on device writing {store.uri}/checkpoints/epoch-00002: free space and rerun with --resume"
        )
        assert store.latest() == first and store.restorable() == first
        assert sorted(p.name for p in (root / "trial" / "checkpoints").iterdir()) == ["LATEST", "epoch-00001"]


def test_a_trial_that_found_its_disk_full_ends_unfinished_not_failed_and_stops_the_sweep(tmp_path):
    from jepa_ray import pareto

    full = StorageFull("/data/ray/s/trials/00001/checkpoints/epoch-00002")
    ledger = Ledger(("linear_acc", "l0_density"))
    limit = sweep.FailureLimit(1, ledger)
    stopper = StopOnFailuresOrBudget(limit, EpochBudget(), ledger)
    assert not stopper.stop_all()
    end = ledger.end("a", {"failure": str(full), "failure_kind": FailureKind.UNFINISHED.value})
    assert (end.outcome, end.reason) == (Outcome.UNFINISHED, str(full))
    assert ledger.storage_full.path == full.path and limit.failed == 0 and not limit.reached
    assert stopper.stop_all()  # the sweep stops, and the trials it stops end for the same reason
    assert ledger.close(stop_reason(limit, EpochBudget(), ledger.storage_full), also=["b"]) == ["b"]
    assert ledger.get("b").reason == f"stopped before its end: {full}"
    raised = ledger.end("c", None, error=f"ray.exceptions.RayTaskError(StorageFull): ray::trial()\n{full}")
    assert raised.outcome is Outcome.UNFINISHED and limit.failed == 0

    objectives = pareto.parse_objectives(sweep.DEFAULT_OBJECTIVES)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = sweep.make_searcher(lambda t: {"mu": t.suggest_float("mu", -1, 0)}, objectives, None, "s", url, ledger)
    assert searcher.suggest("a")
    searcher.on_trial_complete("a")
    (trial,) = optuna.load_study(study_name="s", storage=url).get_trials()
    assert trial.state.name == "FAIL" and trial.user_attrs["stopped"] is True  # --resume trains it again
    assert trial.user_attrs["failure"] == str(full)


class CountingClient:
    """An MLflow client that counts the calls made through it."""

    def __init__(self, client):
        self.client, self.calls = client, collections.Counter()

    def __getattr__(self, name):
        self.calls[name] += 1
        return getattr(self.client, name)


def test_a_full_sqlite_store_stops_the_writer_at_once_with_one_line_naming_it(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    c = tracking.client(uri)
    run_id = c.create_run(tracking.experiment_id(uri, "full")).info.run_id
    client = CountingClient(tracking.client(uri))
    with capped_sqlite(db):
        w = MlflowWriter(uri, client=client, patience_s=60, backoff_s=0.01)
        w.log_metrics(RunRef(run_id), {f"m{i}": float(i) for i in range(2000)}, step=0)
        assert not w.flush(timeout=30)
    assert client.calls["log_batch"] == 1  # not tried again for its patience: waiting frees no space
    assert w.error == f"no space left on device writing {db}: free space and rerun with --resume"


def test_a_full_optuna_study_stops_the_sweep_and_leaves_its_trial_to_resume(disk):
    from jepa_ray import pareto

    db = disk.path / "optuna.db"
    url = f"sqlite:///{db}"
    ledger = Ledger(("linear_acc", "l0_density"))
    objectives = pareto.parse_objectives(sweep.DEFAULT_OBJECTIVES)
    space = lambda t: {"mu": t.suggest_float("mu", -1, 0)}  # noqa: E731
    searcher = sweep.make_searcher(space, objectives, sweep.make_sampler("random", 0), "s", url, ledger)
    assert searcher.suggest("a")
    ledger.end("a", {"linear_acc": 0.9, "l0_density": 0.1, "final_result": True})
    with filled(disk):
        searcher.on_trial_complete("a")  # Tune only logs what its searcher raises: the ledger says it
        with pytest.raises(Exception) as raised:
            optuna.load_study(study_name="s", storage=url).ask()
    assert ledger.storage_full is not None and ledger.storage_full.path == str(db)
    assert StopOnFailuresOrBudget(sweep.FailureLimit(0, ledger), EpochBudget(), ledger).stop_all()
    (trial,) = optuna.load_study(study_name="s", storage=url).get_trials()
    assert trial.state.name == "RUNNING"  # --resume marks it interrupted and trains it again
    stores = SimpleNamespace(opts=SimpleNamespace(tracking_uri=f"sqlite:///{disk.path}/mlflow.db"))
    stores.storage_url, stores.storage = url, str(disk.path / "ray")  # what a SweepPlan names
    named = full_disk(raised.value, stores)
    assert named is not None and named.path == str(db)


@contextlib.contextmanager
def filled(disk: Disk) -> Iterator[None]:
    """Inside it, a file takes every byte the disk has left."""
    filler = disk.path / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * MB)  # the last one partly, then ENOSPC
    try:
        yield
    finally:
        filler.unlink()


def test_the_sweep_command_says_a_full_disk_in_one_line_and_exits_1(monkeypatch, capsys):
    from jepa_ray.sweep import cli

    full = StorageFull("/data/mlflow.db")

    def execute(plan):
        raise full

    monkeypatch.setattr(cli, "plan", lambda opts: None)
    monkeypatch.setattr(cli, "execute", execute)
    assert sweep.main([], space="rectified", preset="digits") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {full}"]


def test_the_train_command_says_a_full_disk_in_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    from jepa_ray.train.cli import main

    fill_checkpoint_disk(monkeypatch, room=0)
    out = tmp_path / "out"
    assert main(["--preset", "smoke", "--set", "epochs=1", "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    match = FULL_LINE.match(lines[-1])
    assert match and match.group(1).startswith(f"{out}/"), lines[-1]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]


# --------------------------------------------------------------------------------------------
# Sweeps on a full disk, resumed once space is freed


MU_ONLY = '''
"""Only mu varies: every trial has the smoke preset's model, so its checkpoints' size is known."""


def space(trial):
    return {"mu": trial.suggest_float("mu", -1.0, 0.0)}
'''
SWEEP_ARGS = (*RESUME_ARGS, "--seed", "0", "--name", "full")


def mu_only_space(tmp_path: Path) -> tuple[Path, str]:
    """(PYTHONPATH, --space) of the MU_ONLY space written under tmp_path."""
    package = f"jr_full_disk_{uuid.uuid4().hex[:8]}"
    (tmp_path / "spaces" / package).mkdir(parents=True)
    (tmp_path / "spaces" / package / "__init__.py").write_text("")
    (tmp_path / "spaces" / package / "mu_only.py").write_text(textwrap.dedent(MU_ONLY))
    return tmp_path / "spaces", f"{package}.mu_only"


def checkpoint_bytes(tmp_path: Path) -> int:
    """The size of one checkpoint of the smoke preset's model, from a one-epoch run."""
    from jepa_ray.train.cli import main

    assert main(["--preset", "smoke", "--set", "epochs=1", "--out", str(tmp_path)]) == 0
    return sum(f.stat().st_size for f in (tmp_path / "checkpoint").iterdir())


def store_bytes(tmp_path: Path) -> int:
    """What a new sweep's MLflow and Optuna stores take before it records anything."""
    tmp_path.mkdir()
    tracking.experiment_id(f"sqlite:///{tmp_path}/mlflow.db", "empty")
    optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", directions=["maximize", "minimize"])
    return sum(f.stat().st_size for f in tmp_path.iterdir())


def assert_one_line(run, path_pattern: str) -> None:
    """The sweep exited 1 with one error line, its last, naming a path that matches."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1, run.output()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], run.output()
    match = FULL_LINE.match(lines[-1])
    assert match and re.fullmatch(path_pattern, match.group(1)), run.output()
    assert "Traceback" not in run.stderr, run.output()


def assert_every_trial_recorded_once(run) -> None:
    """Three trials FINISHED in MLflow and COMPLETE in Optuna, each epoch logged once, and no
    configuration counted as failed: an Optuna FAIL is a trial the full disk cut short, which
    --resume trained again."""
    from test_sweep import assert_optuna_matches_mlflow, client, load_study, parent_and_children

    assert run.returncode == 0, run.output()
    assert " 0 failed," in run.stdout
    parent, children = parent_and_children(run)
    assert parent.info.status == "FINISHED"
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags.get(tracking.FAILURE_KIND) != FailureKind.FAILED.value for r in children)
    for r in children:
        steps = sorted(m.step for m in client(run).get_metric_history(r.info.run_id, "train/loss"))
        assert steps == [0, 1, 2, 3], (r.info.run_id, steps)
    study = load_study(run, parent)
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 3
    for t in study.get_trials(states=[optuna.trial.TrialState.FAIL]):
        assert t.user_attrs.get("stopped") or t.user_attrs.get("interrupted"), t.user_attrs
        assert "no space left on device" in t.user_attrs.get("failure", "no space left on device")
    assert not study.get_trials(states=[optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING])
    assert_optuna_matches_mlflow(study, children)


@pytest.mark.slow
def test_a_full_disk_under_the_storage_path_stops_the_sweep_and_resume_loses_nothing(ray_cluster, tmp_path, disk):
    from test_sweep import run_sweep

    spaces, space = mu_only_space(tmp_path)
    # Room for trial 0's first checkpoint, not for its second: epoch 0 is logged before the fault.
    disk.resize(int(1.5 * checkpoint_bytes(tmp_path / "measure")))
    args = ("--space", space, "--storage-path", str(disk.path / "ray"), *SWEEP_ARGS)
    run = run_sweep(tmp_path / "sweep", *args, address=ray_cluster, pythonpath=spaces)
    assert_one_line(run, re.escape(f"{disk.path}/ray/full/trials/00000/checkpoints/epoch-00002"))

    disk.resize(256 * MB)
    resumed = run_sweep(tmp_path / "sweep", "--resume", *args, address=ray_cluster, pythonpath=spaces)
    assert "3 trials launched, 0 already finished, 0 failed" in resumed.stdout, resumed.output()
    assert_every_trial_recorded_once(resumed)


@pytest.mark.slow
def test_a_full_disk_under_the_mlflow_store_stops_the_sweep_and_resume_loses_nothing(ray_cluster, tmp_path, disk):
    from test_sweep import Sweep, run_sweep

    spaces, space = mu_only_space(tmp_path)
    # The stores, their parent run and a trial or so: the disk fills in the middle of the sweep.
    disk.resize(store_bytes(tmp_path / "measure") + 96 * 1024)
    args = ("--space", space, "--tracking-uri", f"sqlite:///{disk.path}/mlflow.db", *SWEEP_ARGS)
    run = run_sweep(tmp_path / "sweep", *args, address=ray_cluster, pythonpath=spaces)
    assert_one_line(run, re.escape(f"{disk.path}/") + "(mlflow|optuna)\\.db")

    disk.resize(64 * MB)
    resumed = run_sweep(tmp_path / "sweep", "--resume", *args, address=ray_cluster, pythonpath=spaces)
    assert_every_trial_recorded_once(Sweep(disk.path, resumed.returncode, resumed.stdout, resumed.stderr))
