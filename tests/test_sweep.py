"""The sweep end to end: `sweeps/rectified.py` as a user runs it, into a temporary MLflow store,
Optuna study and Ray storage.

Each sweep is a subprocess. All but one join the session's Ray instance (`ray_cluster`, with
`--address`): starting a Ray instance costs 5-40 s on a small CPU. The resume test starts its
own instance (`--address local`) in a new process group, kills its driver with SIGKILL and
checks that every process the driver started ends by itself; the whole group is killed after,
whatever happened, so nothing of the killed sweep disturbs the resumed one or other tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from scipy import stats

import jepa_ray
from jepa_ray import cluster, databases, serve_mlflow, sweep, tracking
from jepa_ray import config as config_lib
from jepa_ray import contract as tracking_contract
from jepa_ray.contract import FailureKind
from jepa_ray.data import dataset_info
from jepa_ray.errors import UsageError
from jepa_ray.train import EPOCH_METRICS, FINAL_METRICS
from jepa_ray.train import checkpoint as ckpt_lib

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sweeps" / "rectified.py"
EXPERIMENT = "test-sweep"
DESIGN_PARAMS = (
    "lambd",
    "num_slices",
    "p",
    "mu",
    "sigma",
    "proj_dims",
    "backbone",
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "seed",
)
SWEEP_TIMEOUT_S = 420

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------------------------
# Running a sweep and reading what it recorded


@dataclass
class Sweep:
    dir: Path
    returncode: int
    stdout: str
    stderr: str
    tracking: str | None = None
    """The tracking URI it was given (default: the sqlite store in its directory)."""
    optuna: str | None = None
    """The Optuna storage it was given (default: optuna.db beside the sqlite store)."""

    @property
    def tracking_uri(self) -> str:
        return self.tracking or f"sqlite:///{self.dir}/mlflow.db"

    @property
    def optuna_storage(self) -> str:
        return self.optuna or f"sqlite:///{self.dir}/optuna.db"

    def output(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def sweep_command(workdir: Path, *args: str, address: str, tracking_uri: str | None = None) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--address",
        address,
        "--experiment",
        EXPERIMENT,
        "--tracking-uri",
        tracking_uri or f"sqlite:///{workdir}/mlflow.db",
        "--storage-path",
        str(workdir / "ray"),
        *args,
    ]


def sweep_env(pythonpath: Path | None = None) -> dict[str, str]:
    """This process's environment (it holds the session cluster's auth mode) without a Ray
    address that could send the sweep to some other cluster."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a sweep started with start_new_session=True, and wait
    until none of its processes (driver, Ray services, trial workers) is alive."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while live_group_members(proc.pid):
        assert time.monotonic() < deadline, f"processes of the killed sweep survive: {live_group_members(proc.pid)}"
        time.sleep(0.2)


def live_group_members(pgid: int) -> list[int]:
    """Processes of a group that are not zombies (an orphan zombie may wait for a reaper)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def run_sweep(
    workdir: Path,
    *args: str,
    address: str,
    pythonpath: Path | None = None,
    tracking_uri: str | None = None,
    optuna_storage: str | None = None,
) -> Sweep:
    workdir.mkdir(parents=True, exist_ok=True)
    storage = ("--optuna-storage", optuna_storage) if optuna_storage else ()
    proc = subprocess.Popen(
        sweep_command(workdir, *args, *storage, address=address, tracking_uri=tracking_uri),
        cwd=workdir,
        env=sweep_env(pythonpath),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"sweep did not finish in {SWEEP_TIMEOUT_S} s:\n{out[-3000:]}\n{err[-3000:]}")
    return Sweep(workdir, proc.returncode, out, err, tracking_uri, optuna_storage)


def client(run: Sweep):
    return tracking.client(run.tracking_uri)


def parent_and_children(run: Sweep):
    c = client(run)
    exp = c.get_experiment_by_name(EXPERIMENT)
    parents = c.search_runs([exp.experiment_id], f"tags.`{tracking.ROLE}` = 'sweep'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    children = c.search_runs([exp.experiment_id], f"tags.`{tracking.PARENT}` = '{parent.info.run_id}'")
    return parent, children


def load_study(run: Sweep, parent) -> optuna.Study:
    return optuna.load_study(study_name=parent.data.tags[tracking.SWEEP_NAME], storage=run.optuna_storage)


def assert_optuna_matches_mlflow(study: optuna.Study, children, objectives=("linear_acc", "l0_density")) -> None:
    """Every COMPLETE Optuna trial has exactly one FINISHED MLflow child with the same
    parameters, and its objective values are that child's final metrics."""
    by_key = {}
    for run in children:
        key = run.data.tags[tracking.PARAMS_KEY]
        assert key not in by_key, f"two MLflow runs of the trial {key}"
        by_key[key] = run
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        run = by_key[sweep.params_key(trial.params)]
        assert run.info.status == "FINISHED"
        assert trial.values == pytest.approx([run.data.metrics[m] for m in objectives], rel=1e-12, abs=0)
        for name, value in trial.params.items():
            if name in config_lib.LEAVES:
                assert float(run.data.params[name]) == pytest.approx(value, rel=1e-12)


def l0_density_reference(p: float, mu: float, sigma: float) -> float:
    """P(X > 0) for X ~ GN_p(mu, sigma), from scipy's gennorm."""
    return float(stats.gennorm(beta=p, loc=mu, scale=sigma * p ** (1 / p)).sf(0.0))


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------------------------
# --smoke: parent + 2 children in the docs/design.md layout, Optuna in agreement


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workdir: Path) -> Iterator[str]:
    """`python -m jepa_ray.serve_mlflow --daemon` on a free loopback port over `backend_store_uri`,
    as a cluster's head starts it; yields its URI, stops it on exit."""
    port = free_port()
    files = ("--pid-file", str(workdir / "mlflow.pid"), "--log-file", str(workdir / "mlflow.log"))
    base = [sys.executable, "-m", "jepa_ray.serve_mlflow", *files]
    start = base + ["--daemon", "--port", str(port), "--backend-store-uri", backend_store_uri, "--workers", "1"]
    start += ["--artifacts-destination", str(workdir / "artifacts")]
    out = subprocess.run(start, cwd=workdir, env=sweep_env(ROOT), capture_output=True, text=True, timeout=300)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(base + ["--stop"], cwd=workdir, env=sweep_env(ROOT), capture_output=True, timeout=120)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_server():
    """A PostgreSQL server of this module's own (benchmarks/postgres.py: Debian's binaries, a
    temporary data directory); the tests that need one skip, in one line, where none can start."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from postgres import PostgresServer, unavailable

    why = unavailable()
    if why is not None:
        pytest.skip(f"no PostgreSQL server: {why}")
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def postgres_smoke_sweep(ray_cluster, postgres_server, tmp_path_factory) -> Iterator[Sweep]:
    """The smoke sweep as on a cluster with a real database: MLflow's tracking server backed by
    PostgreSQL (database `mlflow`), Optuna's study in database `optuna` of the same server."""
    work = tmp_path_factory.mktemp("postgres")
    optuna_url = postgres_server.create_database("optuna")
    with mlflow_server(postgres_server.create_database("mlflow"), work) as uri:
        args = ("--smoke", "--seed", "0")
        run = run_sweep(work, *args, address=ray_cluster, tracking_uri=uri, optuna_storage=optuna_url)
        assert run.returncode == 0, run.output()
        yield run


