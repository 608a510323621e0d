"""A newcomer's first hour (issue 22): bad data caught before Ray starts (exit 2, one line, in
seconds, nothing written to MLflow or Optuna), a fresh search on every run, flags spelt wrong
answered with what was meant, and sweeps that start their own Ray instance unless a cluster was
started for sharing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from jepa_ray import sweep

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _bad_data(kind: str, root: Path) -> tuple[list[str], str]:
    """(sweep arguments, what the one line must say) of a data directory that cannot feed a trial."""
    root.mkdir(parents=True)
    if kind == "no class folders":
        return ["--dataset", "imagefolder", "--data-dir", str(root)], "has no class folders"
    if kind == "an empty class folder":
        _jpeg(root / "cat" / "0.jpg", 0)
        (root / "dog").mkdir()
        return ["--dataset", "imagefolder", "--data-dir", str(root)], "has no images"
    if kind == "no readable image":
        for c in ("cat", "dog"):
            for i in range(3):
                (root / c).mkdir(exist_ok=True)
                (root / c / f"{i}.jpg").write_bytes(b"not an image")
        return ["--dataset", "imagefolder", "--data-dir", str(root)], "unreadable too"
    if kind == "a parquet without labels":
        image = [b"\xff\xd8 not really"] * 4
        _parquet(root / "train.parquet", {"image": image})
        _parquet(root / "test.parquet", {"image": image})
        return ["--dataset", "parquet", "--data-dir", str(root)], "missing column 'label'"
    if kind == "a missing split":
        _parquet(root / "train.parquet", {"image": [b"x"], "label": [0]})
        return ["--dataset", "parquet", "--data-dir", str(root)], "lacks train and test shards"
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind",
    ["no class folders", "an empty class folder", "no readable image", "a parquet without labels", "a missing split"],
)
def test_bad_data_exits_2_with_one_line_before_ray_and_writes_nothing(tmp_path, kind, monkeypatch, capsys):
    import ray

    args, fragment = _bad_data(kind, tmp_path / "data")
    started: list = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(k))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    code = sweep.main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--smoke", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not started  # the check itself, before Ray
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--num-smaples", "4"], "error: unrecognized argument --num-smaples; did you mean --num-samples?"),
        (["--lr", "0.1"], "error: --lr is not a sweep option; trial config keys go through --set lr=VALUE"),
        (["--num-sample", "4"], "error: unrecognized argument --num-sample; did you mean --num-samples?"),
    ],
)
def test_a_misspelt_or_abbreviated_flag_says_what_was_meant(tmp_path, capsys, argv, line):
    assert sweep.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_a_misspelt_objective_exits_2_before_ray(tmp_path, capsys):
    assert (
        sweep.main(["--objectives", "linear_acc:max,l0_densty:min", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'l0_densty' is not a final metric a trial reports; allowed: linear_acc" in err[0]
    assert not (tmp_path / "m.db").exists()


def test_resume_opens_the_study_the_sweep_recorded(tmp_path):
    """--resume without --optuna-storage finds the sweep's own study, not an empty one beside the
    tracking store."""
    from jepa_ray import contract, tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.experiment_id(uri, "rectified-lpjepa")
    recorded = f"sqlite:///{tmp_path}/elsewhere/optuna.db"
    tracking.start_sweep_run(uri, exp, "s", tags={contract.SWEEP_OPTUNA_STORAGE: recorded}, params={})
    plan = sweep.plan(sweep.SweepOptions(preset="digits-sweep", tracking_uri=uri, resume=True))
    assert plan.storage_url == recorded and plan.name == "s"


def test_each_sweep_without_seed_searches_anew_and_a_seed_repeats_it(tmp_path):
    """A sweep without --seed draws a fresh sampler seed (recorded and printed): its trials train
    with other seeds and its sampled configurations differ; the same --seed proposes the same."""

    def first_configs(seed: int | None) -> tuple[int, list[dict]]:
        plan = sweep.plan(
            sweep.SweepOptions(preset="digits-sweep", tracking_uri=f"sqlite:///{tmp_path}/m.db", seed=seed)
        )
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=plan.sampler)
        for point in plan.starting_points:
            study.enqueue_trial(point)
        configs = []
        for _ in range(len(plan.starting_points) + 2):
            trial = study.ask()
            configs.append(plan.space(trial))
            study.tell(trial, [0.5, 0.5])
        return plan.seed, configs

    seed_a, a = first_configs(None)
    seed_b, b = first_configs(None)
    assert seed_a != seed_b
    assert a[0]["seed"] != b[0]["seed"]  # the first trial: another training seed
    assert a[-1]["overrides"] != b[-1]["overrides"]  # the sampled ones: other configurations
    assert first_configs(seed_a)[1] == a and not (tmp_path / "m.db").exists()  # planning writes nothing


# --------------------------------------------------------------------------------------------
# Whose Ray instance a sweep uses

# Two trials replayed from the digits table: the same driver and Ray start as a training sweep,
# without the training (which these tests do not look at) and its minute of CPU.
REPLAYED_SWEEP = (
    "--replay",
    str(ROOT / "benchmarks" / "curves" / "digits.parquet"),
    "--num-samples",
    "2",
    "--seed",
    "0",
)


@pytest.mark.slow
def test_two_sweeps_at_once_each_start_their_own_ray_and_both_finish(tmp_path):
    procs = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "sweeps" / "rectified.py"), *REPLAYED_SWEEP],
                cwd=work,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "started a local Ray instance with" in out and "joined the Ray cluster" not in out, out[-3000:]
        assert "2 trials launched, 0 already finished, 0 failed" in out


@pytest.mark.slow
def test_a_sweep_joins_a_cluster_started_for_sharing(tmp_path):
    from ray._common.utils import reset_ray_address

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus", "2", "--port", "6391", "--disable-usage-stats"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        current = Path("/tmp/ray/ray_current_cluster")
        while not (current.is_file() and current.read_text().strip().endswith(":6391")):
            assert time.monotonic() < deadline and head.poll() is None, "ray start did not come up"
            time.sleep(1)
        out = subprocess.run(
            [sys.executable, str(ROOT / "sweeps" / "rectified.py"), *REPLAYED_SWEEP],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-3000:]
        assert "joined the Ray cluster at" in text and ":6391" in text, text[-3000:]
    finally:
        # SIGTERM to `ray start --block` alone: it stops its cluster in about 2 s. Sent to its
        # whole group, the CLI outlives its dying children by 30 s.
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reset_ray_address()


# --------------------------------------------------------------------------------------------
# Stopping a sweep started in the background


def test_a_sweep_started_in_the_background_stops_on_sigint(tmp_path):
    """`nohup sweep &` inherits SIGINT ignored; `kill -INT` must still stop it (exit 130). The
    sweep is held in its preflight by a tracking server that accepts and never answers."""
    hang = socket.create_server(("127.0.0.1", 0))
    hang.settimeout(120)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "sweeps" / "rectified.py"), "--seed", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{hang.getsockname()[1]}"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # what `cmd &` does
    )
    try:
        conn, _ = hang.accept()  # the sweep is in its preflight, past its start
        with conn:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        hang.close()
    assert proc.returncode == 130, out + err
    assert "interrupted:" in err
