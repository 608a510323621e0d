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
    w.call(lambda client: client.set_tag(ref.run_id, "done", "yes"))
    assert w.flush(timeout=30) and w.pending == 0
    assert c.calls[0] == ("create_run", "trial-0") and c.calls[-1] == ("set_tag", "run-1", "done", "yes")
    batches = [call for call in c.calls if call[0] == "log_batch"]
    assert sum(n for _, _, n in batches) == 100 and len(batches) < 50  # strings left out, writes merged
    assert all(run == "run-1" for _, run, _ in batches)


def test_queueing_does_not_wait_for_a_slow_store():
    c = FakeClient(delay=0.05)
    w = MlflowWriter("fake://", client=c)
    ref = RunRef("run-x")
    start = time.perf_counter()
    for step in range(40):
        w.log_metrics(ref, {"m": float(step)}, step=step)
        w.call(lambda client, s=step: client.set_tag("run-x", "step", str(s)))
    queued = time.perf_counter() - start
    assert queued < 0.5  # 80 writes at 50 ms each take 4 s on the writer's thread
    assert w.flush(timeout=60) and len(c.calls) >= 40


def test_a_store_that_keeps_failing_stops_the_writer_with_one_line():
    w = MlflowWriter("http://127.0.0.1:9", client=FakeClient(fail=True), retries=2, backoff_s=0.01)
    w.call(lambda client: client.set_tag("r", "k", "v"))
    assert not w.flush(timeout=30)
    assert w.error.startswith("MLflow at http://127.0.0.1:9 refused writes 3 times") and "\n" not in w.error
    with pytest.raises(WriterFailed, match="Connection refused"):
        w.check()
    w.call(lambda client: client.set_tag("r", "k", "v"))  # queued after the failure: not attempted
    assert not w.flush(timeout=5)


def test_a_bounded_queue_makes_a_fast_producer_wait_instead_of_growing():
    c = FakeClient(delay=0.01)
    w = MlflowWriter("fake://", client=c, maxsize=5)
    ref = RunRef("r")
    done = threading.Event()

    def produce():
        for step in range(30):
            w.call(lambda client, s=step: client.set_tag("r", "s", str(s)))
        done.set()

    threading.Thread(target=produce).start()
    peak = 0
    while not done.is_set():
        peak = max(peak, w.pending)
        time.sleep(0.001)
    assert peak <= 5 and w.flush(timeout=30) and len(c.calls) == 30
    del ref


# --------------------------------------------------------------------------------------------
# End to end, through a tracking server


def _server(tmp_path: Path, port: int) -> subprocess.Popen:
    db = tmp_path / "server.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(tmp_path / "artifacts")]
        + ["--workers", "1"],
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
            return proc
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "mlflow server did not start"
            time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_gone_mid_sweep_stops_it_with_one_line_and_resume_records_everything(ray_cluster, tmp_path):
    from test_sweep import sweep_env

    port = 5871
    server = _server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(ROOT / "sweeps" / "rectified.py"), "--address", ray_cluster, "--tracking-uri", uri]
    cmd += [
        "--smoke",
        "--num-samples",
        "6",
        "--max-concurrent",
        "1",
        "--seed",
        "0",
        "--storage-path",
        str(tmp_path / "ray"),
    ]
    cmd += ["--optuna-storage", f"sqlite:///{tmp_path}/optuna.db", "--experiment", "writer"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        from mlflow.tracking import MlflowClient

        c = MlflowClient(uri)
        deadline = time.monotonic() + 300
        while True:  # let two trials finish, then take the server away
            exp = c.get_experiment_by_name("writer")
            if exp and len(c.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")) >= 2:
                break
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(1)
        _stop(server)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"error: MLflow at {uri} refused writes") and "--resume" in lines[0]

    server = _server(tmp_path, port)
    try:
        again = subprocess.run(
            cmd + ["--resume"], cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stderr[-3000:]
        exp = c.get_experiment_by_name("writer")
        trials = c.search_runs([exp.experiment_id], "tags.`jepa_ray.role` = 'trial'")
        keys = [r.data.tags["jepa_ray.params_key"] for r in trials]
        assert len(set(keys)) == 6 and len(keys) == 6, sorted(keys)  # each trial once
        assert {r.info.status for r in trials} == {"FINISHED"}
        assert all("linear_acc" in r.data.metrics for r in trials)
    finally:
        _stop(server)


@pytest.mark.slow
def test_sigterm_mid_sweep_loses_nothing_and_resume_finishes_exactly_once(ray_cluster, tmp_path):
    from test_sweep import client, load_study, parent_and_children, sweep_command, sweep_env

    args = ("--smoke", "--num-samples", "5", "--max-concurrent", "1", "--seed", "0")
    proc = subprocess.Popen(
        sweep_command(tmp_path, *args, address=ray_cluster),
        cwd=tmp_path,
        env=sweep_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    db = tmp_path / "mlflow.db"
    while True:  # SIGTERM once two trials ended
        if db.exists():
            import sqlite3

            with sqlite3.connect(db) as con:
                ended = con.execute(
                    "SELECT COUNT(*) FROM runs WHERE status = 'FINISHED' AND name LIKE 'trial-%'"
                ).fetchone()[0]
            if ended >= 2:
                break
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]

    from test_sweep import run_sweep

    again = run_sweep(tmp_path, *args, "--resume", address=ray_cluster)
    assert again.returncode == 0, again.output()
    parent, children = parent_and_children(again)
    keys = [r.data.tags["jepa_ray.params_key"] for r in children]
    assert len(keys) == len(set(keys)) == 5 and {r.info.status for r in children} == {"FINISHED"}
    c = client(again)
    for r in children:  # every epoch exactly once
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "train/loss")]
        assert steps == [0], steps
    study = load_study(again, parent)
    assert sorted(t.state.name for t in study.get_trials() if t.state.name != "FAIL") == ["COMPLETE"] * 5
