"""Recorded learning curves, end to end: the recorder (resumes without duplicating or losing rows,
refuses another revision or setting unless told to mix), the replay (serves exactly the recorded
values), the simulator (the same sweep the real driver runs over `--replay`), a replayed sweep
into MLflow and Optuna as a live sweep records, and the what-if over a finished sweep."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from jepa_ray import config as config_lib
from jepa_ray import contract as C
from jepa_ray import pareto
from jepa_ray.curves import GRIDS, read_table, row_key
from jepa_ray.curves.record import Recorder, command_for, setting_digest, trial_config
from jepa_ray.curves.table import STATUS_FINISHED, CurveTable, Row
from jepa_ray.errors import UsageError
from jepa_ray.outcome import Outcome
from jepa_ray.replay.methods import METHODS, attainable, run_method, warm_start_rows
from jepa_ray.replay.simulate import simulate
from jepa_ray.replay.tables import Replay, nearest_row, replay_config, serve
from jepa_ray.trial_spec import TrialSpec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "benchmarks" / "curves" / "digits.parquet"
OBJECTIVES = pareto.parse_objectives(C.DEFAULT_OBJECTIVES)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def replay() -> Replay:
    return Replay.open(str(DIGITS), [])


# --------------------------------------------------------------------------------------------
# The committed digits table


def test_the_digits_table_is_the_digits_grid_recorded_whole(replay):
    grid = GRIDS["digits"]
    keys = {row_key(p, s) for p, s in grid.points()}
    assert {r.key for r in replay.table} == keys and len(replay.table) == len(keys)
    for row in replay.table:
        assert row.revision == C.TRAINING_REVISION and row.epochs == grid.base["epochs"]
        assert row.command.startswith("python -m jepa_ray.train --preset digits-sweep ")
        assert [h[C.EPOCH] for h in row.history] == list(range(row.epochs))
        assert row.finished and all(math.isfinite(row.final[m]) for m in C.HEADLINE_METRICS)


# --------------------------------------------------------------------------------------------
# Replay serves exactly the recorded values


def test_replay_serves_every_recorded_epoch_and_the_final_metrics_exactly(replay):
    row = replay.table.rows[5]
    results = [r for r, _ in serve(row, replay_config(row, {"collapse_guard": False}))]
    assert [r[C.EPOCH] for r in results] == list(range(row.epochs))
    for got, want in zip(results[:-1], row.history[:-1]):
        assert got == want
    assert results[-1] == {**row.final, C.FINAL_RESULT: True} and C.is_final(results[-1])
    assert results[-1][C.EPOCH] == row.history[-1][C.EPOCH]


def test_a_replayed_trial_mlflow_missed_is_recorded_from_its_row(replay, tmp_path):
    """--resume's record of a replayed trial whose end MLflow missed: a stopped one gets the
    epochs it trained, a finished one every epoch and its final metrics."""
    from jepa_ray import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c, exp_id = tracking.client(uri), tracking.experiment_id(uri, "record")
    served = {row.key: [r for r, _ in serve(row, replay_config(row, replay.settings))] for row in replay.table}
    row = next(r for r in replay.table if r.seed == 0 and C.is_final(served[r.key][-1]))  # the guard lets it finish
    runs = []
    for _ in range(2):
        runs.append(c.create_run(exp_id).info.run_id)
        tracking.log_params(c, runs[-1], row.params)
    assert replay.record_run(c, c.get_run(runs[0]), 3) is False
    assert replay.record_run(c, c.get_run(runs[1]), None) is True
    stopped, finished = (c.get_run(r) for r in runs)
    assert [m.step for m in c.get_metric_history(runs[0], C.TRAIN_LOSS)] == [0, 1, 2]
    assert [m.step for m in c.get_metric_history(runs[1], C.TRAIN_LOSS)] == list(range(row.epochs))
    assert "linear_acc" not in stopped.data.metrics and finished.data.metrics["linear_acc"] == row.final["linear_acc"]


def test_the_guard_replays_a_collapse_where_the_recorded_curve_collapses(replay):
    """Recordings run without the guard; a replay with it stops a trial at the first epoch past
    the guard's warm-up where the curve is below a fifth of its target density."""
    from jepa_ray.train.guard import collapse_reason

    for row in replay.table:
        cfg = replay_config(row, replay.settings)
        first = next((h[C.EPOCH] for h in row.history if collapse_reason(cfg, h)), None)
        results = [r for r, _ in serve(row, cfg)]
        if first is None:
            assert C.is_final(results[-1])
        else:
            assert len(results) == first + 1 and results[-1]["failure_kind"] == "collapsed"


