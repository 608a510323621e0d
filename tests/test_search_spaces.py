"""Search spaces and the sweep command line's input checks, all without Ray (fast).

Every space in search_spaces/ must give a config the trainer accepts for any trial Optuna can
sample; a broken space or a bad command-line value must stop the sweep with exit code 2 and
one line naming the input, before any Ray instance starts.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import optuna
import pytest
from scipy import special

from jepa_ray import config as config_lib
from jepa_ray import sweep
from jepa_ray.errors import UsageError
from search_spaces import _projector, grid, lejepa, rectified

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 200
SPACE_PRESETS = {
    "rectified": "digits-sweep",
    "rectified_density": "digits-sweep",
    "lejepa": "lejepa-digits",
    "grid": "digits-sweep",
}
"""Each space with the preset its sweep script uses."""

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sigma_gn_reference(p: float) -> float:
    """sigma_GN(p) = Gamma(1/p)^(1/2) / (p^(1/p) Gamma(3/p)^(1/2)), from scipy."""
    return math.sqrt(special.gamma(1 / p)) / (p ** (1 / p) * math.sqrt(special.gamma(3 / p)))


def l0_density_reference(p: float, mu: float, sigma: float) -> float:
    """P(X > 0) for X ~ GN_p(mu, sigma), from scipy's gennorm."""
    from scipy import stats

    return float(stats.gennorm(beta=p, loc=mu, scale=sigma * p ** (1 / p)).sf(0.0))


def sampled_trials(space: str, n: int = N_TRIALS, seed: int = 0):
    """(Optuna params, overrides, resolved config) of n random trials of a space."""
    module = sweep.load_space(space)
    base = config_lib.preset(SPACE_PRESETS[space])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        overrides = module.space(trial)
        out.append((dict(trial.params), overrides, config_lib.resolve(config_lib.apply_overrides(base, overrides))))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return out


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything starts or joins Ray; check that Ray's state is unchanged."""
    import ray

    from jepa_ray import cluster

    was_running = ray.is_initialized()

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(cluster, "connect", refuse)
    yield
    assert ray.is_initialized() is was_running
    if not was_running:
        assert ray.is_initialized() is False


# --------------------------------------------------------------------------------------------
# The spaces sample valid configs


@pytest.mark.parametrize("space", sorted(SPACE_PRESETS))
def test_space_samples_valid_trainer_configs(space, no_ray):
    base = sweep.base_config(sweep.SweepOptions(space=space, preset=SPACE_PRESETS[space]))
    distinct = sweep.validate_space(sweep.load_space(space), base, n=N_TRIALS, seed=1)
    starting = len(getattr(sweep.load_space(space), "STARTING_POINTS", []))
    if space == "grid":
        assert distinct == len(grid.MU) * len(grid.P)
    else:
        assert distinct == N_TRIALS + starting  # continuous parameters: no repeats


def test_rectified_space_values():
    trials = sampled_trials("rectified")
    for params, _overrides, cfg in trials:
        assert cfg.target.target == "rgg" and cfg.loss.regularizer == "rdmreg"
        assert rectified.LAMBD[0] <= cfg.loss.lambd <= rectified.LAMBD[1]
        assert cfg.loss.num_slices in rectified.SLICES
        assert rectified.P[0] <= cfg.target.p <= rectified.P[1]
        assert rectified.MU[0] <= cfg.target.mu <= rectified.MU[1]
        assert cfg.target.sigma == pytest.approx(sigma_gn_reference(cfg.target.p), rel=1e-9)
        dims = [int(d) for d in cfg.model.proj_dims.split("-")]
        assert len(dims) == params["proj_depth"] and dims[-1] == params["proj_out"]
        assert all(d == params.get("proj_hidden") for d in dims[:-1])
        assert set(dims[:-1]) <= set(_projector.HIDDEN) and dims[-1] in _projector.OUTPUT
    # The space reaches from dense to very sparse targets (the l0 knob's whole range).
    densities = [l0_density_reference(c.target.p, c.target.mu, c.target.sigma) for _, _, c in trials]
    assert min(densities) < 0.05 and max(densities) > 0.6
    depths = {p["proj_depth"] for p, _, _ in trials}
    assert depths == {1, 2, 3}