@pytest.fixture(params=["sqlite", "postgres"])
def smoke(request) -> Sweep:
    """One finished `--smoke --seed 0` sweep per store: a sqlite file (conftest.py's, shared with
    every test that reads one), and a tracking server on PostgreSQL with Optuna beside it."""
    return request.getfixturevalue("smoke_sweep" if request.param == "sqlite" else "postgres_smoke_sweep")


@pytest.mark.slow
def test_smoke_sweep_prints_front_and_commands(smoke):
    assert "Pareto front" in smoke.stdout
    assert "2 trials launched, 0 already finished, 0 failed" in smoke.stdout
    if smoke.tracking_uri.startswith("http"):
        assert f"MLflow: open {smoke.tracking_uri}/#/experiments/" in smoke.stdout
    else:
        assert f"mlflow ui --backend-store-uri {smoke.tracking_uri}" in smoke.stdout
    assert f"optuna-dashboard {smoke.optuna_storage}" in smoke.stdout


@pytest.mark.slow
def test_a_postgres_backed_sweep_is_in_postgres_and_resume_reads_it_back(
    postgres_smoke_sweep, postgres_server, ray_cluster, capsys
):
    """The tracking server wrote the runs and their epochs into PostgreSQL, Optuna its trials;
    `--resume` (without --optuna-storage: the recorded one) finds both there and trains nothing."""
    run = postgres_smoke_sweep
    parent, children = parent_and_children(run)
    runs = dict(postgres_server.query("mlflow", "SELECT run_uuid, status FROM runs"))
    assert runs == {r.info.run_id: "FINISHED" for r in [parent, *children]}
    epochs = postgres_server.query("mlflow", "SELECT run_uuid, step FROM metrics WHERE key = 'train/loss'")
    assert sorted(epochs) == sorted((r.info.run_id, 0) for r in children)
    states = postgres_server.query("optuna", "SELECT state FROM trials")
    assert [str(state) for (state,) in states] == ["COMPLETE", "COMPLETE"]
    again = run_sweep(run.dir, "--smoke", "--seed", "0", "--resume", address=ray_cluster, tracking_uri=run.tracking_uri)
    assert again.returncode == 0, again.output()
    assert "0 trials launched, 2 already finished, 0 failed" in again.stdout
    assert f"optuna-dashboard {run.optuna_storage}" in again.stdout
    assert len(postgres_server.query("optuna", "SELECT state FROM trials")) == 2
    # One database each: MLflow's and Optuna's schema versions share a table name.
    with pytest.raises(UsageError, match=r"holds MLflow's tables; allowed: a database of Optuna's own"):
        databases.check_optuna_storage(postgres_server.url("mlflow"))
    with pytest.raises(UsageError, match=r"holds Optuna's tables; allowed: a database of MLflow's own"):
        cluster.check_tracking_uri(postgres_server.url("optuna"), multi_node=False)
    capsys.readouterr()
    assert serve_mlflow.main(["--backend-store-uri", postgres_server.url("optuna"), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --backend-store-uri postgresql://") and "holds Optuna's tables" in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_smoke_sweep_parent_run(smoke):
    parent, children = parent_and_children(smoke)
    tags = parent.data.tags
    assert parent.info.status == "FINISHED"
    assert tags[tracking.ROLE] == "sweep" and tags[tracking.SWEEP_NAME]
    commit = tags["jepa_ray.git_commit"]
    assert commit.removesuffix("-dirty") == head_commit() and len(head_commit()) == 40
    assert tags["jepa_ray.sampler"] == "tpe" and tags["jepa_ray.sampler_seed"] == "0"
    assert tags["jepa_ray.optuna_storage"] == smoke.optuna_storage
    assert parent.data.params["num_samples"] == "2" and parent.data.params["base.epochs"] == "1"
    assert tags[tracking_contract.SWEEP_MAX_CONCURRENT] == "1"  # --smoke: one at a time, one actor
    assert len(children) == 2
    # The runs table's Source and Version columns, and the description on the run's page.
    assert tags[tracking_contract.SOURCE_NAME] == "sweeps/rectified.py"
    assert tags[tracking_contract.SOURCE_COMMIT] == head_commit()
    description = tags[tracking.DESCRIPTION]
    assert "linear_acc (higher is better)" in description and "l0_density (lower is better)" in description
    assert "sweep/hypervolume" in description and "python -m jepa_ray.pareto" in description
    # MLflow 3 opens the experiment on its training runs only with this tag.
    exp = client(smoke).get_experiment(parent.info.experiment_id)
    assert exp.tags[tracking_contract.EXPERIMENT_KIND] == "custom_model_development"


@pytest.mark.slow
def test_smoke_sweep_child_params_and_tags(smoke):
    parent, children = parent_and_children(smoke)
    trial_ids = set()
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert tags[tracking.ROLE] == "trial" and tags[tracking.PARENT] == parent.info.run_id
        trial_ids.add(tags[tracking.TRIAL_ID])
        assert set(params) == set(config_lib.LEAVES)  # the whole resolved config, flattened
        assert set(DESIGN_PARAMS) <= set(params)
        number = int(tags[tracking.OPTUNA_TRIAL])
        assert params["seed"] == str(number)  # sweep seed 0 + trial number
        assert (params["dataset"], params["epochs"], params["backbone"]) == ("digits", "1", "jepa_convnet_tiny")
        assert params["batch_size"] == "128" and params["target"] == "rgg"
        # The smoke sweep's trials are the space's first starting points, in order.
        point = sweep.load_space("rectified").STARTING_POINTS[number]
        assert float(params["mu"]) == point["mu"] and float(params["p"]) == point["p"]
        assert float(params["lambd"]) == point["lambd"] and int(params["num_slices"]) == point["num_slices"]
        assert params["proj_dims"] == "256-256-256"
        assert tags[tracking_contract.SOURCE_NAME] == "sweeps/rectified.py"
        # The Dataset column: the split sizes and a digest, once per run; no size is a metric.
        inputs = run.inputs.dataset_inputs
        assert len(inputs) == 1 and inputs[0].dataset.name == "digits"
        assert json.loads(inputs[0].dataset.profile) == {"train_images": 512, "test_images": 360}  # --smoke: 512
        assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "train"}
        assert not set(tracking_contract.DATA_SIZES) & set(run.data.metrics)
        p = float(params["p"])
        assert float(params["sigma"]) == pytest.approx(
            math.sqrt(math.gamma(1 / p) / math.gamma(3 / p)) / p ** (1 / p), rel=1e-12
        )
    assert len(trial_ids) == 2 and "" not in trial_ids


@pytest.mark.slow
def test_smoke_sweep_child_metrics(smoke):
    c = client(smoke)
    _, children = parent_and_children(smoke)
    for run in children:
        for name in EPOCH_METRICS:
            steps = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, name)]
            assert [s for s, _ in steps] == [0], (name, steps)  # one epoch, at step = epoch
            assert math.isfinite(steps[0][1])
        m = run.data.metrics
        for name in FINAL_METRICS:
            assert math.isfinite(m[name]), name
        for name in ("linear_acc", "linear_acc_z", "knn_acc", "l0_density", "l0_density_backbone"):
            assert 0.0 <= m[name] <= 1.0, name
        assert m["linear_acc"] > 0.3  # ten classes: well above chance even after one epoch
        params = run.data.params
        want = l0_density_reference(float(params["p"]), float(params["mu"]), float(params["sigma"]))
        assert m["target_l0_density"] == pytest.approx(want, rel=1e-6)
        assert 1.0 <= m["rank_me"] <= 256