def test_a_proposal_the_table_lacks_is_served_by_its_nearest_row(replay):
    row = replay.table.rows[0]
    assert nearest_row(replay.table, row.params) is min(replay.table.seeds(row.params), key=lambda r: r.seed)
    near = nearest_row(replay.table, {**row.params, "lambd": 0.55})  # between 0.5 and 0.9: nearer 0.5
    assert near.params == {**row.params, "lambd": 0.5}


def test_replay_refuses_a_set_that_would_change_what_the_curves_trained():
    with pytest.raises(UsageError, match="--set lr=...: a replay serves recorded curves"):
        Replay.open(str(DIGITS), ["lr=0.1"])
    assert Replay.open(str(DIGITS), ["collapse_guard=false"]).settings["collapse_guard"] == "false"


# --------------------------------------------------------------------------------------------
# The simulator


def test_simulated_fifo_spends_every_epoch_of_every_trial_and_reaches_its_hypervolume(replay):
    from jepa_ray.replay.whatif import RecordedOrder

    rows = replay.table.rows[:8]
    sub = type(replay.table)(rows)
    result = simulate(sub, RecordedOrder(sub), OBJECTIVES, settings=replay.settings, num_samples=8)
    outcomes = [t.outcome for t in result.trials]
    expected_epochs = sum(
        len([r for r, _ in serve(row, replay_config(row, replay.settings))]) for row in rows
    )  # every epoch of a finished trial, up to the collapse of a collapsed one
    assert result.trial_epochs == expected_epochs and len(result.trials) == 8
    assert set(outcomes) <= {Outcome.FINISHED, Outcome.COLLAPSED}
    assert result.seconds > 0 and result.curve[-1][0] == result.trial_epochs


def test_a_budget_cuts_the_running_trials_as_a_live_sweep_does(replay):
    result = run_method(replay, METHODS["random"], OBJECTIVES, seed=0, budget=60, max_concurrent=4)
    assert 60 <= result.trial_epochs < 60 + 4
    assert result.trials[-1].outcome is Outcome.UNFINISHED


def test_no_search_beats_the_table_and_moasha_stops_trials(replay):
    _, best = attainable(replay, OBJECTIVES)
    for name in ("tpe", "moasha-tpe", "ladder-tpe"):
        result = run_method(replay, METHODS[name], OBJECTIVES, seed=1, budget=120, max_concurrent=2)
        assert 0 < result.hypervolume <= best + 1e-12, name
        if name != "tpe":
            assert result.count(Outcome.STOPPED) > 0, name


def test_a_warm_start_proposes_the_other_tables_front_first(replay):
    points, _ = attainable(replay, OBJECTIVES)
    front = [  # brute force: no other point at least as good in both and better in one
        row
        for row, (acc, l0) in points
        if not any(a >= acc and d <= l0 and (a, d) != (acc, l0) for _, (a, d) in points)
    ]
    warm = warm_start_rows(replay, replay, OBJECTIVES)
    assert sorted(r.key for r in warm) == sorted(r.key for r in front) and len(warm) >= 3
    assert [r.final["l0_density"] for r in warm] == sorted(r.final["l0_density"] for r in warm)
    for name in ("tpe", "moasha-tpe"):  # over mu and over the target density: the same rows first
        result = run_method(
            replay, METHODS[name], OBJECTIVES, seed=0, num_samples=len(warm) + 2, max_concurrent=1, starting_points=warm
        )
        assert [t.row_key for t in result.trials[: len(warm)]] == [r.key for r in warm], name

    # Another table's front (here this one's with lambd off the grid) lands on this table's
    # nearest configurations.
    shifted = [
        dataclasses.replace(r, key=f"shifted-{r.key}", params={**r.params, "lambd": r.params["lambd"] * 1.1})
        for r in replay.table
    ]
    other = dataclasses.replace(replay, table=type(replay.table)(shifted))
    moved = warm_start_rows(other, replay, OBJECTIVES)
    assert [r.key for r in moved] == [r.key for r in warm]


