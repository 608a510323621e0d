"""The MLflow writer that keeps the sweep's writes off Tune's event loop: everything queued is
written in order, metric writes to one run are batched, flush waits for all of it, a failing store
stops it with one line; and, end to end, a sweep whose tracking server goes away stops with that
line and resumes exactly once, and a SIGTERM mid-sweep loses nothing that --resume cannot finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jepa_ray.tracking import ops
from jepa_ray.tracking.writer import MlflowWriter, RunRef, WriterFailed

ROOT = Path(__file__).resolve().parents[1]


class FakeClient:
    """Records calls; `fail` makes every call raise."""

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.calls: list[tuple] = []
        self.fail, self.delay = fail, delay
        self.runs = 0

    def _call(self, *what):
        if self.fail:
            raise ConnectionError("Connection refused")
        time.sleep(self.delay)
        self.calls.append(what)

    def create_run(self, exp_id, run_name, tags):
        self._call("create_run", run_name)
        self.runs += 1

        class Run:
            class info:
                run_id = f"run-{self.runs}"

        return Run

    def log_batch(self, run_id, metrics):
        self._call("log_batch", run_id, len(metrics))

    def set_tag(self, run_id, key, value):
        self._call("set_tag", run_id, key, value)


def test_writes_happen_in_order_with_metrics_batched_and_flush_waits_for_them():
    c = FakeClient(delay=0.002)
    w = MlflowWriter("fake://", client=c)
    ref = w.create_run(RunRef(), "0", "trial-0", {})
    for epoch in range(50):
        w.log_metrics(ref, {"train/loss": 1.0 / (epoch + 1), "online/linear_acc": 0.5, "label": "no"}, step=epoch)
    w.send(ops.SetTags(ref, {"done": "yes"}))
    assert w.flush(timeout=30) and w.pending == 0
    assert c.calls[0] == ("create_run", "trial-0") and c.calls[-1] == ("set_tag", "run-1", "done", "yes")
    batches = [call for call in c.calls if call[0] == "log_batch"]
    assert sum(n for _, _, n in batches) == 100 and len(batches) < 50  # strings left out, writes merged
    assert all(run == "run-1" for _, run, _ in batches)


def test_metric_writes_to_one_run_merge_across_other_runs_but_each_run_keeps_its_order():
    from jepa_ray.tracking.ops import CreateRun, Finish, Flush, LogBatch
    from jepa_ray.tracking.writer import _merge

    new, r1, r1_again = RunRef(), RunRef("r1"), RunRef("r1")
    create = CreateRun(new, "0", "trial-0", {})
    finish = Finish(r1, {}, None, None, "FINISHED")
    queued = [
        create,
        LogBatch(new, ["a0"]),
        LogBatch(r1, ["b0"]),
        LogBatch(new, ["a1"]),  # joins a0, past r1's write
        finish,
        LogBatch(r1, ["b1"]),  # after r1's finish: stays after it
        LogBatch(r1_again, ["b2"]),  # the same run through another reference: joins b1
        Flush(7),
        LogBatch(new, ["a2"]),  # after a flush: a write of its own
    ]
    assert _merge(queued) == [
        create,
        LogBatch(new, ["a0", "a1"]),
        LogBatch(r1, ["b0"]),
        finish,
        LogBatch(r1, ["b1", "b2"]),
        Flush(7),
        LogBatch(new, ["a2"]),
    ]


def test_a_backed_up_writer_makes_one_request_per_run_not_per_result():
    gate = threading.Event()

    class Held(FakeClient):  # the store stalls on the first run's creation while trials report
        def create_run(self, exp_id, run_name, tags):
            gate.wait(30)
            return super().create_run(exp_id, run_name, tags)

    c = Held()
    w = MlflowWriter("fake://", client=c)
    refs = [w.create_run(RunRef(), "0", f"trial-{i}", {}) for i in range(4)]
    for epoch in range(30):  # four trials reporting in turn
        for ref in refs:
            w.log_metrics(ref, {"m": float(epoch)}, step=epoch)
    gate.set()
    assert w.flush(timeout=30)
    batches = [call for call in c.calls if call[0] == "log_batch"]
    assert sum(n for _, _, n in batches) == 120 and len(batches) <= 8  # 120 results, at most 2 takes x 4 runs


def test_queueing_does_not_wait_for_a_slow_store():
    gate = threading.Event()

    class Stalled(FakeClient):
        def _call(self, *what):
            gate.wait(60)  # the store answers nothing until the writes are queued
            super()._call(*what)

    c = Stalled()
    w = MlflowWriter("fake://", client=c)
    ref = RunRef("run-x")
    for step in range(40):
        w.log_metrics(ref, {"m": float(step)}, step=step)
        w.send(ops.SetTags(ref, {"step": str(step)}))
    assert c.calls == []  # all 80 writes queued while the store had taken none
    gate.set()
    assert w.flush(timeout=60) and len(c.calls) >= 40


def test_a_store_that_keeps_failing_stops_the_writer_with_one_line(capsys):
    w = MlflowWriter("http://127.0.0.1:9", client=FakeClient(fail=True), patience_s=0.3, backoff_s=0.01)
    start = time.monotonic()
    w.send(ops.SetTags(RunRef("r"), {"k": "v"}))
    assert not w.flush(timeout=30)
    assert time.monotonic() - start >= 0.3  # tried again for its patience, then gave up
    assert w.error.startswith("MLflow at http://127.0.0.1:9 refused writes for 0 s (") and "\n" not in w.error
    with pytest.raises(WriterFailed, match="Connection refused"):
        w.check()
    w.send(ops.SetTags(RunRef("r"), {"k": "v"}))  # queued after the failure: not attempted
    assert not w.flush(timeout=5)
    said = capsys.readouterr().err.splitlines()
    assert said == [
        "warning: MLflow at http://127.0.0.1:9 did not take a write (Connection refused); "
        "trying again for up to 0 s (--tracking-patience)"
    ]


class SlowServer(FakeClient):
    """A busy tracking server: its first `lost` requests time out on the client's side although
    the server carries them out; search_runs finds the runs it made."""

    def __init__(self, lost: int):
        super().__init__()
        self.lost, self.made = lost, []

    def _call(self, *what):
        self.calls.append(what)
        if self.lost > 0:
            self.lost -= 1
            raise TimeoutError("Read timed out. (read timeout=15)")

    def create_run(self, exp_id, run_name, tags):
        self.made.append(tags)
        run_id = f"run-{len(self.made)}"
        self._call("create_run", run_name)

        class Run:
            class info:
                pass

        Run.info.run_id = run_id
        return Run

    def search_runs(self, exp_ids, query, max_results):
        hits = [f"run-{i + 1}" for i, tags in enumerate(self.made) if all(f"'{v}'" in query for v in tags.values())]

        class Run:
            class info:
                run_id = hits[0] if hits else None

        return [Run] if hits else []


def test_a_busy_store_is_waited_for_and_a_run_whose_reply_was_lost_is_not_made_twice(capsys):
    from jepa_ray.contract import PARENT, TRIAL_ID

    c = SlowServer(lost=3)  # create_run, then the first metric write twice
    w = MlflowWriter("http://busy", client=c, patience_s=30, backoff_s=0.01)
    ref = w.create_run(RunRef(), "0", "trial-0", {PARENT: "p", TRIAL_ID: "t_00000"})
    w.log_metrics(ref, {"m": 1.0}, step=0)
    w.send(ops.SetTags(ref, {"done": "yes"}))
    assert w.flush(timeout=30) and w.error is None
    assert len(c.made) == 1  # the server made the run; the writer's second try found it
    assert c.calls[-1] == ("set_tag", "run-1", "done", "yes")
    assert [call for call in c.calls if call[0] == "log_batch"] == [("log_batch", "run-1", 1)] * 3
    said = capsys.readouterr().err.splitlines()  # the user sees the wait begin and end, once each
    assert len(said) == 2
    assert said[0].startswith("warning: MLflow at http://busy did not take a write (Read timed out.")
    assert said[0].endswith("trying again for up to 30 s (--tracking-patience)")
    assert said[1].startswith("MLflow at http://busy takes writes again (after ")


def test_a_server_that_keeps_hiccuping_is_announced_once_a_minute_not_per_hiccup():
    from jepa_ray.tracking.writer import WARN_EVERY_S, _Executor

    said: list[str] = []
    c = SlowServer(lost=0)
    ex = _Executor("http://busy", c, patience_s=30, backoff_s=0.01, say=said.append)

    def hiccup() -> None:
        c.lost = 1
        ex.run(ops.SetTags(RunRef("run-1"), {"k": "v"}))

    hiccup()
    hiccup()  # within the minute: not announced again
    assert len(said) == 2 and said[0].startswith("warning:") and said[1].startswith("MLflow at http://busy takes")
    ex.warned_at -= WARN_EVERY_S  # a minute later
    hiccup()
    assert ex.error is None and len(said) == 4 and said[2].startswith("warning:")


def test_a_bounded_queue_makes_a_fast_producer_wait_instead_of_growing():
    c = FakeClient(delay=0.01)
    w = MlflowWriter("fake://", client=c, maxsize=5)
    ref = RunRef("r")
    done = threading.Event()

    def produce():
        for step in range(30):
            w.send(ops.SetTags(ref, {"s": str(step)}))
        done.set()

    threading.Thread(target=produce).start()
    peak = 0
    while not done.is_set():
        peak = max(peak, w.pending)
        time.sleep(0.001)
    assert peak <= 5 and w.flush(timeout=30) and len(c.calls) == 30


def test_the_driver_s_writer_is_a_process_that_writes_a_real_store(tmp_path):
    """The default writer runs in a process of its own (no GIL shared with Tune's loop): runs it
    creates, their params, config artifact, metrics, tags and status land in the store."""
    from jepa_ray import config as config_lib
    from jepa_ray import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.experiment_id(uri, "w")
    w = MlflowWriter(uri)
    assert w.process and w._worker.pid != os.getpid()
    cfg = config_lib.resolve(config_lib.preset("smoke"))
    refs = [w.create_run(RunRef(), exp, f"trial-{i}", {"jepa_ray.role": "trial"}) for i in range(3)]
    for ref in refs:
        w.send(ops.LogParams(ref, config_lib.flatten(cfg)))
        w.send(ops.LogConfig(ref, config_lib.to_dict(cfg)))
        for epoch in range(4):
            w.log_metrics(ref, {"train/loss": 1.0 / (epoch + 1)}, step=epoch)
        w.send(ops.Finish(ref, {"jepa_ray.wall_s": "1.0"}, None, None, "FINISHED"))
    assert w.flush(timeout=120)
    w.close()
    c = tracking.client(uri)
    runs = c.search_runs([exp])
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1", "trial-2"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["lambd"] == str(cfg.loss.lambd)
        assert [m.step for m in c.get_metric_history(r.info.run_id, "train/loss")] == [0, 1, 2, 3]
        assert [a.path for a in c.list_artifacts(r.info.run_id)] == ["config.json"]


def test_a_pickled_writer_comes_back_as_a_writer_with_its_patience():
    """Tune pickles its callbacks with the experiment state: the copy is a writer with the
    original's patience (it used to start with the default 120 s and be told later), whose
    process starts only once something is written to it (Tune never writes through a copy):
    against a port nobody answers, it gives up after its own half second."""
    import pickle

    w = MlflowWriter("http://127.0.0.1:9", patience_s=0.5, backoff_s=0.05, process=True)
    copy = pickle.loads(pickle.dumps(w))
    try:
        assert (copy.tracking_uri, copy.patience_s, copy.backoff_s) == (w.tracking_uri, 0.5, 0.05)
        assert copy._worker is None and copy.flush(timeout=1) and copy.pending == 0  # no process yet
        copy.create_run(RunRef(), "0", "trial-0", {})
        assert copy._worker.pid != w._worker.pid
        assert not copy.flush(timeout=90)
        assert copy.error is not None and copy.error.startswith("MLflow at http://127.0.0.1:9 refused writes")
    finally:
        copy.close()
        w.close()


def test_a_writer_whose_driver_was_killed_writes_what_was_queued_and_exits(tmp_path):
    """A driver killed with SIGKILL cannot close its writer: the writer notices that its parent
    is gone, writes what had reached its queue, and exits (it used to wait on its queue for ever)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    driver = f"""
import os, signal
from jepa_ray import tracking
from jepa_ray.tracking.writer import MlflowWriter, RunRef
exp = tracking.experiment_id({uri!r}, "orphan")
w = MlflowWriter({uri!r})
ref = w.create_run(RunRef(), exp, "trial-0", {{"jepa_ray.role": "trial"}})
for epoch in range(3):
    w.log_metrics(ref, {{"train/loss": 1.0 / (epoch + 1)}}, step=epoch)
w.q.close(); w.q.join_thread()  # everything handed to the writer's pipe, none of it written yet maybe
print(w._worker.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    writer = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60  # a bound for a busy machine, not a speed goal
    while Path(f"/proc/{writer}").exists() and "Z" not in Path(f"/proc/{writer}/stat").read_text().split()[2:3]:
        assert time.monotonic() < deadline, "the writer outlived its killed driver"
        time.sleep(0.1)
    from jepa_ray import tracking

    c = tracking.client(uri)
    [run] = c.search_runs([c.get_experiment_by_name("orphan").experiment_id])
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [0, 1, 2]


def test_the_writer_process_does_not_run_the_drivers_script_again(tmp_path):
    """A spawned writer would import the driver's main script (the sweep script: Ray Tune, the
    whole driver) before serving; it does not, and its writes land."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    marker = tmp_path / "script-ran-in-a-child"
    script = tmp_path / "driver.py"
    script.write_text(
        f"""
import pathlib, sys
if __name__ != "__main__":
    pathlib.Path({str(marker)!r}).write_text(__name__)
else:
    from jepa_ray import tracking
    from jepa_ray.tracking.writer import MlflowWriter, RunRef
    exp = tracking.experiment_id({uri!r}, "script")
    w = MlflowWriter({uri!r})
    ref = w.create_run(RunRef(), exp, "trial-0", {{"jepa_ray.role": "trial"}})
    w.log_metrics(ref, {{"train/loss": 0.5}}, step=0)
    assert w.flush(timeout=120), w.error
    w.close()
    print(sys.modules["__main__"].__file__)
"""
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(script)  # the driver's own __file__ is back
    assert not marker.exists(), marker.read_text()
    from jepa_ray import tracking

    c = tracking.client(uri)
    [run] = c.search_runs([c.get_experiment_by_name("script").experiment_id])
    assert [m.value for m in c.get_metric_history(run.info.run_id, "train/loss")] == [0.5]


# --------------------------------------------------------------------------------------------
# End to end, through a tracking server


def _server(tmp_path: Path, port: int) -> subprocess.Popen:
    """The tracking server as a cluster's head runs it (jepa_ray.serve_mlflow's command and
    environment: no MLflow job runner, whose Huey consumers cost a CPU-second each at start)."""
    from jepa_ray import serve_mlflow

    proc = subprocess.Popen(
        serve_mlflow.server_command("127.0.0.1", port, str(tmp_path / "artifacts"), workers=1),
        env=serve_mlflow.server_env(f"sqlite:///{tmp_path / 'server.db'}"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            # /health answers before the store is ready (a new database is still migrating: 503)
            api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
            urllib.request.urlopen(api, timeout=5)
            return proc
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "mlflow server did not start"
            time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_gone_mid_sweep_stops_it_with_one_line_and_resume_records_everything(ray_cluster, tmp_path):
    import socket

    from test_sweep import sweep_env

    with socket.socket() as sock:  # a free port (a fixed one could meet a server some other run left)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = _server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(ROOT / "sweeps" / "rectified.py"), "--address", ray_cluster, "--tracking-uri", uri]
    cmd += [
        "--smoke",
        "--num-samples",
        "3",
        "--epochs",
        "6",  # trials of seconds, so that the server goes while the sweep still has writes to make
        "--max-concurrent",
        "1",
        "--seed",
        "0",
        "--storage-path",
        str(tmp_path / "ray"),
        "--tracking-patience",
        "4",  # a gone server: the sweep stops after 4 s of tries, not the default 120
    ]
    cmd += ["--optuna-storage", f"sqlite:///{tmp_path}/optuna.db", "--experiment", "writer"]
    env = {**sweep_env(), "PYTHONUNBUFFERED": "1"}  # each line as the driver says it
    log = tmp_path / "stderr.txt"
    with open(log, "w") as errors:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
    try:
        from mlflow.tracking import MlflowClient

        c = MlflowClient(uri)
        deadline = time.monotonic() + 300
        while "\ntrial 1 " not in log.read_text():  # the driver says so before MLflow has all of it
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        _stop(server)  # a trial still to train, and what the writer had not written yet
        proc.wait(timeout=300)
        err = log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        if server.poll() is None:
            _stop(server)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"error: MLflow at {uri} refused writes") and "--resume" in lines[0]
    assert f"warning: MLflow at {uri} did not take a write" in err  # the writer process said so at once

    server = _server(tmp_path, port)
    try:
        again = subprocess.run(
            cmd + ["--resume"], cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "View run" not in again.stdout + again.stderr  # MLflow's two lines per run end: not at scale
        exp = c.get_experiment_by_name("writer")
        trials = c.search_runs([exp.experiment_id], "tags.`jepa_ray.role` = 'trial'")
        keys = [r.data.tags["jepa_ray.params_key"] for r in trials]
        assert len(set(keys)) == 3 and len(keys) == 3, sorted(keys)  # each trial once
        assert {r.info.status for r in trials} == {"FINISHED"}
        assert all("linear_acc" in r.data.metrics for r in trials)
    finally:
        _stop(server)


@pytest.mark.slow
def test_sigterm_mid_sweep_loses_nothing_and_resume_finishes_exactly_once(ray_cluster, tmp_path):
    from test_sweep import client, load_study, parent_and_children, sweep_command, sweep_env, trial_run_states

    args = ("--smoke", "--num-samples", "4", "--epochs", "3", "--max-concurrent", "1", "--seed", "0")
    log = tmp_path / "sweep.log"
    with open(log, "w") as output:
        proc = subprocess.Popen(
            sweep_command(tmp_path, *args, address=ray_cluster),
            cwd=tmp_path,
            env={**sweep_env(), "PYTHONUNBUFFERED": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    deadline = time.monotonic() + 300
    while True:  # SIGTERM once two trials' runs are FINISHED and a third one's is open: a trial mid-run
        states = [status for _, status, _ in trial_run_states(tmp_path / "mlflow.db")]
        if states.count("FINISHED") >= 2 and "RUNNING" in states:
            break
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    out = log.read_text()
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]

    from test_sweep import run_sweep

    again = run_sweep(tmp_path, *args, "--resume", address=ray_cluster)
    assert again.returncode == 0, again.output()
    parent, children = parent_and_children(again)
    keys = [r.data.tags["jepa_ray.params_key"] for r in children]
    assert len(keys) == len(set(keys)) == 4 and {r.info.status for r in children} == {"FINISHED"}
    resumed = [r for r in children if r.data.tags.get("jepa_ray.resumed") == "true"]
    assert len(resumed) == 1, [r.data.tags for r in children]  # the trial SIGTERM cut short, in its run
    for r in children:  # ... which lost the stopped sweep's failure: its reason and its kind
        assert not {"jepa_ray.failure", "jepa_ray.failure_kind"} & set(r.data.tags), r.data.tags
    c = client(again)
    for r in children:  # every epoch exactly once
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "train/loss")]
        assert steps == [0, 1, 2], steps
    study = load_study(again, parent)
    assert sorted(t.state.name for t in study.get_trials() if t.state.name != "FAIL") == ["COMPLETE"] * 4


def test_a_run_made_by_a_lost_try_is_found_in_a_real_store_by_its_sweep_and_trial(tmp_path):
    from jepa_ray import tracking
    from jepa_ray.contract import PARENT, TRIAL_ID

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp, c = tracking.experiment_id(uri, "lost"), tracking.client(uri)
    tags = {PARENT: "sweep-a", TRIAL_ID: "abc_00001", "jepa_ray.role": "trial"}
    made = ops.CreateRun(RunRef(), exp, "trial-1", tags).apply(c, None)
    assert ops.created_run(c, exp, "trial-1", tags) == made
    assert ops.created_run(c, exp, "trial-1", {**tags, TRIAL_ID: "abc_00002"}) is None
    assert ops.created_run(c, exp, "trial-1", {**tags, PARENT: "sweep-b"}) is None
    assert ops.created_run(c, exp, "trial-1", {"jepa_ray.role": "trial"}) is None  # no identity: made anew


def test_trials_cut_short_by_a_tracking_server_gone_say_so():
    from jepa_ray.errors import StorageFull
    from jepa_ray.outcome import Ledger
    from jepa_ray.sweep.failures import EpochBudget, FailureLimit, stop_reason

    limit = FailureLimit(0, Ledger(("linear_acc", "l0_density")))
    gone = "MLflow at http://head:5000 refused writes for 120 s (9 tries): ConnectionError"
    assert stop_reason(limit, EpochBudget(), tracking=gone) == f"stopped before its end: {gone}"
    assert stop_reason(limit, EpochBudget()) == "stopped before its end: the sweep ended first"
    full = StorageFull("/data/mlflow.db")  # a full store is named, whatever else the writer said
    assert stop_reason(limit, EpochBudget(), full, tracking=str(full)) == f"stopped before its end: {full}"

    from types import SimpleNamespace

    from jepa_ray.sweep import tuner

    ledger = Ledger(("linear_acc", "l0_density"))
    ledger.start("running")  # the trial Tune stopped with the sweep when the writer gave up
    told: list[str] = []
    run = SimpleNamespace(
        ledger=ledger,
        limit=FailureLimit(0, ledger),
        budget=EpochBudget(),
        searcher=SimpleNamespace(unended=lambda: [], on_trial_complete=told.append),
    )
    writer = SimpleNamespace(error=gone, flush=lambda: None, close=lambda: None)
    mlflow_cb = SimpleNamespace(write_end=lambda trial_id, end: None)
    assert tuner._close_stopped_trials(SimpleNamespace(), run, mlflow_cb, writer, None) is None
    assert told == ["running"] and ledger.get("running").reason == f"stopped before its end: {gone}"


def test_a_reopened_run_loses_the_failure_tags_the_stopped_sweep_gave_it(tmp_path):
    """A trial stopped with its sweep is FAILED with a reason and its kind; re-run on --resume,
    its run is RUNNING again with neither (else a finished run would still say "unfinished")."""
    from jepa_ray import tracking
    from jepa_ray.contract import FAILURE, FAILURE_KIND, RESUMED, TRIAL_ID

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp, c = tracking.experiment_id(uri, "reopen"), tracking.client(uri)
    failed = {FAILURE: "stopped before its end: SIGTERM", FAILURE_KIND: "unfinished"}
    run_id = c.create_run(exp, tags=failed).info.run_id
    c.set_terminated(run_id, "FAILED")
    ops.Reopen(RunRef(run_id), (FAILURE, FAILURE_KIND), {TRIAL_ID: "abc_00003"}).apply(c, run_id)
    run = c.get_run(run_id)
    assert run.info.status == "RUNNING" and not {FAILURE, FAILURE_KIND} & set(run.data.tags), run.data.tags
    assert run.data.tags[RESUMED] == "true" and run.data.tags[TRIAL_ID] == "abc_00003"


# --------------------------------------------------------------------------------------------
# One writer per sweep: a resumed driver waits for a killed one's writer


def _holder(path: Path, driver: int, then: str = "time.sleep(600)") -> subprocess.Popen:
    """A process that takes the sweep's lock as a writer of `driver` would, then runs `then`."""
    code = f"""
import sys, time
from jepa_ray.tracking import writer_lock
assert writer_lock.hold({str(path)!r}, {driver}) is not None
print("held", flush=True)
{then}
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_resume_waits_until_the_killed_drivers_writer_has_written_and_ended(tmp_path):
    """The writer of a killed driver still writes what was queued (the chaos benchmark saw a
    resumed driver read MLflow meanwhile: a run created twice, epochs logged twice). The resumed
    driver returns from the wait only once that writer ended, so its last write is visible."""
    from jepa_ray.tracking import writer_lock

    lock, done = tmp_path / "writer.lock", tmp_path / "written"
    proc = _holder(lock, _dead_pid(), then=f"time.sleep(1.5); open({str(done)!r}, 'w').write('x')")
    said: list[str] = []
    writer_lock.wait_for_previous_writer(lock, "s", patience_s=120, say=said.append)
    assert done.exists() and proc.wait(timeout=30) == 0
    assert said == [
        f"waiting for the stopped driver's MLflow writer (pid {proc.pid}) to finish its writes before resuming"
    ]
    said.clear()
    writer_lock.wait_for_previous_writer(lock, "s", patience_s=120, say=said.append)  # free: no wait, no line
    assert said == []


def test_a_writer_still_writing_after_the_patience_is_stopped(tmp_path):
    from jepa_ray.tracking import writer_lock

    lock = tmp_path / "writer.lock"
    proc = _holder(lock, _dead_pid())
    said: list[str] = []
    writer_lock.wait_for_previous_writer(lock, "s", patience_s=0.5, say=said.append)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert len(said) == 2 and said[1].startswith(
        f"the stopped driver's MLflow writer (pid {proc.pid}) still writes after"
    )


def test_resuming_a_sweep_whose_driver_still_runs_is_a_usage_error(tmp_path):
    """Its driver alive (here: this test's process) means the sweep still runs: a second driver
    on it would write every trial twice."""
    from jepa_ray.errors import UsageError
    from jepa_ray.tracking import writer_lock

    lock = tmp_path / "writer.lock"
    proc = _holder(lock, os.getpid())
    try:
        with pytest.raises(
            UsageError, match=rf"^--resume: sweep s is still running on this machine \(driver pid {os.getpid()}\)"
        ):
            writer_lock.wait_for_previous_writer(lock, "s", patience_s=120, say=print)
        assert writer_lock.hold(lock, os.getpid(), wait_s=0.3) is None  # a second writer does not stall on it
    finally:
        proc.kill()
        proc.wait(timeout=30)
    writer_lock.check_not_running(lock, "s")  # its holder gone: free


def test_a_process_writer_holds_its_sweeps_lock_until_it_is_closed(tmp_path):
    from jepa_ray.tracking import writer_lock

    lock = writer_lock.lock_path(f"sqlite:///{tmp_path}/mlflow.db", "exp", "sweep-1")
    assert lock != writer_lock.lock_path(f"sqlite:///{tmp_path}/mlflow.db", "exp", "sweep-2")
    w = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", process=True, lock=str(lock))
    try:
        deadline = time.monotonic() + 60  # the spawned process takes it once it runs
        while writer_lock._free(lock):
            assert time.monotonic() < deadline and w._worker.is_alive(), "the writer never took its lock"
            time.sleep(0.05)
        driver, started, pid = lock.read_text().split()
        assert (int(driver), int(pid)) == (os.getpid(), w._worker.pid) and started.isdigit()
    finally:
        w.close()
    assert writer_lock._free(lock)


def test_resume_of_a_sweep_still_running_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    from jepa_ray import cluster, sweep, tracking
    from jepa_ray.tracking import writer_lock

    monkeypatch.setenv(writer_lock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.experiment_id(uri, "busy")
    tracking.start_sweep_run(uri, exp, "busy-1", {}, {})
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    proc = _holder(writer_lock.lock_path(uri, "busy", "busy-1"), os.getpid())
    try:
        code = sweep.main(
            ["--resume", "--name", "busy-1", "--tracking-uri", uri, "--experiment", "busy"]
            + ["--storage-path", str(tmp_path / "ray")],
            space="rectified",
            preset="digits",
        )
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    running = f"sweep busy-1 is still running on this machine (driver pid {os.getpid()})"
    assert last == f"error: --resume: {running}; stop it (Ctrl-C) before resuming it"


def test_a_lock_that_cannot_be_made_leaves_the_writer_writing_and_nothing_to_wait_for(tmp_path):
    """A lock folder this user cannot write (another user's on a shared head, here a path under a
    file) costs the safeguard, never the sweep: the writer goes on without a lock."""
    from jepa_ray.tracking import writer_lock

    (tmp_path / "file").write_text("")
    lock = tmp_path / "file" / "writer.lock"
    assert writer_lock.hold(lock, os.getpid()) is None
    writer_lock.wait_for_previous_writer(lock, "s", patience_s=120, say=pytest.fail)
    w = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", process=True, lock=str(lock))
    try:
        ref = w.create_run(RunRef(), "0", "trial-0", {})
        assert w.flush(timeout=120) and w.error is None and ref is not None
    finally:
        w.close()


def test_a_writer_process_that_died_is_a_failure_the_driver_hears(tmp_path):
    """A writer that crashed or was killed writes nothing more: check() and flush() say so (the
    sweep stops with one line), where flush() used to return False with no error and a sweep
    ended 'successfully' with none of its trial runs (seen on the real `ray up` head)."""
    w = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", process=True)
    try:
        w.check()
        os.kill(w._worker.pid, signal.SIGKILL)
        w._worker.join(timeout=60)
        with pytest.raises(WriterFailed, match=r"^the MLflow writer process died \(exit code -9\)$"):
            w.check()
        assert not w.flush(timeout=5) and w.error == "the MLflow writer process died (exit code -9)"
    finally:
        w.close()
    closed = MlflowWriter(f"sqlite:///{tmp_path}/mlflow.db", process=True)
    closed.close()
    closed.check()  # a writer closed on purpose is not a dead one
    assert closed.error is None
