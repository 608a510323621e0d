"""What a researcher opens after a sweep: `mlflow ui` in a real browser and `optuna-dashboard`,
both started as the sweep prints them, over one smoke sweep's store (tests/test_sweep.py runs it).

The browser is Playwright driving the system's Chromium (Debian's `chromium`, or the binary in
$JEPA_RAY_CHROMIUM) through `executable_path`; no browser is downloaded. The browser tests skip,
with the reason, only where Playwright is not importable or Chromium cannot be found or launched.
Screenshots go to $JEPA_RAY_TEST_ARTIFACTS if set, else to a pytest temporary directory; the path
is printed at the end of the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from test_sweep import EXPERIMENT, Sweep

from jepa_ray import contract, tracking

pytestmark = pytest.mark.slow

SERVER_START_TIMEOUT_S = 180
"""`mlflow ui` takes 20-40 s to answer on a small, busy CPU."""
PAGE_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1600, "height": 1000}
TRAINING_VIEW = "workflowType=machine_learning"
"""MLflow 3.17's UI picks the GenAI or the "Model training" view from its sidebar switch: this
query parameter, else the browser's stored choice, else GenAI. The experiment's
`mlflow.experimentKind` tag, which the sweep sets, does not override the switch in 3.17 (a bare
`#/experiments/<id>` opens the GenAI overview), so the test opens the view the way a link can."""
QUIET_ASSISTANT = (
    "window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
)
"""Keeps MLflow's assistant panel from opening over a third of every screenshot."""


# --------------------------------------------------------------------------------------------
# The sweep, the servers, the browser


@pytest.fixture(scope="module")
def smoke(smoke_sweep) -> Sweep:
    return smoke_sweep  # conftest.py: one smoke sweep for every test that reads one


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8", "replace")