def test_lejepa_space_values():
    for params, _overrides, cfg in sampled_trials("lejepa"):
        assert cfg.target.target == "gaussian" and cfg.loss.regularizer == "sigreg"
        assert (cfg.target.p, cfg.target.mu, cfg.target.sigma) == (2.0, 0.0, 1.0)
        assert lejepa.LAMBD[0] <= cfg.loss.lambd <= lejepa.LAMBD[1]
        assert cfg.loss.num_slices in lejepa.SLICES
        assert cfg.model.proj_dims.split("-")[-1] == str(params["proj_out"])


def test_grid_space_values():
    for _params, _overrides, cfg in sampled_trials("grid"):
        assert cfg.target.mu in grid.MU and cfg.target.p in grid.P
        assert cfg.loss.lambd == pytest.approx(5 / 7)
        assert cfg.target.sigma == pytest.approx(sigma_gn_reference(cfg.target.p), rel=1e-9)


def test_grid_sampler_visits_every_cell_once():
    sampler = sweep.make_sampler("grid", 0, grid.GRID)
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])

    def objective(trial):
        grid.space(trial)
        return 0.5, 0.5

    study.optimize(objective, n_trials=2 * len(grid.MU) * len(grid.P))  # stops when the grid is done
    cells = [(t.params["mu"], t.params["p"]) for t in study.trials]
    assert sorted(cells) == sorted(itertools.product(grid.MU, grid.P))


@pytest.mark.parametrize("space", ["rectified", "rectified_density", "lejepa"])
def test_starting_points_give_their_configs(space):
    """Each starting point, enqueued, is the trial Optuna runs first, with a valid config."""
    module = sweep.load_space(space)
    base = config_lib.preset(SPACE_PRESETS[space])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in module.STARTING_POINTS:
        study.enqueue_trial(point)
    for point in module.STARTING_POINTS:
        trial = study.ask()
        cfg = config_lib.resolve(config_lib.apply_overrides(base, module.space(trial)))
        assert trial.params == point
        assert cfg.loss.lambd == point["lambd"] and cfg.loss.num_slices == point["num_slices"]
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def test_rectified_starting_points_span_dense_to_sparse():
    densities = [
        l0_density_reference(pt["p"], pt["mu"], sigma_gn_reference(pt["p"])) for pt in rectified.STARTING_POINTS
    ]
    assert max(densities) >= 0.5 and min(densities) <= 0.15


def test_samplers():
    for name in sweep.SAMPLERS:
        assert sweep.make_sampler(name, 0, grid.GRID) is not None
    with pytest.raises(UsageError, match="needs a space with a GRID"):
        sweep.make_sampler("grid", 0, None)
    with pytest.raises(UsageError, match="allowed: tpe, tpe-rungs, nsga2, gp, random, grid"):
        sweep.make_sampler("foo", 0)


def test_define_by_run_carries_overrides_seed_and_key():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = sweep.DefineByRun("rectified", sweep_seed=100)
    first, second = study.ask(), study.ask()
    a, b = fn(first), fn(second)
    assert (a["optuna_trial"], a["seed"]) == (0, 100) and (b["optuna_trial"], b["seed"]) == (1, 101)
    assert a["overrides"]["mu"] == first.params["mu"]
    assert a["params_key"] == sweep.params_key(dict(reversed(list(first.params.items()))))
    assert a["params_key"] != b["params_key"]
    cfg = sweep.trial_config(config_lib.preset("digits"), sweep.TrialSpec.from_config(a))
    assert cfg.system.seed == 100 and cfg.target.mu == first.params["mu"]
    assert (a["trial_key"], b["trial_key"]) == ("0", "1")


