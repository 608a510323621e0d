"""The package's shape: no import cycle between its modules (function-level imports and the
lazy exports of jepa_ray.lazy included, and none through `if TYPE_CHECKING:` blocks either), a config, a sweep
driver and a Pareto export that import without torch, entry points that run, the private-API
adapter's version check, and files of a readable size."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jepa_ray"
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def is_lazy_exports(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exports"


def imports_of(path: Path, modules: set[str], type_checking: bool = False) -> set[str]:
    """The package modules `path` imports, at module or function level (and for type checking
    when `type_checking`), or exports lazily (the modules named in `lazy.exports(...)`)."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif is_lazy_exports(node):
            for arg in node.args:
                if isinstance(arg, ast.Dict):
                    found.update(k.value for k in arg.keys if isinstance(k, ast.Constant) and k.value in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(here)
    return found


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules, type_checking) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 40 and "jepa_ray.train.loop" in graph["jepa_ray.train"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_even_through_type_checking_imports():
    """An annotation-only import that closes a circle is a layering error all the same."""
    cycle = find_cycle(import_graph(type_checking=True))
    assert cycle is None, "import cycle through TYPE_CHECKING: " + " -> ".join(cycle)


def test_the_method_and_data_layers_do_not_import_what_is_built_on_them():
    graph = import_graph()
    low = [
        m
        for m in graph
        if m.count(".")
        and m.split(".")[1]
        in (
            "targets",
            "regularizers",
            "distributed",
            "model",
            "convnets",
            "backbone_names",
            "lazy",
            "metrics",
            "seeding",
            "errors",
            "contract",
            "trial_spec",
            "data",
        )
    ]
    high = ("jepa_ray.train", "jepa_ray.sweep", "jepa_ray.tracking", "jepa_ray.pareto", "jepa_ray.config")
    for module in low:
        bad = sorted(m for m in graph[module] if m.startswith(high))
        assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize(
    "imports",
    [
        "jepa_ray.config",
        # the sweep driver and what it starts (the MLflow writer process, the Pareto export, the
        # data preflight, checkpoint files): seconds per process start, hundreds of MB each at scale
        "jepa_ray.sweep, jepa_ray.tracking.writer, jepa_ray.tracking.ops, jepa_ray.pareto, "
        "jepa_ray.train.checkpoint, jepa_ray.data.preflight",
        # a replayed sweep's driver: it serves every row through the collapse guard
        "jepa_ray.replay.tables, jepa_ray.train.guard",
    ],
)
def test_importing_the_config_and_the_driver_does_not_import_torch(imports):
    code = f"import sys, {imports}; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_planning_a_sweep_does_not_import_torch_once_timm_names_are_cached(tmp_path):
    """The driver resolves every trial's config (backbone names from the cached timm registry,
    the targets' closed forms) without torch: the first plan fills the cache, the next needs
    neither torch nor timm."""
    code = (
        "import sys; from jepa_ray.sweep import RECTIFIED, SweepOptions, plan\n"
        "for space in ('rectified', 'rectified_density'):\n"
        f"    plan(SweepOptions(**{{**RECTIFIED, 'space': space}}, tracking_uri='sqlite:///{tmp_path}/m.db',"
        f" storage_path='{tmp_path}/ray'))\n"
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr[-2000:]
    assert [run.stdout.split()[-2:] for run in runs] == [["True", "True"], ["False", "False"]]


def test_lazy_exports_resolve_every_name_and_refuse_unknown_ones():
    import jepa_ray.data
    import jepa_ray.train

    for package in (jepa_ray.data, jepa_ray.train):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    with pytest.raises(AttributeError, match="'jepa_ray.train' has no attribute 'nope'"):
        jepa_ray.train.nope  # noqa: B018


@pytest.mark.parametrize("module", ["jepa_ray.sweep", "jepa_ray.train", "jepa_ray.pareto"])
def test_python_dash_m_entry_points_answer_help(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--" in out.stdout


def test_the_private_api_adapter_checks_its_assumptions():
    from jepa_ray.sweep import search

    search.check_private_api()  # the installed Ray and Optuna have what the adapter uses

    class UpgradedSearcher:  # an upgrade that renamed the study attribute
        _ot_trials, _completed_trials = {}, set()

    with pytest.raises(RuntimeError, match=r"relies on OptunaSearch\._ot_study.*checked against ray 2\.60"):
        search.check_private_api(UpgradedSearcher)

    class UpgradedStorage:
        def set_trial_user_attr(self):
            pass

    with pytest.raises(RuntimeError, match=r"UpgradedStorage\.set_trial_state_values"):
        search.check_private_api(storage_cls=UpgradedStorage)


def test_a_one_epoch_sweep_is_not_refused_for_its_warmup():
    """`sweeps/rectified.py --epochs 1` used to exit 2 (warmup_epochs 2 > epochs 1)."""
    from jepa_ray import sweep

    cfg = sweep.base_config(sweep.SweepOptions(preset="digits-sweep", epochs=1))
    assert cfg.optim.epochs == 1


def test_package_files_stay_readable():
    long = {
        str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines (split them, or state why at the top): {long}"


def ray_inits_without_an_address(path: Path) -> list[int]:
    """Lines of `path` that call `ray.init(...)` without `address=`."""
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "init"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ray"
        and not any(k.arg == "address" for k in node.keywords)
    ]


def test_ray_init_always_says_which_instance():
    """Found when a search benchmark started beside a running `ray up` head: `ray.init()` with no
    address joins whatever cluster this machine runs (and refuses `num_cpus` there). Every call
    names one: "local" for an instance of its own, or the cluster's address."""
    assert ray_inits_without_an_address(ROOT / "tests" / "conftest.py") == []
    bad = {
        str(path.relative_to(ROOT)): lines
        for folder in ("jepa_ray", "benchmarks", "sweeps")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (lines := ray_inits_without_an_address(path))
    }
    assert bad == {}