# --------------------------------------------------------------------------------------------
# The recorder


@pytest.mark.slow
def test_the_recorder_resumes_without_duplicates_and_refuses_to_mix(tmp_path):
    grid = GRIDS["smoke"]
    table = tmp_path / "smoke.parquet"
    first = Recorder(grid, table, jobs=2, limit=2, log=lambda m: None).run()
    assert len(first) == 2 and len(read_table(table)) == 2
    again = Recorder(grid, table, jobs=2, log=lambda m: None).run()
    rows = read_table(table)
    assert len(again) == len(grid.points()) - 2 and len(rows) == len(grid.points())
    assert sorted(r.key for r in rows) == sorted(row_key(p, s) for p, s in grid.points())
    assert Recorder(grid, table, log=lambda m: None).run() == []  # nothing left: nothing trained

    # Each row's command retrains it (the same seed and one thread: the same numbers).
    row = rows.get(row_key(*grid.points()[-1]))
    out = tmp_path / "again"
    cmd = row.command.replace("--out OUT", f"--out {out}").split()
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = json.loads((out / "checkpoint" / "metrics.json").read_text())
    assert final["linear_acc"] == row.final["linear_acc"] and final["l0_density"] == row.final["l0_density"]

    rows.rows[0].revision = C.TRAINING_REVISION + 1
    rows.write(tmp_path / "old.parquet")
    with pytest.raises(UsageError, match="training revision"):
        Recorder(grid, tmp_path / "old.parquet", log=lambda m: None).prepare()
    Recorder(grid, tmp_path / "old.parquet", mix=True, log=lambda m: None).prepare()
    rows.rows[0].revision = C.TRAINING_REVISION
    rows.rows[0].config["optim"]["lr"] = 0.5
    rows.write(tmp_path / "other.parquet")
    with pytest.raises(UsageError, match=r"another setting: grid smoke now gives lr=0.002 \(recorded: 0.5\)"):
        Recorder(grid, tmp_path / "other.parquet", log=lambda m: None).prepare()


def _legacy_table(path: Path, grid) -> Path:
    """A table as recorded before trials resolved precision=auto: rows whose config says auto."""
    rows = [finished_row(grid, params, seed, None, [], {}) for params, seed in grid.points()[:2]]
    assert {r.config["system"]["precision"] for r in rows} == {"auto"}
    return CurveTable(rows).write(path)


def finished_row(grid, params: dict, seed: int, data_dir: str | None, history: list, final: dict) -> Row:
    """A finished row of `grid` as the recorder writes one, with the given curves."""
    cfg = trial_config(grid, params, seed, data_dir)
    return Row(
        key=row_key(params, seed),
        grid=grid.name,
        setting=setting_digest(grid, data_dir),
        revision=C.TRAINING_REVISION,
        params=params,
        seed=seed,
        status=STATUS_FINISHED,
        config=config_lib.to_dict(cfg),
        history=history,
        final=final,
        command=shlex.join(command_for(grid, params, seed, data_dir)),
    )


def test_rows_recorded_before_precision_was_resolved_read_as_fp32_and_retrain_so(tmp_path):
    """Recorded auto meant fp32 on a CPU: the row says so, and its command pins it (on a CPU where
    auto is bf16 now, the stored command would otherwise retrain another row)."""
    for row in read_table(_legacy_table(tmp_path / "old.parquet", GRIDS["smoke"])).rows + read_table(DIGITS).rows:
        assert row.config["system"]["precision"] == "fp32"
        assert row.command.endswith(" --set precision=fp32 --out OUT") and row.command.count("precision=") == 1