def test_a_requeued_trial_keeps_the_identity_and_seed_of_the_trial_it_continues():
    """--resume re-queues an interrupted trial (a new Optuna number); it trains on with the seed
    and is judged under the key of the first trial of its chain."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = sweep.DefineByRun("rectified", sweep_seed=100)
    first = study.ask()
    fn(first)
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(first.params, user_attrs={"resumed_from_trial": 0, "first_trial": 0})
    again = fn(study.ask())
    assert (again["optuna_trial"], again["trial_key"], again["seed"]) == (1, "0", 100)
    assert again["params_key"] == sweep.params_key(first.params)


def test_a_trial_spec_reads_back_the_config_tune_carries():
    """Every reader (trial, MLflow callback, scheduler, replay) reads the spec from Tune's config
    dict; a config no jepa_ray space made (a test's, a foreign searcher's) reads as defaults."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = sweep.DefineByRun("rectified", sweep_seed=7)(study.ask())
    spec = sweep.TrialSpec.from_config(config)
    assert spec.to_config() == config
    assert (spec.number, spec.trial_key, spec.seed, spec.row) == (0, "0", 7, None)
    assert spec.training_overrides() == {**spec.overrides, "seed": 7}
    bare = sweep.TrialSpec.from_config({"overrides": {"lambd": 0.5}})
    assert (bare.number, bare.trial_key, bare.seed, bare.params_key) == (None, "", None, "")
    assert bare.training_overrides() == {"lambd": 0.5} and bare.to_config() == {"overrides": {"lambd": 0.5}}
    assert sweep.TrialSpec.from_config(None) == sweep.TrialSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1


# --------------------------------------------------------------------------------------------
# Bad spaces and bad command-line values: exit 2, one line, no Ray