@pytest.mark.slow
def test_smoke_sweep_checkpoint_tag_is_loadable(smoke):
    _, children = parent_and_children(smoke)
    for run in children:
        path = run.data.tags[tracking.CHECKPOINT]
        cfg = ckpt_lib.read_config(path)
        assert config_lib.flatten(cfg)["mu"] == float(run.data.params["mu"])
        assert ckpt_lib.read_metrics(path)["linear_acc"] == pytest.approx(run.data.metrics["linear_acc"])
        encoder = jepa_ray.load_encoder(path)
        size = cfg.data.image_size
        with torch.no_grad():
            h, z = encoder(
                torch.randint(0, 256, (5, dataset_info(cfg.data.dataset).channels, size, size), dtype=torch.uint8)
            )
        assert z.shape == (5, 256) and h.shape[0] == 5
        assert bool((z >= 0).all())  # rgg: the projector ends in a ReLU
        artifacts = {a.path for a in client(smoke).list_artifacts(run.info.run_id)}
        assert {"config.json", "activation_rates.png", "checkpoint"} <= artifacts
        # The param is what was asked (auto), the checkpoint's config and the tag what trained.
        assert run.data.params["precision"] == "auto" and cfg.system.precision in ("fp32", "bf16")
        assert run.data.tags[tracking_contract.PRECISION] == cfg.system.precision
        assert "checkpoint/config.json" in {a.path for a in client(smoke).list_artifacts(run.info.run_id, "checkpoint")}


@pytest.mark.slow
def test_smoke_sweep_optuna_study_matches_mlflow(smoke):
    parent, children = parent_and_children(smoke)
    study = load_study(smoke, parent)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert_optuna_matches_mlflow(study, children)
    assert {t.user_attrs["tune_trial_id"] for t in trials} == {r.data.tags[tracking.TRIAL_ID] for r in children}


# --------------------------------------------------------------------------------------------
# Failures


FIRST_TRIAL_FAILS = '''
"""Trial 0 asks for a batch larger than the training split: a config only the trainer rejects."""


def space(trial):
    overrides = {"mu": trial.suggest_float("mu", -1.0, 0.0)}
    if trial.number == 0:
        overrides["batch_size"] = 100000
    return overrides
'''


@pytest.mark.parametrize(
    "argv, samples, concurrent",
    [
        ([], 2, 1),
        (["--num-samples", "5"], 5, 1),
        (["--num-samples=5", "--max-concurrent=3"], 5, 3),
        (["--max-concurrent", "0"], 2, 0),  # 0: what the cluster fits, as without --smoke
    ],
)
def test_smoke_runs_two_trials_one_at_a_time_unless_told_otherwise(argv, samples, concurrent):
    from jepa_ray.sweep.cli import _smoke
    from jepa_ray.sweep.options import SweepOptions, parser

    argv = ["--smoke", *argv]
    opts = _smoke(SweepOptions(**vars(parser(SweepOptions()).parse_args(argv))), argv)
    assert (opts.num_samples, opts.max_concurrent) == (samples, concurrent)


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_others_finish(ray_cluster, tmp_path):
    package = f"jr_sweep_spaces_{uuid.uuid4().hex[:8]}"
    (tmp_path / "spaces" / package).mkdir(parents=True)
    (tmp_path / "spaces" / package / "__init__.py").write_text("")
    (tmp_path / "spaces" / package / "first_fails.py").write_text(textwrap.dedent(FIRST_TRIAL_FAILS))
    run = run_sweep(
        tmp_path / "sweep",
        "--smoke",
        "--space",
        f"{package}.first_fails",
        address=ray_cluster,
        pythonpath=tmp_path / "spaces",
    )
    assert run.returncode == 0, run.output()
    assert "2 trials launched, 0 already finished, 1 failed" in run.stdout

    parent, children = parent_and_children(run)
    assert parent.info.status == "FINISHED"
    by_number = {int(r.data.tags[tracking.OPTUNA_TRIAL]): r for r in children}
    assert sorted(by_number) == [0, 1]
    failed, finished = by_number[0], by_number[1]
    assert failed.info.status == "FAILED" and failed.data.params["batch_size"] == "100000"
    why = failed.data.tags[tracking.FAILURE]
    assert "\n" not in why and "'batch_size' = 100000 is larger than the training split" in why
    assert tracking.CHECKPOINT not in failed.data.tags and "linear_acc" not in failed.data.metrics
    assert finished.info.status == "FINISHED" and math.isfinite(finished.data.metrics["linear_acc"])

    study = load_study(run, parent)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: optuna.trial.TrialState.FAIL, 1: optuna.trial.TrialState.COMPLETE}
    assert "batch_size" in study.trials[0].user_attrs["failure"]
    assert_optuna_matches_mlflow(study, children)