@pytest.mark.parametrize("native", [True, False])
def test_the_recorder_pins_its_precision_in_every_row_s_command(monkeypatch, tmp_path, native):
    """A new table records at what auto gives here, an old table goes on at the precision its rows
    trained at (fp32: recorded auto); a grid asking for another precision is another setting."""
    from jepa_ray.train import step

    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: native)
    grid = GRIDS["smoke"]
    params, seed = grid.points()[-1]
    new = Recorder(grid, tmp_path / "new.parquet", log=lambda m: None)
    new.prepare()
    here = "bf16" if native else "fp32"
    assert f" --set precision={here} " in shlex.join(command_for(new.pinned, params, seed, None))
    assert trial_config(new.pinned, params, seed, None).system.precision == here

    old = Recorder(grid, _legacy_table(tmp_path / "old.parquet", grid), log=lambda m: None)
    assert len(old.prepare()[1]) == len(grid.points()) - 2  # accepted: resumes where it stopped
    assert " --set precision=fp32 " in shlex.join(command_for(old.pinned, params, seed, None))
    bf16 = dataclasses.replace(grid, base={**grid.base, "precision": "bf16"})
    with pytest.raises(UsageError, match=r"another setting: grid smoke now gives precision=bf16 \(recorded: fp32\)"):
        Recorder(bf16, tmp_path / "old.parquet", log=lambda m: None).prepare()


@pytest.mark.parametrize("native", [True, False])
def test_the_recorder_refuses_a_bf16_grid_on_a_cpu_that_emulates_bf16(monkeypatch, tmp_path, native):
    """One line before any row trains, naming the grid and what the CPU lacks; fp32 and auto
    grids record anywhere (auto gives fp32 there)."""
    from jepa_ray.train import step

    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: native)
    grid = GRIDS["smoke"]
    bf16 = dataclasses.replace(grid, base={**grid.base, "precision": "bf16"})
    recorder = Recorder(bf16, tmp_path / "bf16.parquet", log=lambda m: None)
    if native:
        assert recorder.prepare()[1]
    else:
        with pytest.raises(
            UsageError, match=r"^grid 'smoke' records at precision bf16 on the CPU, and this CPU has no"
        ):
            recorder.prepare()
    assert Recorder(grid, tmp_path / "auto.parquet", log=lambda m: None).prepare()[1]
    assert not (tmp_path / "bf16.parquet").exists()


def _record_then_interrupt(
    tmp_path: Path, interrupts: int, background: bool = False
) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Start `python -m jepa_ray.curves record` on the smoke grid, one row at a time, and press
    Ctrl-C `interrupts` times (SIGINT to its whole process group, as a terminal does) while the
    first row trains. `background`: started as `cmd &` is, with SIGINT ignored."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    table, work = tmp_path / "smoke.parquet", tmp_path / "work"
    cmd = [sys.executable, "-m", "jepa_ray.curves", "record", "--grid", "smoke", "--table", str(table)]
    proc = subprocess.Popen(
        [*cmd, "--jobs", "1", "--work-dir", str(work)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ignore_sigint if background else None,
    )
    deadline = time.monotonic() + 120
    # The first row's trainer has printed its first line: it runs in its own process group (the
    # log file exists a moment before the fork that moves it there, and a Ctrl-C inside that
    # moment would also reach it).
    while not any(log.stat().st_size for log in work.glob("*.log")):
        assert proc.poll() is None and time.monotonic() < deadline, "the first row never started"
        time.sleep(0.1)
    for _ in range(interrupts):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.5)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), table, work


@pytest.mark.slow
def test_sigint_finishes_the_row_in_flight_even_in_the_background_and_a_second_stops_at_once(tmp_path):
    done, table, _ = _record_then_interrupt(tmp_path / "drain", 1, background=True)
    assert done.returncode == 130, done.stderr
    assert "finishing the 1 row(s) in flight" in done.stdout
    assert "stopped after the rows in flight" in done.stderr
    rows = read_table(table)
    assert len(rows) == 1 and rows.rows[0].finished  # the row in flight, and no other started

    killed, table, work = _record_then_interrupt(tmp_path / "stop", 2)
    assert killed.returncode == 130 and "stopped: the rows recorded so far" in killed.stderr, killed.stderr
    assert not table.exists() or len(read_table(table)) == 0
    trainers = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout.split()
    assert trainers == []  # the trainer in flight was killed, not orphaned


# --------------------------------------------------------------------------------------------
# Through the real driver


