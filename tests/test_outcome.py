"""The three routine changes issue 19 made one-module changes, each shown here with nothing but
this test module touched: a trial's end classified once (the outcome ledger) so any Tune
scheduler plugs in (stock ASHA's stops come out stopped everywhere); a new target distribution
registered here trains; a final metric with no known range used as an objective gives the sweep's
hypervolume curve and the export the same value. Also: FINAL_METRICS is what a trial produces,
and an unsupported Ray stops a sweep at its start."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.special
import torch

from jepa_ray import config as config_lib
from jepa_ray import contract, targets
from jepa_ray.outcome import Ledger, Outcome, classify

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# The ledger


def test_classify_reads_an_end_in_one_order():
    final = {"epoch": 3, "linear_acc": 0.9, "l0_density": 0.1, contract.FINAL_RESULT: True}
    objectives = ("linear_acc", "l0_density")
    assert classify(final, objectives=objectives).outcome is Outcome.FINISHED
    assert classify({**final, "l0_density": math.nan}, objectives=objectives).outcome is Outcome.FAILED
    assert classify(final, error="Traceback ...\nRuntimeError: CUDA out of memory").reason == (
        "RuntimeError: CUDA out of memory"
    )
    collapsed = classify({"failure": "collapse at epoch 3: z is all zeros", "failure_kind": "collapsed"})
    assert (collapsed.outcome, collapsed.optuna_state, collapsed.mlflow_status) == (
        Outcome.COLLAPSED,
        "PRUNED",
        "FAILED",
    )
    stopped = classify({"epoch": 2}, scheduler_stop="rung 3: dominated by 2 of 4")
    assert (stopped.outcome, stopped.optuna_state, stopped.mlflow_status, stopped.label, stopped.epochs) == (
        Outcome.STOPPED,
        "PRUNED",
        "KILLED",
        "rung 3",
        3,
    )
    cut = classify({"epoch": 1}, sweep_stop="stopped before its end: the budget was spent")
    assert (cut.outcome, cut.optuna_state, cut.failure_kind) == (
        Outcome.UNFINISHED,
        "FAIL",
        contract.FailureKind.UNFINISHED,
    )
    assert classify({"epoch": 1}).outcome is Outcome.UNFINISHED  # only Tune stops a trial without a report


def test_the_ledger_classifies_once_and_closes_what_the_sweep_cut_short():
    ledger = Ledger(("linear_acc",))
    for t in ("a", "b", "c"):
        ledger.start(t)
    ledger.note_stop("b", "stopped by AsyncHyperBandScheduler after epoch 1")
    assert ledger.end("a", {"epoch": 0, "linear_acc": 0.5, contract.FINAL_RESULT: True}).outcome is Outcome.FINISHED
    first = ledger.end("b", {"epoch": 0})
    assert ledger.end("b", {"epoch": 9, "linear_acc": 1.0, contract.FINAL_RESULT: True}) is first  # decided once
    assert ledger.close("the sweep's budget was spent", also=["d"]) == ["c", "d"]
    assert [ledger.get(t).outcome for t in "abcd"] == [Outcome.FINISHED, Outcome.STOPPED, *[Outcome.UNFINISHED] * 2]
    assert (ledger.count(Outcome.UNFINISHED), ledger.unended()) == (2, [])


def test_a_trial_tune_recovers_after_its_actor_died_ends_as_it_really_ends():
    """Found by benchmarks/chaos.py (a trial's actor killed with SIGKILL): Tune recovers such a
    trial (max_failures) by calling the scheduler's on_trial_error and then adding the trial
    again (TuneController._requeue_trial). That error is not the trial's end: the retried trial
    that finishes is FINISHED (it was FAILED in Optuna and MLflow, and counted toward
    --max-failed-trials). An error Tune does not recover from stays the trial's end."""
    from types import SimpleNamespace

    from jepa_ray.sweep.schedulers import LedgerScheduler

    ledger = Ledger(("linear_acc",))
    scheduler = LedgerScheduler(None, ledger)
    died = "The actor died unexpectedly before finishing this task."
    final = {"epoch": 3, "linear_acc": 0.8, contract.FINAL_RESULT: True}
    recovered = SimpleNamespace(trial_id="recovered", last_result={"epoch": 1}, error_message=died)
    scheduler.on_trial_add(None, recovered)
    scheduler.on_trial_error(None, recovered)  # Tune's _requeue_trial: on_trial_error, then on_trial_add
    scheduler.on_trial_add(None, recovered)
    assert ledger.unended() == ["recovered"]
    scheduler.on_trial_complete(None, recovered, final)
    assert ledger.get("recovered").outcome is Outcome.FINISHED and ledger.get("recovered").epochs == 4

    failed = SimpleNamespace(trial_id="failed", last_result={"epoch": 1}, error_message=died)
    scheduler.on_trial_add(None, failed)
    scheduler.on_trial_error(None, failed)  # not recovered: the searcher and callbacks read this end
    assert ledger.end("failed", final).outcome is Outcome.FAILED and ledger.count(Outcome.FAILED) == 1


# --------------------------------------------------------------------------------------------
# FINAL_METRICS and EPOCH_METRICS are what a trial produces


def test_the_contract_lists_exactly_the_metrics_a_trial_produces(tmp_path):
    from jepa_ray.train import LocalReporter, fit

    cfg = config_lib.build("smoke", ["threads_per_worker=1"])
    epochs: list[dict] = []
    final = fit(cfg, LocalReporter(tmp_path), on_epoch=epochs.append)
    per_epoch = set(epochs[0]) - {contract.EPOCH, *contract.DATA_SIZES}
    assert per_epoch == set(contract.EPOCH_METRICS)
    assert set(final) - set(epochs[-1]) == set(contract.FINAL_METRICS)
    assert set(contract.HEADLINE_METRICS) <= set(contract.FINAL_METRICS)


# --------------------------------------------------------------------------------------------
# A target registered here, and nowhere else, trains


def _logistic_l0(p: float, mu: float, sigma: float) -> float:
    return float(scipy.special.expit(mu / sigma))


def _draw_rlogistic(n, p, mu, sigma, generator, device, dtype):
    u = torch.rand(n, generator=generator, device=device, dtype=dtype).clamp_(1e-7, 1 - 1e-7)
    return torch.relu(mu + sigma * (u.log() - (-u).log1p()))


RLOGISTIC = targets.Target(
    name="test-rlogistic",
    doc="ReLU(Logistic(mu, sigma)): a sparse target known only to this test module.",
    rectified=True,
    shaped=True,
    regularizers=("rdmreg",),
    draw=_draw_rlogistic,
    l0_density=_logistic_l0,
    moments=lambda p, mu, sigma: (math.nan, math.nan),
    unit_variance_sigma=lambda p, mu: math.sqrt(3.0) / math.pi,
    mu_for_density=lambda p, density, sigma: sigma * math.log(density / (1.0 - density)),
)


@pytest.fixture
def rlogistic():
    targets.register_target(RLOGISTIC)
    try:
        yield RLOGISTIC
    finally:
        targets.TARGETS.pop(RLOGISTIC.name)


def test_a_target_registered_in_a_test_module_trains_a_smoke_trial(rlogistic, tmp_path):
    from jepa_ray.train import LocalReporter, fit

    cfg = config_lib.build("smoke", [f"target={rlogistic.name}", "target_density=0.2", "threads_per_worker=1"])
    assert cfg.target.mu == pytest.approx(cfg.target.sigma * math.log(0.2 / 0.8))  # its own inverse
    final = fit(cfg, LocalReporter(tmp_path))
    assert final["target_l0_density"] == pytest.approx(_logistic_l0(cfg.target.p, cfg.target.mu, cfg.target.sigma))
    assert 0.0 < final["l0_density"] < 1.0 and np.isfinite(final["linear_acc"])  # z passed the ReLU: sparse
    y = targets.sample(rlogistic.name, (20_000,), mu=cfg.target.mu, sigma=cfg.target.sigma, generator=torch.Generator())
    assert float((y > 0).float().mean()) == pytest.approx(final["target_l0_density"], abs=0.01)
    with pytest.raises(config_lib.ConfigError, match="regularizer"):
        config_lib.build("smoke", [f"target={rlogistic.name}", "regularizer=sigreg"])


# --------------------------------------------------------------------------------------------
# An unsupported Ray stops a sweep before Ray does work


def test_an_unsupported_ray_version_exits_2_at_sweep_start(monkeypatch, capsys, tmp_path):
    import ray

    from jepa_ray import sweep

    monkeypatch.setattr(ray, "__version__", "2.99.0")
    started: list = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(a or k))  # another test may have Ray up
    code = sweep.main(["--smoke", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: installed ray 2.99.0 is not supported")
    assert not started and not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------------------------
# Stock ASHA over a replayed sweep (the digits curve table: stops and outcomes do not depend on
# whether a trial trained or replayed); a metric without a known range as an objective


@pytest.mark.slow
def test_stock_asha_stops_come_out_stopped_and_the_curve_ends_at_the_exported_hypervolume(ray_cluster, tmp_path):
    from test_sweep import client, load_study, parent_and_children, run_sweep

    from jepa_ray import pareto

    objectives = "linear_acc:max,rank_me:max"  # rank_me: no known range, its reference the worst seen
    run = run_sweep(
        tmp_path,
        *("--replay", str(ROOT / "benchmarks" / "curves" / "digits.parquet")),
        *("--scheduler", "asha", "--scheduler-min-epochs", "1"),
        *("--sampler", "random", "--seed", "3", "--max-concurrent", "1", "--num-samples", "6"),
        *("--objectives", objectives, "--set", "collapse_guard=false"),
        address=ray_cluster,
    )
    assert run.returncode == 0, run.output()
    parent, children = parent_and_children(run)
    stopped = [r for r in children if r.info.status == "KILLED"]
    assert stopped and {r.info.status for r in children} == {"FINISHED", "KILLED"}, run.output()
    for r in stopped:
        assert r.data.tags[contract.STOPPED].startswith("stopped by AsyncHyperBandScheduler after epoch ")
        assert r.data.tags[contract.FAILURE_KIND] == "stopped" and contract.FAILURE not in r.data.tags
    assert f"{len(stopped)} stopped at a rung" in run.stdout
    study = load_study(run, parent)
    states = sorted(t.state.name for t in study.get_trials())
    assert states == sorted(["PRUNED"] * len(stopped) + ["COMPLETE"] * (6 - len(stopped)))
    assert all(t.state != optuna.trial.TrialState.FAIL for t in study.get_trials())

    curve = client(run).get_metric_history(parent.info.run_id, "sweep/hypervolume")
    last = max(curve, key=lambda m: (m.step, m.timestamp)).value
    exported = pareto.extract(
        run.tracking_uri, "test-sweep", sweep_run_ids=[parent.info.run_id], objectives=objectives
    ).hypervolume
    assert last == pytest.approx(exported, rel=1e-12) and last > 0