@pytest.mark.slow
def test_max_failed_trials_stops_the_sweep_with_a_summary(ray_cluster, tmp_path):
    samples = 6
    run = run_sweep(
        tmp_path,
        "--smoke",
        "--set",
        "batch_size=100000",
        "--num-samples",
        str(samples),
        "--max-concurrent",
        "2",
        "--max-failed-trials",
        "2",
        address=ray_cluster,
    )
    assert run.returncode == 1, run.output()
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "(--max-failed-trials); reasons:" in line)
    failed = int(lines[header].split("stopped after ")[1].split()[0])
    reasons = lines[header + 1 : header + 1 + failed]
    assert failed >= 2 and len(reasons) == failed
    assert sum("larger than the training split" in r for r in reasons) >= 2
    assert all(r.startswith("  - ") for r in reasons)

    parent, children = parent_and_children(run)
    assert parent.info.status == "FAILED"
    assert parent.data.tags[tracking.FAILURE].startswith(f"stopped after {failed} failed trials")
    assert 2 <= len(children) < samples  # stopped early
    launched = int(run.stdout.split(" trials launched")[0].rsplit(" ", 1)[1])
    assert len(children) <= launched < samples
    # Trials running when the sweep stopped end too (no run left RUNNING), saying why.
    assert all(r.info.status == "FAILED" and tracking.FAILURE in r.data.tags for r in children)
    stopped = [r for r in children if "larger than the training split" not in r.data.tags[tracking.FAILURE]]
    assert all(r.data.tags[tracking.FAILURE].startswith("stopped before its end") for r in stopped)
    study = load_study(run, parent)
    assert not study.get_trials(states=[optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING])
    fails = study.get_trials(states=[optuna.trial.TrialState.FAIL])
    assert len(fails) == launched and sum(bool(t.user_attrs.get("stopped")) for t in fails) == launched - failed