@pytest.mark.slow
def test_a_replayed_sweep_records_the_table_and_agrees_with_the_simulator(ray_cluster, tmp_path):
    from test_sweep import client, load_study, parent_and_children, run_sweep

    from jepa_ray.sweep.search import JepaOptunaSearch, make_sampler

    args = ("--replay", str(DIGITS), "--sampler", "random", "--seed", "7", "--scheduler", "moasha")
    run = run_sweep(tmp_path, *args, "--num-samples", "8", "--max-concurrent", "1", address=ray_cluster)
    assert run.returncode == 0, run.output()
    parent, children = parent_and_children(run)
    assert len(children) == 8 and "RUNNING" not in {r.info.status for r in children}
    tune_logs = {p.name for p in (tmp_path / "ray").rglob("*") if p.name in ("progress.csv", "result.json")}
    tune_logs |= {p.name for p in (tmp_path / "ray").rglob("events.out.tfevents*")}
    assert not tune_logs  # MLflow records every result: Tune's loggers would write each again on its loop
    replay = Replay.open(str(DIGITS), [])
    c = client(run)
    for r in children:
        row = nearest_row(replay.table, {k: float(r.data.params[k]) for k in replay.table.param_names()})
        steps = {m.step: m.value for m in c.get_metric_history(r.info.run_id, C.TRAIN_LOSS)}
        assert steps == {h[C.EPOCH]: h[C.TRAIN_LOSS] for h in row.history[: len(steps)]}
        if r.info.status == "FINISHED":
            assert all(r.data.metrics[m] == row.final[m] for m in C.HEADLINE_METRICS)
        elif r.info.status == "KILLED":
            assert r.data.tags[C.STOPPED].startswith("rung ")
    study = load_study(run, parent)
    killed = sum(r.info.status == "KILLED" for r in children)
    assert killed and sum(t.state.name == "PRUNED" for t in study.get_trials()) >= killed

    # The simulator, with the same sampler, seed and one trial at a time, runs the same sweep.
    searcher = JepaOptunaSearch(
        space=replay.space(7),
        metric=["linear_acc", "l0_density"],
        mode=["max", "min"],
        sampler=make_sampler("random", 7),
    )
    from jepa_ray.sweep.schedulers import create_scheduler

    scheduler = create_scheduler("moasha", replay.base.optim.epochs, signals=METHODS_SIGNALS, min_epochs=0)
    sim = simulate(replay.table, searcher, OBJECTIVES, scheduler=scheduler, settings=replay.settings, num_samples=8)
    live = sorted((int(r.data.tags[C.OPTUNA_TRIAL]), r.info.status) for r in children)
    simulated = [{"FINISHED": "FINISHED", "STOPPED": "KILLED"}.get(t.outcome.name, "FAILED") for t in sim.trials]
    assert [s for _, s in live] == simulated
    curve = c.get_metric_history(parent.info.run_id, "sweep/hypervolume")
    assert max(m.value for m in curve) == pytest.approx(sim.hypervolume, rel=1e-12)  # the curve never falls


METHODS_SIGNALS = "online/linear_acc:max,train/l0_density:min"