def console_script(name: str) -> str:
    """The console script installed beside this interpreter (the project's environment), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e .` installs it"
    return found


class Server:
    """A server started in its own process group (so its workers stop with it), its output in a log."""

    def __init__(self, command: list[str], cwd: Path, log: Path, ready_url: str) -> None:
        self.command, self.log, self.ready_url = command, log, ready_url
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.command[0]} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if http_get(self.ready_url, timeout=5)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        pytest.fail(f"{self.ready_url} did not answer in {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def mlflow_ui(smoke, tmp_path_factory):
    """`mlflow ui --backend-store-uri <the sweep's store>` on 127.0.0.1; yields its base URL."""
    port = free_port()
    command = [console_script("mlflow"), "ui", "--backend-store-uri", smoke.tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = tmp_path_factory.mktemp("mlflow-ui") / "mlflow-ui.log"
    server = Server(command, smoke.dir, log, f"http://127.0.0.1:{port}/health")
    try:
        server.wait_ready()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dashboard(smoke, tmp_path_factory):
    """`optuna-dashboard <the sweep's study storage>` on 127.0.0.1; yields its base URL."""
    port = free_port()
    command = [console_script("optuna-dashboard"), smoke.optuna_storage, "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path_factory.mktemp("optuna-dashboard") / "optuna-dashboard.log"
    server = Server(command, smoke.dir, log, f"http://127.0.0.1:{port}/api/studies")
    try:
        server.wait_ready()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def chromium_executable() -> str | None:
    if os.environ.get("JEPA_RAY_CHROMIUM"):
        return os.environ["JEPA_RAY_CHROMIUM"]
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    """Chromium, headless. Browser tests request it first, so that they skip before a sweep runs."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    executable = chromium_executable()
    if executable is None:
        pytest.skip("Chromium not found: no `chromium` on PATH and JEPA_RAY_CHROMIUM unset (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        try:
            # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
            launched = pw.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
        except sync_api.Error as err:
            pytest.skip(f"Chromium at {executable} does not launch: {str(err).splitlines()[0]}")
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def screenshots(request, tmp_path_factory) -> Path:
    root = os.environ.get("JEPA_RAY_TEST_ARTIFACTS")
    path = Path(root) / "ui" if root else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    yield path
    shots = sorted(p.name for p in path.glob("*.png"))
    line = f"tests/test_ui.py screenshots ({len(shots)}): {path}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line)
    else:
        with capture.global_and_fixture_disabled():  # shown on the terminal, not captured
            print(f"\n{line}")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(QUIET_ASSISTANT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=PAGE_TIMEOUT_MS)  # its own default, 5 s, is short for a busy CPU
    return playwright_expect(locator)


# --------------------------------------------------------------------------------------------
# What the sweep recorded (the MLflow API), to look for in the UI


def experiment_parent_children(run: Sweep):
    client = tracking.client(run.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([experiment.experiment_id], f"tags.`{contract.ROLE}` = '{contract.ROLE_SWEEP}'")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    children = client.search_runs([experiment.experiment_id], f"tags.`{contract.PARENT}` = '{parent.info.run_id}'")
    assert children, "the sweep has no trial runs"
    children.sort(key=lambda r: int(r.data.tags[contract.OPTUNA_TRIAL]))
    return experiment, parent, children


def artifact_files(run: Sweep, run_id: str, path: str | None = None) -> list[str]:
    client = tracking.client(run.tracking_uri)
    files = []
    for info in client.list_artifacts(run_id, path):
        files.extend(artifact_files(run, run_id, info.path) if info.is_dir else [info.path])
    return files


def run_url(base: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{'/' + tab if tab else ''}?{TRAINING_VIEW}"


def open_artifact(page, path: str) -> None:
    """Clicks through the artifact tree to `path` (folders, then the file) and waits for its preview."""
    for name in path.split("/"):
        page.locator(f'[data-testid="artifact-tree-node"][artifact-name="{name}"]').first.click()
    expect(page.get_by_text("Path: ").first).to_contain_text(path)


def expect_image_loaded(page, alt: str) -> None:
    image = page.locator(f'main img[alt="{alt}"]').first
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => img.naturalWidth") >= 100, f"{alt} is not a picture"


# --------------------------------------------------------------------------------------------
# mlflow ui, in the browser


def test_mlflow_ui_opens_the_experiment_on_its_runs_with_the_trials_nested(
    browser, smoke, mlflow_ui, page, screenshots
):
    experiment, parent, children = experiment_parent_children(smoke)
    # The link the sweep printed, on the test's port: what a new user opens.
    printed = next(line for line in smoke.stdout.splitlines() if line.startswith("MLflow: "))
    link = printed.split(", then open ")[1].strip()
    assert link == f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?{TRAINING_VIEW}", printed
    page.goto(link.replace("http://127.0.0.1:5000", mlflow_ui))
    parent_link = page.get_by_role("link", name=parent.info.run_name, exact=True)
    expect(parent_link).to_be_visible()
    assert "/runs" in page.url, page.url  # the runs table, not the GenAI overview
    expect(page.get_by_role("heading", level=2, name="Runs")).to_be_visible()
    assert page.get_by_text("No data available").count() == 0
    expect(page.get_by_text(f"{1 + len(children)} matching runs")).to_be_visible()

    # Nested: the trials are hidden under their parent until it is expanded.
    child_links = [page.get_by_role("link", name=c.info.run_name, exact=True) for c in children]
    assert all(link.count() == 0 for link in child_links)
    parent_cell = page.get_by_role("gridcell").filter(has=parent_link)
    parent_cell.get_by_role("button").first.click()
    for child, link in zip(children, child_links):
        expect(link).to_be_visible()
        assert link.get_attribute("href").endswith(f"/runs/{child.info.run_id}")
    page.screenshot(path=screenshots / "mlflow-runs.png")

    # The sweep marks its experiment as model training. MLflow's UI reads this tag where its
    # GenAI / Model training switch is off; in 3.17 the switch decides (TRAINING_VIEW).
    kind = experiment.tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development", f"experiment tag mlflow.experimentKind is {kind!r}"


def test_mlflow_ui_trial_page_shows_params_charts_activation_plot_and_checkpoint(
    browser, smoke, mlflow_ui, page, screenshots
):
    experiment, parent, children = experiment_parent_children(smoke)
    trial = children[0]
    params, checkpoint = trial.data.params, trial.data.tags[contract.CHECKPOINT]

    page.goto(run_url(mlflow_ui, experiment.experiment_id, trial.info.run_id))
    expect(page.get_by_role("heading", level=2, name=trial.info.run_name, exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name=f"Parameters ({len(params)})")).to_be_visible()
    for name in ("mu", "p", "sigma", "lambd", "num_slices", "proj_dims", "target", "lr", "batch_size", "seed"):
        expect(page.get_by_role("row", name=f"{name} {params[name]}", exact=True)).to_be_visible()
    expect(page.get_by_role("status", name=contract.CHECKPOINT, exact=True)).to_contain_text(checkpoint)
    expect(page.get_by_role("link", name=parent.info.run_name, exact=True)).to_be_visible()  # "Parent run"
    page.screenshot(path=screenshots / "mlflow-trial-overview.png", full_page=True)

    # Per-epoch charts: one per epoch metric (MLflow titles a chart by the key's last part, with
    # the whole key as the heading's title).
    page.get_by_role("tab", name="Model metrics").click()
    search = page.get_by_role("searchbox", name="Search metric charts")
    for metric in contract.EPOCH_METRICS:
        search.fill(metric)
        expect(page.locator(f'h4[title="{metric}"]')).to_be_visible()
    search.fill("train/")
    expect(page.locator(f'h4[title="{contract.EPOCH_PROBE_METRIC}"]')).to_be_visible()
    page.screenshot(path=screenshots / "mlflow-trial-charts.png", full_page=True)

    page.get_by_role("tab", name="Artifacts").click()
    assert "activation_rates.png" in artifact_files(smoke, trial.info.run_id)
    open_artifact(page, "activation_rates.png")
    expect_image_loaded(page, "activation_rates.png")
    page.screenshot(path=screenshots / "mlflow-trial-activation-rates.png")


def test_mlflow_ui_parent_artifacts_hold_the_pareto_plot(browser, smoke, mlflow_ui, page, screenshots):
    experiment, parent, _ = experiment_parent_children(smoke)
    files = artifact_files(smoke, parent.info.run_id)
    plots = [f for f in files if f.endswith(".png") and "pareto" in f.rsplit("/", 1)[-1]]
    assert plots, f"no Pareto plot among the parent run's artifacts: {files}"

    page.goto(run_url(mlflow_ui, experiment.experiment_id, parent.info.run_id, "artifacts"))
    expect(page.get_by_role("heading", level=2, name=parent.info.run_name, exact=True)).to_be_visible()
    open_artifact(page, plots[0])
    expect_image_loaded(page, plots[0])
    page.screenshot(path=screenshots / "mlflow-parent-pareto.png")


# --------------------------------------------------------------------------------------------
# optuna-dashboard


def test_optuna_dashboard_serves_the_sweeps_study(smoke, dashboard):
    _, parent, children = experiment_parent_children(smoke)
    study_name = parent.data.tags[contract.SWEEP_NAME]
    status, body = http_get(f"{dashboard}/api/studies")
    assert status == 200
    studies = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
    assert study_name in studies, list(studies)
    assert studies[study_name]["directions"] == ["maximize", "minimize"]

    study_id = studies[study_name]["study_id"]
    status, page_html = http_get(f"{dashboard}/dashboard/studies/{study_id}")
    assert status == 200 and "Optuna Dashboard" in page_html
    status, body = http_get(f"{dashboard}/api/studies/{study_id}")
    study = json.loads(body)
    assert status == 200 and study["name"] == study_name
    assert len(study["trials"]) == len(children)
    assert {t["state"] for t in study["trials"]} == {"Complete"}
    assert study.get("objective_names") == ["linear_acc", "l0_density"], sorted(study)  # not "Objective 0"


def test_optuna_dashboard_study_page_in_the_browser(browser, smoke, dashboard, page, screenshots):
    _, parent, _ = experiment_parent_children(smoke)
    study_name = parent.data.tags[contract.SWEEP_NAME]
    searched = set(optuna.load_study(study_name=study_name, storage=smoke.optuna_storage).trials[0].params)
    page.goto(f"{dashboard}/dashboard")
    page.get_by_text(study_name).first.click()
    for heading in ("Pareto Front", "Hyperparameter Importance", "Timeline"):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    expect(page.get_by_text(study_name).first).to_be_visible()
    # Importances of the searched parameters (the plot's y axis), which MLflow does not compute.
    importance = page.locator(".MuiCard-root", has=page.get_by_role("heading", name="Hyperparameter Importance"))
    expect(importance.locator("g.ytick text")).to_have_count(len(searched))
    assert {t.text_content() for t in importance.locator("g.ytick text").all()} == searched
    page.screenshot(path=screenshots / "optuna-dashboard-study.png", full_page=True)