def test_resume_without_a_sweep_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    from jepa_ray import cluster

    was_running = ray.is_initialized()

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster, "connect", refuse)
    monkeypatch.chdir(tmp_path)
    code = sweep.main(
        [
            "--resume",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--experiment",
            "nothing",
            "--storage-path",
            str(tmp_path / "ray"),
        ],
        space="rectified",
        preset="digits",
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    # MLflow logs its schema creation above; the error is the one line that follows.
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert lines[-1].startswith("error: --resume: no sweep in experiment 'nothing'")
    assert ray.is_initialized() is was_running


# --------------------------------------------------------------------------------------------
# Resume after the driver was killed


RESUME_ARGS = (
    "--preset",
    "smoke",
    "--epochs",
    "4",
    "--set",
    "checkpoint_every=1",
    "--set",
    "collapse_guard=false",
    "--num-samples",
    "3",
    "--max-concurrent",
    "1",
)


def trial_run_states(db: Path) -> list[tuple[str, str, bool]]:
    """(run id, status, has a last checkpoint) of the trial runs, read with sqlite while the
    sweep writes (no MLflow client: it would race the driver's schema creation)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute(
                "SELECT r.run_uuid, r.status, EXISTS(SELECT 1 FROM tags c WHERE c.run_uuid = r.run_uuid "
                f"AND c.key = '{tracking.LAST_CHECKPOINT}') FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                f"WHERE t.key = '{tracking.ROLE}' AND t.value = 'trial'"
            ).fetchall()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return []
    return [(run_id, status, bool(ckpt)) for run_id, status, ckpt in rows]


def process_tree(root: int) -> dict[tuple[int, str], str]:
    """{(pid, start time): command name} of every live process below `root`, read from /proc
    (independently of jepa_ray.reaper, which this checks)."""
    children: dict[int, list[tuple[int, str, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text.split("(", 1)[1].rsplit(")", 1)[0], text.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19], name))
    tree, todo = {}, [root]
    while todo:
        for pid, start, name in children.get(todo.pop(), []):
            tree[(pid, start)] = name
            todo.append(pid)
    return tree


def still_running(tree: dict[tuple[int, str], str]) -> list[str]:
    running = []
    for (pid, start), name in tree.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            running.append(f"{pid} {name}")
    return running


@pytest.mark.slow
def test_killed_sweep_resumes_every_trial_exactly_once(ray_cluster, tmp_path):
    # 1. A sweep on its own Ray instance whose driver is killed with SIGKILL (the OOM killer)
    #    once a trial has finished and the next one has written an epoch checkpoint: every
    #    process it started ends (its MLflow writer, the resource tracker, Ray's processes, the
    #    dashboard and runtime-env agents included, which outlived it before).
    log = tmp_path / "killed-sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            sweep_command(tmp_path, *RESUME_ARGS, address="local"),
            cwd=tmp_path,
            env=sweep_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    try:
        while True:
            states = trial_run_states(tmp_path / "mlflow.db")
            if any(s == "FINISHED" for _, s, _ in states) and any(s == "RUNNING" and c for _, s, c in states):
                break
            assert proc.poll() is None, f"the sweep ended before it could be killed:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
        tree = process_tree(proc.pid)
        assert {"raylet", "gcs_server"} <= set(tree.values()), tree
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60  # a bound for a busy machine; the reaper takes about 6 s
        while still_running(tree):
            assert time.monotonic() < deadline, f"left behind by the killed driver: {still_running(tree)}"
            time.sleep(0.2)
    finally:
        kill_group(proc)
    states = trial_run_states(tmp_path / "mlflow.db")
    interrupted = [run_id for run_id, status, _ in states if status == "RUNNING"]
    finished = sum(status == "FINISHED" for _, status, _ in states)
    assert len(interrupted) == 1 and finished in (1, 2)

    killed = Sweep(tmp_path, -9, "", "")
    parent, _ = parent_and_children(killed)
    assert parent.info.status == "RUNNING"
    running = load_study(killed, parent).get_trials(states=[optuna.trial.TrialState.RUNNING])
    assert len(running) == 1

    # 2. --resume (same store, experiment and storage) on the session's Ray instance.
    run = run_sweep(tmp_path, "--resume", *RESUME_ARGS, address=ray_cluster)
    assert run.returncode == 0, run.output()
    assert f"{3 - finished} trials launched, {finished} already finished, 0 failed" in run.stdout

    parent, children = parent_and_children(run)
    assert parent.info.status == "FINISHED"
    assert len(children) == 3
    assert all(r.info.status == "FINISHED" for r in children)
    keys = [r.data.tags[tracking.PARAMS_KEY] for r in children]
    assert len(set(keys)) == 3
    c = client(run)
    resumed = next(r for r in children if r.info.run_id == interrupted[0])
    assert resumed.data.tags.get("jepa_ray.resumed") == "true"
    for r in children:
        # Each epoch once: the interrupted trial went on from its checkpoint, not from scratch.
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train/loss"))
        assert steps == [0, 1, 2, 3], (r.info.run_id, steps)
        assert ckpt_lib.local_dir(r.data.tags[tracking.CHECKPOINT]).is_dir()

    study = load_study(run, parent)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 3
    failed = study.get_trials(states=[optuna.trial.TrialState.FAIL])
    assert [t.number for t in failed] == [running[0].number] and failed[0].user_attrs["interrupted"] is True
    assert running[0].params in [t.params for t in complete]  # the interrupted trial was re-run
    assert not study.get_trials(states=[optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING])
    assert_optuna_matches_mlflow(study, children)


# --------------------------------------------------------------------------------------------
# prepare_resume on a hand-made interrupted sweep (no Ray)


def epoch_result(epoch: int) -> dict:
    return {"epoch": epoch, "train/loss": 1.0 / (epoch + 1), "train/l0_density": 0.5 - 0.1 * epoch}


@dataclass
class HandMadeSweep:
    """A sweep's parent run and Optuna study made by hand, for prepare_resume without Ray."""

    uri: str
    exp_id: str
    parent: str
    study: optuna.Study

    @classmethod
    def make(cls, tmp_path: Path) -> HandMadeSweep:
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        exp_id = tracking.experiment_id(uri, "resume-unit")
        parent = tracking.start_sweep_run(uri, exp_id, "unit", tags={}, params={})
        study = optuna.create_study(
            storage=f"sqlite:///{tmp_path}/optuna.db", study_name="unit", directions=["maximize", "minimize"]
        )
        return cls(uri, exp_id, parent, study)

    @property
    def c(self):
        return tracking.client(self.uri)

    def ask(self):
        from optuna.distributions import FloatDistribution

        return self.study.ask({"mu": FloatDistribution(-3.0, 1.0)})

    def trial_run(self, trial, status: str, **tags: str) -> str:
        """The trial's MLflow run as the driver creates it, left `status`."""
        tags = {
            tracking.ROLE: "trial",
            tracking.PARENT: self.parent,
            tracking.PARAMS_KEY: sweep.params_key(trial.params),
            tracking_contract.OPTUNA_TRIAL: str(trial.number),
            **tags,
        }
        run_id = self.c.create_run(self.exp_id, tags=tags).info.run_id
        if status != "RUNNING":
            self.c.set_terminated(run_id, status)
        return run_id


def test_prepare_resume_reruns_interrupted_trials_in_their_runs(tmp_path):
    hand = HandMadeSweep.make(tmp_path)
    uri, exp_id, parent, study, c, trial_run = hand.uri, hand.exp_id, hand.parent, hand.study, hand.c, hand.trial_run

    finished = hand.ask()  # done in both
    study.tell(finished, [0.8, 0.3])
    trial_run(finished, "FINISHED")
    told = hand.ask()  # Optuna heard of its end, the driver died before MLflow did
    study.tell(told, [0.7, 0.2])
    told_run = trial_run(told, "RUNNING")
    tracking.log_metrics(c, told_run, {"linear_acc": 0.7, "l0_density": 0.2}, step=0)
    interrupted = hand.ask()  # running when the driver died, one epoch logged, two checkpointed
    interrupted_run = trial_run(interrupted, "RUNNING")
    tracking.log_metrics(c, interrupted_run, epoch_result(0), step=0)
    checkpoint = tmp_path / "trials" / "00002" / "checkpoint"
    checkpoint.mkdir(parents=True)
    torch.save({"history": json.dumps([epoch_result(0), epoch_result(1)])}, checkpoint / ckpt_lib.TRAIN_STATE_FILE)
    c.set_tag(interrupted_run, tracking.LAST_CHECKPOINT, str(checkpoint))
    failed = hand.ask()  # failed for good: not run again
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    trial_run(failed, "FAILED")
    stopped = hand.ask()  # stopped by a sweep that stopped on failures: run again
    stopped.set_user_attr("stopped", True)
    study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    stopped_run = trial_run(stopped, "FAILED")
    c.set_tag(stopped_run, tracking.FAILURE, "stopped before its end: 1 failed trial")  # as the sweep ended it
    c.set_tag(stopped_run, tracking.FAILURE_KIND, "unfinished")

    state = sweep.prepare_resume(study, uri, exp_id, parent)

    key, stopped_key = str(interrupted.number), str(stopped.number)  # a trial's identity: its first number
    assert state.finished == 3
    ReusedRun = tracking.epochs.ReusedRun  # what each re-run reads at its start: MLflow is not asked mid-sweep
    assert state.reuse_runs == {
        key: [ReusedRun(interrupted_run, (), 1)],
        stopped_key: [ReusedRun(stopped_run, (tracking.FAILURE, tracking.FAILURE_KIND), -1)],  # the re-run clears them
    }
    assert state.resume_map == {key: str(checkpoint)}
    trials = study.get_trials()
    TS = optuna.trial.TrialState
    assert [t.state for t in trials] == [TS.COMPLETE, TS.COMPLETE, TS.FAIL, TS.FAIL, TS.FAIL, TS.WAITING, TS.WAITING]
    assert trials[2].user_attrs["interrupted"] is True
    # Enqueued again with the same parameters, in order.
    assert [t.system_attrs["fixed_params"] for t in trials[5:]] == [interrupted.params, stopped.params]
    assert [t.user_attrs["resumed_from_trial"] for t in trials[5:]] == [2, 4]
    assert [t.user_attrs["first_trial"] for t in trials[5:]] == [2, 4]
    # A second resume neither re-enqueues nor counts the requeued trials again.
    again = sweep.prepare_resume(study, uri, exp_id, parent)
    assert again.finished == 3 and len(study.get_trials()) == 7
    assert c.get_run(told_run).info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in c.get_metric_history(interrupted_run, "train/loss"))
    assert history == [(0, 1.0), (1, 0.5)]  # the checkpointed epoch MLflow had missed
    assert c.get_run(interrupted_run).info.status == "RUNNING"