@pytest.mark.slow
def test_a_24_trial_sweep_12_at_a_time_is_recorded_once_and_its_what_if_runs(replay, ray_cluster, tmp_path, capsys):
    """The driver at a small cluster's load (issue: the sweep at scale): 24 replayed trials, 12 at
    a time (two waves), leave every trial one MLflow run with every epoch once and its Optuna trial in its
    state (COMPLETE with the run's values, or PRUNED where the guard stopped it); then the what-if
    over that finished sweep."""
    from test_sweep import client, load_study, parent_and_children, run_sweep

    trials = 24
    run = run_sweep(
        tmp_path,
        *("--replay", str(DIGITS), "--sampler", "random", "--seed", "3", "--num-samples", str(trials)),
        *("--max-concurrent", "12", "--set", "cpus_per_worker=0.2"),  # 12 x 0.2 fit the session's 4 CPUs
        address=ray_cluster,
    )
    assert run.returncode == 0, run.output()
    parent, children = parent_and_children(run)
    numbers = sorted(int(r.data.tags[C.OPTUNA_TRIAL]) for r in children)
    assert numbers == list(range(trials)), "a trial has no run or two runs"
    study, c = load_study(run, parent), client(run)
    by_number = {t.number: t for t in study.get_trials()}
    assert len(by_number) == trials
    trial_epochs = 0
    for r in children:
        row = nearest_row(replay.table, {k: float(r.data.params[k]) for k in replay.table.param_names()})
        served = [res for res, _ in serve(row, replay_config(row, replay.settings))]
        finished = C.is_final(served[-1])  # else the guard stopped it where the recorded curve collapsed
        steps = [m.step for m in c.get_metric_history(r.info.run_id, C.TRAIN_LOSS)]
        epochs = 1 + max(res[C.EPOCH] for res in served if C.EPOCH in res)
        assert steps == list(range(epochs)), f"run {r.info.run_id}: epochs {steps}"
        trial_epochs += epochs
        trial = by_number[int(r.data.tags[C.OPTUNA_TRIAL])]
        assert (r.info.status, trial.state.name) == (("FINISHED", "COMPLETE") if finished else ("FAILED", "PRUNED"))
        if finished:
            objectives = [row.final[m] for m in ("linear_acc", "l0_density")]
            assert trial.values == [r.data.metrics["linear_acc"], r.data.metrics["l0_density"]] == objectives

    def whatif(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "jepa_ray.replay", "--tracking-uri", run.tracking_uri, *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    out = whatif("--sweep", parent.info.run_id, "--scheduler", "moasha", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    curve = c.get_metric_history(parent.info.run_id, "sweep/hypervolume")
    assert s["trials"] == trials and s["baseline_trial_epochs"] == trial_epochs
    # The sweep's final hypervolume is its curve's highest value (it never falls): two trials that end
    # with no epoch between them log two values at the same step, which MLflow may return in any order.
    assert s["baseline_hypervolume"] == pytest.approx(max(m.value for m in curve), rel=1e-12)
    assert s["whatif_trial_epochs"] < trial_epochs and s["stopped"] > 0 and s["seconds"] > 0
    assert set(s["lost_front_runs"]) <= {r.info.run_id for r in children}
    from jepa_ray.replay.cli import main as whatif_main  # in-process from here: no subprocess start

    capsys.readouterr()
    tpe = ["--tracking-uri", run.tracking_uri, "--sweep", parent.info.run_id, "--searcher", "tpe", "--seeds", "2"]
    assert whatif_main(tpe) == 0
    text = capsys.readouterr().out
    assert "trial-epochs" in text and "hypervolume" in text, text

    assert whatif_main(["--tracking-uri", run.tracking_uri, "--sweep", "0123456789abcdef"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --sweep '0123456789abcdef': no such run at {run.tracking_uri}"
    ]
    c.update_run(children[0].info.run_id, status="RUNNING")
    assert whatif_main(["--tracking-uri", run.tracking_uri, "--sweep", parent.info.run_id]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is still RUNNING" in err[0], err


def test_a_failed_row_serves_every_recorded_epoch_then_its_failure(replay):
    from jepa_ray.curves.table import STATUS_FAILED, Row

    row = replay.table.rows[3]
    failed = Row(**{**row.__dict__, "status": STATUS_FAILED, "failure": "non-finite loss at epoch 4 step 40"})
    failed.history = row.history[:4]
    results = [r for r, _ in serve(failed, replay_config(failed, {"collapse_guard": False}))]
    assert [r.get(C.EPOCH) for r in results] == [0, 1, 2, 3, None]
    assert results[-1] == {"failure": "non-finite loss at epoch 4 step 40", "failure_kind": "failed"}


def test_the_long_grid_is_a_latin_hypercube_over_the_default_spaces_ranges():
    """cifar10-long: 96 configurations that fill the search space's own ranges (each choice used
    equally often, each range's strata once), in the users' regime (warmup 10% of 30 epochs), the
    first 6 at three seeds; the same points every time."""
    from jepa_ray.curves.grids import grid
    from search_spaces import _projector, rectified, rectified_density

    g = grid("cifar10-long")
    configs = g.configurations()
    assert len(configs) == 96 and configs == grid("cifar10-long").configurations()
    assert g.base["warmup_epochs"] / g.base["epochs"] <= 0.1 and g.base["epochs"] >= 24
    for name, (low, high) in (
        ("lambd", rectified.LAMBD),
        ("p", rectified.P),
        ("target_density", rectified_density.DENSITY),
    ):
        values = sorted(c[name] for c in configs)
        assert low <= values[0] and values[-1] <= high
        # one point per stratum of the log range (4 significant digits of rounding aside)
        strata = [int(96 * math.log(v / low) / math.log(high / low) - 1e-3) for v in values]
        assert sorted(strata) == list(range(96)), name
    counts = {s: sum(c["num_slices"] == s for c in configs) for s in rectified.SLICES}
    assert set(counts.values()) == {16}
    for c in configs:
        *hidden, out = (int(w) for w in c["proj_dims"].split("-"))
        assert out in _projector.OUTPUT and len(hidden) <= 2 and all(h in _projector.HIDDEN for h in hidden)
    points = g.points()
    assert len(points) == 96 + 6 * 2 and {s for _, s in points[:18]} == {0, 1, 2}


# --------------------------------------------------------------------------------------------
# A table recorded from a space-filling design


def _design_table(path: Path) -> Path:
    """cifar10-long's points with made-up curves (no training): accuracy grows with lambd and the
    projector's output width and saturates over the epochs; the density follows the target."""
    grid = GRIDS["cifar10-long"]
    data_dir = str(path.parent)  # any directory: the rows' configs are checked, never read
    rows = []
    for params, seed in grid.points():
        quality = 0.3 + 0.2 * params["lambd"] + 0.05 * math.log2(int(params["proj_dims"].split("-")[-1])) / 10
        quality += 0.01 * seed
        density = params["target_density"]
        history = []
        for epoch in range(grid.base["epochs"]):
            acc = quality * (1 - math.exp(-(epoch + 1) / 6))
            history.append(
                {
                    C.EPOCH: epoch,
                    "online/linear_acc": acc,
                    "online/linear_acc_z": acc * 0.9,
                    "train/l0_density": density,
                    "train/rank_me": 50.0,
                    C.EPOCH_S: 10.0,
                }
            )
        final = {m: 0.5 for m in C.HEADLINE_METRICS}
        final.update({C.EPOCH: grid.base["epochs"] - 1, "linear_acc": quality, "l0_density": density})
        rows.append(finished_row(grid, params, seed, data_dir, history, final))
    return CurveTable(rows).write(path)


def test_a_design_table_is_searched_in_the_designs_own_space(tmp_path):
    """Every method proposes on the design's axes (floats over their ranges, never the recorded
    values), each proposal served by its nearest row; a row's own point serves that row; the
    projector is matched on its depth and widths; --sampler grid is refused."""
    from jepa_ray.replay.methods import make_space
    from jepa_ray.replay.tables import DesignSpace

    replay = Replay.open(str(_design_table(tmp_path / "design.parquet")), [])
    assert replay.design is GRIDS["cifar10-long"].design and replay.grid() is None
    space = replay.space(0)
    assert isinstance(space, DesignSpace)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recorded = {float(v) for v in replay.table.values("lambd")}
    for _ in range(20):
        trial = space(study.ask())
        proposal = trial["overrides"]
        assert set(proposal) >= {"lambd", "p", "target_density", "num_slices", "proj_depth", "proj_out"}
        assert ("proj_hidden" in proposal) == (proposal["proj_depth"] > 1)
        assert proposal["lambd"] not in recorded  # a float of the range, not a recorded value
        row = replay.row(TrialSpec.from_config(trial))
        assert row.seed == 0 and row.key in replay.table
    for row in replay.front_rows()[:20]:
        assert nearest_row(replay.table, space.proposal(row)).key == row.key
    mu_space = make_space(replay, "mu", 0)
    assert [d.name for d in mu_space.dims][:3] == ["lambd", "p", "mu"]


def test_every_method_runs_on_a_design_table_and_a_grid_sampler_is_refused(tmp_path):
    from jepa_ray import sweep

    path = _design_table(tmp_path / "design.parquet")
    replay = Replay.open(str(path), [])
    _, best = attainable(replay, OBJECTIVES)
    for name, method in METHODS.items():
        result = run_method(replay, method, OBJECTIVES, seed=0, budget=300, max_concurrent=2, min_epochs=3)
        assert 0 < result.hypervolume <= best + 1e-12, name
    with pytest.raises(UsageError, match="--sampler grid: --replay .* holds a space-filling design"):
        sweep.plan(
            sweep.SweepOptions(
                space="rectified", replay=str(path), sampler="grid", tracking_uri=f"sqlite:///{tmp_path}/m.db"
            )
        )