@pytest.fixture
def space_package(tmp_path, monkeypatch):
    """write(name, source) -> the dotted name of a new search-space module."""
    package = f"jr_test_spaces_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / package / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return f"{package}.{name}"

    return write


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys, no_ray):
    """main(argv) in-process with a temporary store; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str, str]:
        args = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray"), *argv]
        code = sweep.main(args, space="rectified", preset="digits", experiment="bad-input")
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


BAD_SPACES = {
    "inverted": (
        """
        def space(trial):
            return {"lambd": trial.suggest_float("lambd", 0.9, 0.1)}
        """,
        ["low <= high", "low=0.9, high=0.1"],
    ),
    "unknown_key": (
        """
        def space(trial):
            return {"lamda": trial.suggest_float("lambd", 0.1, 0.9)}
        """,
        ["unknown config key 'lamda'", "did you mean lambd"],
    ),
    "negative_p": (
        """
        def space(trial):
            return {"p": trial.suggest_categorical("p", [0.5, 1.0, -1.0])}
        """,
        ["config field 'p' = -1.0 is not allowed; allowed: p > 0"],
    ),
    "empty_choices": (
        """
        def space(trial):
            return {"num_slices": trial.suggest_categorical("num_slices", [])}
        """,
        ["choices"],
    ),
    "no_function": (
        """
        SPACE = {"lambd": 0.5}
        """,
        ["has no space(trial) function"],
    ),
    "point_unknown_param": (
        """
        STARTING_POINTS = [{"lambd": 0.5, "mu": -1.0}]
        def space(trial):
            return {"lambd": trial.suggest_float("lambd", 0.1, 0.9)}
        """,
        ["starting point", "does not suggest: mu"],
    ),
    "point_out_of_range": (
        """
        STARTING_POINTS = [{"lambd": 0.95}]
        def space(trial):
            return {"lambd": trial.suggest_float("lambd", 0.1, 0.9)}
        """,
        ["starting point", "lambd=0.95 is outside the space; allowed: [0.1, 0.9]"],
    ),
    "point_bad_config": (
        """
        STARTING_POINTS = [{"p": -1.0}]
        def space(trial):
            return {"p": trial.suggest_float("p", -2.0, 2.0)}
        """,
        ["starting point {'p': -1.0}", "config field 'p'"],
    ),
}


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # Optuna's warning for the out-of-range point
@pytest.mark.parametrize("name", sorted(BAD_SPACES))
def test_bad_space_exits_2(name, space_package, run_main):
    source, fragments = BAD_SPACES[name]
    module = space_package(name, source)
    code, out, err = run_main("--space", module)
    prefix = [] if name == "no_function" else [f"search space '{name}'"]
    assert_one_line_error(code, err, *prefix, *fragments)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_ARGS = [
    (["--num-samples", "0"], ["--num-samples 0 is not allowed; allowed: >= 1"]),
    (["--sampler", "foo"], ["--sampler 'foo' is not allowed; allowed: tpe, tpe-rungs, nsga2, gp, random, grid"]),
    (["--objectives", "linear_acc:up"], ["--objectives 'linear_acc:up'", "expected name:max or name:min"]),
    (["--data-dir", "/nonexistent"], ["--data-dir '/nonexistent' is not allowed; allowed: an existing directory"]),
    (["--space", "nosuch"], ["unknown search space 'nosuch'", "allowed: grid, lejepa, rectified"]),
    (["--max-concurrent", "-1"], ["--max-concurrent -1 is not allowed"]),
    (["--workers-per-trial", "0"], ["--workers-per-trial 0 is not allowed; allowed: >= 1"]),
    (["--max-failed-trials", "-1"], ["--max-failed-trials -1 is not allowed"]),
    (["--tracking-patience", "0"], ["--tracking-patience 0.0 is not allowed; allowed: > 0 seconds"]),
    (["--set", "p=-1"], ["config field 'p' = -1.0 is not allowed; allowed: p > 0"]),
    (["--set", "lamda=0.5"], ["unknown config key 'lamda'"]),
    (["--backbone", "nosuchnet"], ["config field 'backbone' = 'nosuchnet'"]),
    (["--sampler", "grid"], ["--sampler grid needs a space with a GRID"]),
    (["--num-samples", "x"], ["argument --num-samples: invalid int value: 'x'"]),
    (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
]


@pytest.mark.parametrize("argv,fragments", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_cli_value_exits_2(argv, fragments, run_main):
    code, out, err = run_main(*argv)
    assert_one_line_error(code, err, *fragments)


def test_unreachable_tracking_server_exits_2(run_main):
    port = _closed_port()
    code, out, err = run_main("--tracking-uri", f"http://127.0.0.1:{port}")
    assert_one_line_error(code, err, f"tracking URI http://127.0.0.1:{port} unreachable")


def test_missing_sqlite_directory_exits_2(run_main, tmp_path):
    code, out, err = run_main("--tracking-uri", f"sqlite:///{tmp_path}/missing/mlflow.db")
    assert_one_line_error(code, err, f"directory {tmp_path}/missing does not exist")


def test_cli_script_exits_2_before_ray(tmp_path):
    """The sweep script itself: exit code 2, one line on stderr, no Ray instance started."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "rectified.py"),
            "--num-samples",
            "0",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "--num-samples 0 is not allowed")
    assert "Ray" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_density_space_solves_mu_for_the_density_it_asks_for():
    for params, _, cfg in sampled_trials("rectified_density", n=50):
        assert cfg.target.target_density == params["target_density"]
        assert l0_density_reference(cfg.target.p, cfg.target.mu, cfg.target.sigma) == pytest.approx(
            params["target_density"], abs=1e-6
        )
    from search_spaces import rectified_density

    densities = [pt["target_density"] for pt in rectified_density.STARTING_POINTS]
    assert max(densities) >= 0.5 and min(densities) <= 0.15