def test_prepare_resume_records_the_ends_mlflow_missed_as_the_driver_would_have(tmp_path):
    """Trials whose end Optuna heard of and MLflow did not (the driver killed, or the tracking
    server gone, before its writes): a rung-stopped one is KILLED with why and the epochs its
    store holds, a collapsed or failed one FAILED with why; a run MLflow never made is made."""
    from jepa_ray.train.store import TrialStore

    hand = HandMadeSweep.make(tmp_path)
    c, TS, A = hand.c, optuna.trial.TrialState, tracking_contract
    recreated: list[str] = []

    def recreate(t):
        recreated.append(hand.trial_run(t, "RUNNING"))
        return c.get_run(recreated[-1])

    def ended(state, values=None, **attrs):
        trial = hand.ask()
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        hand.study.tell(trial, values, state=state)
        return trial

    stopped = ended(TS.PRUNED, **{A.ATTR_RUNG_STOP: "rung 1: dominated", A.ATTR_EPOCHS: 2})
    store = tmp_path / "trials" / "00000"

    def write(path: Path) -> Path:
        path.mkdir(parents=True)
        (path / ckpt_lib.HISTORY_FILE).write_text(json.dumps([epoch_result(0), epoch_result(1)]))
        return path

    TrialStore(store).save_epoch(2, write)
    stopped_run = hand.trial_run(stopped, "RUNNING", **{tracking.TRIAL_DIR: str(store)})
    tracking.log_metrics(c, stopped_run, epoch_result(0), step=0)  # epoch 1 was still queued
    ended(TS.COMPLETE, [0.5, 0.4], **{A.ATTR_RUNG_STOP: "rung 1: dominated", A.ATTR_EPOCHS: 1})
    collapsed = ended(TS.PRUNED, **{A.ATTR_FAILURE: "collapse at epoch 3: z is collapsing", A.ATTR_EPOCHS: 4})
    collapsed_run = hand.trial_run(collapsed, "RUNNING")
    ended(TS.FAIL, **{A.ATTR_FAILURE: "non-finite loss at epoch 2", A.ATTR_EPOCHS: 2})

    state = sweep.prepare_resume(hand.study, hand.uri, hand.exp_id, hand.parent, recreate=recreate)

    assert state.finished == 4 and not state.reuse_runs and len(recreated) == 2
    runs = [c.get_run(r) for r in (stopped_run, recreated[0], collapsed_run, recreated[1])]
    assert [r.info.status for r in runs] == ["KILLED", "KILLED", "FAILED", "FAILED"]
    assert [r.data.tags.get(A.FAILURE_KIND) for r in runs] == ["stopped", "stopped", "collapsed", "failed"]
    assert runs[0].data.tags[A.STOPPED] == "rung 1: dominated" == runs[1].data.tags[A.STOPPED]
    reasons = ["collapse at epoch 3: z is collapsing", "non-finite loss at epoch 2"]
    assert [r.data.tags[A.FAILURE] for r in runs[2:]] == reasons
    assert [m.step for m in c.get_metric_history(stopped_run, "train/loss")] == [0, 1]  # the store's epoch 1 too
    assert not any(r.data.metrics.get("linear_acc") for r in runs)
    again = sweep.prepare_resume(hand.study, hand.uri, hand.exp_id, hand.parent, recreate=recreate)
    assert again.finished == 4 and len(recreated) == 2


@pytest.mark.parametrize("logged_epochs", [2, 3])
def test_resume_records_a_finished_trial_mlflow_missed_with_each_epoch_once(tmp_path, monkeypatch, logged_epochs):
    """Found by tests/test_disk_full.py under load (train/loss steps [0, 1, 2, 3, 3]): a trial
    Optuna heard finish while MLflow missed its end gets its final metrics from its store, and
    its last epoch, which the final metrics carry, is not logged a second time (a later
    millisecond makes a second MLflow record of the same value)."""
    from jepa_ray.tracking import store as tracking_store
    from jepa_ray.train.store import TrialStore

    clock = iter(range(10**12, 10**12 + 10**6, 1000))  # every batch a second later
    monkeypatch.setattr(tracking_store, "time", SimpleNamespace(time=lambda: next(clock) / 1000))
    hand = HandMadeSweep.make(tmp_path)
    c = hand.c
    history = [epoch_result(e) for e in range(4)]
    final = {**history[-1], "linear_acc": 0.61, "l0_density": 0.12}

    def write(path: Path) -> Path:
        path.mkdir(parents=True)
        (path / ckpt_lib.HISTORY_FILE).write_text(json.dumps(history))
        (path / ckpt_lib.METRICS_FILE).write_text(json.dumps(final))
        return path

    store = tmp_path / "trials" / "00000"
    TrialStore(store).save_final(write)
    trial = hand.ask()
    hand.study.tell(trial, [0.61, 0.12])
    run_id = hand.trial_run(trial, "RUNNING", **{tracking.TRIAL_DIR: str(store)})
    for e in range(logged_epochs):  # the epochs MLflow heard of before its end was lost
        tracking.log_metrics(c, run_id, epoch_result(e), step=e)

    sweep.prepare_resume(hand.study, hand.uri, hand.exp_id, hand.parent)

    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["linear_acc"] == 0.61
    for name in ("train/loss", "train/l0_density"):
        assert [m.step for m in c.get_metric_history(run_id, name)] == [0, 1, 2, 3], name
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "linear_acc")] == [(3, 0.61)]


def test_prepare_resume_recreates_a_missing_run_even_when_another_trial_had_the_same_params(tmp_path):
    """Found by benchmarks/scale.py's kill -9 case (53 of 300 trials without a run): a trial whose
    run MLflow never created, proposed with the same params as a recorded one (a categorical
    space, a replayed table), gets its own run; a re-queued trial still finds the run it reuses."""
    hand = HandMadeSweep.make(tmp_path)
    c, study = hand.c, hand.study
    recreated: list[str] = []

    def recreate(t):
        recreated.append(hand.trial_run(t, "RUNNING"))
        return c.get_run(recreated[-1])

    first = hand.ask()
    study.tell(first, [0.8, 0.3])
    first_run = hand.trial_run(first, "FINISHED")
    study.enqueue_trial(first.params)
    twin = hand.ask()  # the same configuration again; the driver died before MLflow heard of it
    assert twin.params == first.params
    study.tell(twin, [0.8, 0.3])
    interrupted = hand.ask()
    interrupted_run = hand.trial_run(interrupted, "RUNNING")
    interrupted.set_user_attr("interrupted", True)  # as an earlier --resume marked and re-queued it
    study.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(interrupted.params, user_attrs={"resumed_from_trial": interrupted.number})
    rerun = hand.ask()  # it ended; the driver died before MLflow retagged the run it reused
    study.tell(rerun, [0.6, 0.2])

    state = sweep.prepare_resume(study, hand.uri, hand.exp_id, hand.parent, recreate=recreate)

    assert len(recreated) == 1 and c.get_run(recreated[0]).data.tags[tracking_contract.OPTUNA_TRIAL] == "1"
    assert c.get_run(first_run).info.status == "FINISHED" and state.finished == 3
    assert c.get_run(interrupted_run).info.status != "RUNNING"  # the re-run's end, in the run it reused


def test_resume_keeps_the_recorded_base_config():
    """A resumed sweep trains like its first trials even if --preset/--set differ now."""
    from jepa_ray import config as config_lib

    started = config_lib.apply_overrides(config_lib.preset("digits-sweep"), {"epochs": 7, "mu": -2.0})
    parent = SimpleNamespace(
        data=SimpleNamespace(
            params={**{f"base.{k}": str(v) for k, v in config_lib.flatten(started).items()}, "space": "rectified"}
        )
    )
    given_now = config_lib.preset("digits")
    assert sweep.recorded_base_config(parent, given_now) == started
    no_record = SimpleNamespace(data=SimpleNamespace(params={}))
    assert sweep.recorded_base_config(no_record, given_now) == given_now


def test_collapsed_trials_do_not_count_towards_the_failure_limit():
    from jepa_ray.outcome import Ledger, Outcome

    ledger = Ledger()
    limit = sweep.FailureLimit(2, ledger)
    why = "collapse at epoch 3: train/l0_density=0.01 is below 0.2 x the target density 0.2"
    ledger.end("a", {"failure": why, "failure_kind": FailureKind.COLLAPSED.value})
    ledger.end("b", {"failure": "non-finite loss at epoch 1 step 5"})
    assert (limit.failed, ledger.count(Outcome.COLLAPSED), limit.reached) == (1, 1, False)
    ledger.end("c", {"epoch": 4}, error="RuntimeError: CUDA out of memory")
    assert limit.reached and limit.reasons[0].startswith("non-finite")


def test_searcher_tells_optuna_pruned_for_a_collapse_and_fail_for_a_failure(tmp_path):
    """TPE learns from PRUNED trials (not from FAIL ones): a collapse must steer it away."""
    from jepa_ray import pareto
    from search_spaces import rectified

    objectives = pareto.parse_objectives(sweep.DEFAULT_OBJECTIVES)
    searcher = sweep.make_searcher(
        rectified.space, objectives, sweep.make_sampler("tpe", 0), "s", f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    for trial_id in ("collapsed", "failed", "raised", "done"):
        assert searcher.suggest(trial_id)
    searcher.on_trial_complete(
        "collapsed",
        {"failure": "collapse at epoch 3: train/rank_me=1.1 < 1.5", "failure_kind": FailureKind.COLLAPSED.value},
    )
    searcher.on_trial_complete("failed", {"failure": "non-finite loss at epoch 1 step 5"})
    searcher.on_trial_complete("raised", None, error=True)
    searcher.on_trial_complete("done", {"linear_acc": 0.9, "l0_density": 0.1, "final_result": True})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.get_trials()}
    assert {k: t.state.name for k, t in by_id.items()} == {
        "collapsed": "PRUNED",
        "failed": "FAIL",
        "raised": "FAIL",
        "done": "COMPLETE",
    }
    assert by_id["collapsed"].user_attrs["failure"].startswith("collapse at epoch 3")
    assert by_id["done"].values == [0.9, 0.1]


def test_an_ask_whose_answer_the_database_lost_is_not_left_running(tmp_path, monkeypatch):
    """The study's database made the trial and then dropped the connection before `ask` heard
    (a PostgreSQL restart in the chaos benchmark): the retry takes that trial instead of making a
    second one, which left the first RUNNING for ever."""
    from sqlalchemy.exc import OperationalError

    from jepa_ray import pareto
    from jepa_ray.adapter import searcher_study
    from search_spaces import rectified

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    objectives = pareto.parse_objectives(sweep.DEFAULT_OBJECTIVES)
    searcher = sweep.make_searcher(rectified.space, objectives, sweep.make_sampler("random", 0), "s", url)
    searcher.patience_s = 30.0  # as on a database server
    storage = searcher_study(searcher)._storage
    made, lost = storage.create_new_trial, []

    def made_then_lost(study_id, template_trial=None):
        trial_id = made(study_id, template_trial)
        if not lost:
            lost.append(trial_id)
            raise OperationalError("INSERT INTO trials", {}, Exception("server closed the connection unexpectedly"))
        return trial_id

    monkeypatch.setattr(storage, "create_new_trial", made_then_lost)
    assert searcher.suggest("first") and lost
    study = optuna.load_study(study_name="s", storage=url)
    [trial] = study.get_trials()
    assert trial._trial_id == lost[0] and trial.state.name == "RUNNING" and trial.params
    assert trial.user_attrs["tune_trial_id"] == "first"
    searcher.on_trial_complete("first", {"linear_acc": 0.9, "l0_density": 0.1, "final_result": True})
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]


@pytest.mark.parametrize("patience_s", [60.0, 0.0])
def test_the_searcher_waits_for_a_restarted_database(patience_s, capsys):
    """The study's PostgreSQL server killed with SIGKILL while a trial runs, and started again
    2 s later: with patience the searcher tells Optuna the trial's end once the server answers
    (one warning line, one line when it answers again) and suggests on; without, it raises."""
    import threading

    from jepa_ray import pareto
    from search_spaces import rectified

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from postgres import PostgresServer, unavailable

    if unavailable() is not None:
        pytest.skip(f"no PostgreSQL server: {unavailable()}")
    objectives = pareto.parse_objectives(sweep.DEFAULT_OBJECTIVES)
    with PostgresServer() as pg:
        url = pg.create_database("optuna")
        searcher = sweep.make_searcher(
            rectified.space, objectives, sweep.make_sampler("random", 0), "s", url, patience_s=patience_s
        )
        assert searcher.suggest("first")
        pg.kill()
        restart = threading.Timer(2.0, pg.restart)
        restart.start()
        try:
            result = {"linear_acc": 0.9, "l0_density": 0.1, "final_result": True}
            if not patience_s:
                with pytest.raises(optuna.exceptions.StorageInternalError):  # from Connection refused
                    searcher.on_trial_complete("first", result)
                return
            searcher.on_trial_complete("first", result)
        finally:
            restart.join()
        assert searcher.suggest("second")
        study = optuna.load_study(study_name="s", storage=url)
        assert [(t.user_attrs["tune_trial_id"], t.state.name) for t in study.get_trials()] == [
            ("first", "COMPLETE"),
            ("second", "RUNNING"),
        ]
    err = [line for line in capsys.readouterr().err.splitlines() if "Optuna study" in line]
    assert [line.split(" (")[0] for line in err] == [
        f"warning: the Optuna study at {url} did not answer",
        f"the Optuna study at {url} answers again",
    ]
    assert "Connection refused" in err[0]  # the driver's reason, not Optuna's wrapper's


# --------------------------------------------------------------------------------------------
# Multi-worker (DDP) trials inside a sweep: the same trial as in process, and a lost worker
# costs nothing but the epoch in flight


DDP_ARGS = (
    "--preset",
    "smoke",
    "--epochs",
    "5",
    "--set",
    "max_train_samples=1024",
    "--set",
    "checkpoint_every=1",
    "--set",
    "sync_bn=true",
    "--set",
    "optimizer=lars",
    "--set",
    "lr=0.03",
    "--set",
    "max_failures=3",
    "--set",
    "collapse_guard=false",
    "--workers-per-trial",
    "2",
    "--num-samples",
    "1",
    "--max-concurrent",
    "1",
    "--seed",
    "0",
)
"""One trial (the space's first starting point) of 5 epochs of 8 steps on 2 gloo workers with
global-batch BatchNorm, a checkpoint every epoch: 2 workers with half the batch each then train
what one process with the whole batch trains (the views do not depend on the number of workers).
LARS, not AdamW: Adam's first steps move every weight by about lr whatever its gradient's size,
so the float noise of a different summation order in gradients near zero becomes lr-sized
weight differences, while LARS steps are proportional to the gradient and stay within 1e-4."""
DDP_EPOCHS = list(range(5))


def only_trial(run: Sweep):
    parent, children = parent_and_children(run)
    assert parent.info.status == "FINISHED" and len(children) == 1, run.output()
    return children[0]


def epoch_history(run: Sweep, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(run).get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def ddp(ray_cluster, tmp_path_factory) -> Sweep:
    run = run_sweep(tmp_path_factory.mktemp("ddp"), *DDP_ARGS, address=ray_cluster)
    assert run.returncode == 0, run.output()
    return run


@pytest.mark.slow
def test_ddp_trial_in_a_sweep_matches_the_in_process_trial(ddp, tmp_path):
    child = only_trial(ddp)
    assert child.info.status == "FINISHED" and child.data.params["workers"] == "2"
    assert "1 trials launched, 0 already finished, 0 failed" in ddp.stdout
    checkpoint = child.data.tags[tracking.CHECKPOINT]
    cfg = config_lib.apply_overrides(ckpt_lib.read_config(checkpoint), {"workers": 1})
    in_process: list[dict] = []
    from jepa_ray.train import LocalReporter, fit

    final = fit(config_lib.resolve(cfg), LocalReporter(tmp_path), on_epoch=in_process.append)
    for key in ("train/loss", "train/invariance", "train/regularizer"):
        got = epoch_history(ddp, child.info.run_id, key)
        assert [step for step, _ in got] == DDP_EPOCHS, key  # every epoch, once
        want = [m[key] for m in in_process]
        assert [v for _, v in got] == pytest.approx(want, rel=2e-3), key
    for key in ("train/l0_density", "online/linear_acc"):  # counts of exact zeros / right answers
        got = [v for _, v in epoch_history(ddp, child.info.run_id, key)]
        assert got == pytest.approx([m[key] for m in in_process], abs=0.02), key
    assert child.data.metrics["linear_acc"] == pytest.approx(final["linear_acc"], abs=0.03)
    assert child.data.metrics["l0_density"] == pytest.approx(final["l0_density"], abs=0.02)


def ray_train_workers() -> list[int]:
    """PIDs of the Ray Train worker processes (their title: ray::RayTrainWorker) of the Ray
    instance this test process started (ray_cluster), never another one on this machine: each
    worker names its raylet in RAY_RAYLET_PID, and that raylet is a child of this process."""
    own_raylets = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # the fields after "(comm)": state, ppid, ...
            own_raylets.add(stat.parent.name)
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if not cmdline.read_bytes().startswith(b"ray::RayTrainWorker"):
                continue
            environ = (cmdline.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        raylet = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"RAY_RAYLET_PID=")), None)
        if raylet in own_raylets:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
def test_ddp_trial_survives_an_injected_fault_and_a_kill_9_exactly(ddp, ray_cluster, tmp_path):
    """Rank 1 dies by fault injection in the middle of epoch 1 (JEPA_RAY_FAULT), then a worker
    is killed with SIGKILL once the restarted group has checkpointed epoch 3: the trial
    finishes, MLflow has each epoch once, and the final weights are those of the
    uninterrupted trial."""
    marker = tmp_path / "fault-fired"
    env = {**sweep_env(), "JEPA_RAY_FAULT": f"rank=1,step=10,marker={marker}"}
    workdir = tmp_path / "sweep"
    workdir.mkdir()
    proc = subprocess.Popen(
        sweep_command(workdir, *DDP_ARGS, "--verbose", address=ray_cluster),  # Ray Train's restarts
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed = None
    try:
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while killed is None:
            latest = [p.read_text() for p in (workdir / "ray").glob("*/trials/*/checkpoints/LATEST")]
            if marker.exists() and latest and latest[0] >= "epoch-00003":
                workers = ray_train_workers()
                assert workers, "no Ray Train worker to kill"
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
            assert proc.poll() is None, f"the sweep ended before the kill:\n{proc.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "epoch 3 was never checkpointed"
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    run = Sweep(workdir, proc.returncode, out, "")
    assert run.returncode == 0, run.output()
    assert out.count("Attempting to start training worker group") == 3, out[-4000:]  # two restarts
    child = only_trial(run)
    assert child.info.status == "FINISHED"
    for key in ("train/loss", "train/l0_density", "online/linear_acc", "throughput/img_per_s"):
        assert [s for s, _ in epoch_history(run, child.info.run_id, key)] == DDP_EPOCHS, key
    reference = ckpt_lib.load_state(only_trial(ddp).data.tags[tracking.CHECKPOINT])
    resumed = ckpt_lib.load_state(child.data.tags[tracking.CHECKPOINT])
    for part in reference:
        for name, tensor in reference[part].items():
            assert torch.equal(resumed[part][name], tensor), f"{part}.{name} differs from the uninterrupted trial"
    for key in ("train/loss", "online/linear_acc"):
        assert epoch_history(run, child.info.run_id, key) == epoch_history(ddp, only_trial(ddp).info.run_id, key)


@pytest.mark.parametrize(
    "args, what",
    [
        (
            ("--workers-per-trial", "4"),
            "it holds 4.01 CPUs and 0 GPUs at once (Tune's trial actor 0.01 CPU + 4 workers x 1 CPU)",
        ),
        (("--workers-per-trial", "2", "--gpus-per-worker", "1"), "worker 0 needs 1 CPUs and 1 GPUs on one node"),
        (("--cpus-per-worker", "8"), "the trial needs 8 CPUs and 0 GPUs on one node"),
    ],
)
def test_a_trial_that_can_never_be_placed_is_refused_with_one_line(ray_cluster, tmp_path, args, what):
    run = run_sweep(tmp_path, "--smoke", *args, address=ray_cluster)
    assert run.returncode == 2, run.output()
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and what in errors[0] and "the cluster has 1 node(s), 4 CPUs" in errors[0], run.output()
    assert not trial_run_states(tmp_path / "mlflow.db")  # refused before any trial


@pytest.mark.slow
def test_a_sweep_in_which_no_trial_finished_exits_non_zero(ray_cluster, tmp_path):
    run = run_sweep(tmp_path, "--smoke", "--set", "batch_size=100000", "--max-failed-trials", "0", address=ray_cluster)
    assert run.returncode == 1, run.output()
    assert "2 trials launched, 0 already finished, 2 failed, 0 stopped by the collapse guard, 0 finished" in run.stdout
    assert "no trial of this sweep finished" in run.stderr
