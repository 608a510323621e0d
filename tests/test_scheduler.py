"""The multi-objective successive-halving scheduler (jepa_ray.sweep.rungs): its ranking
against brute force, Tune runs of synthetic curves (dominated trials stopped at the right rung,
non-dominated ones promoted, each objective's direction honoured), and a sweep with it end to
end, resumed."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from jepa_ray import tracking
from jepa_ray.contract import FAILURE_KIND, STOPPED
from jepa_ray.errors import UsageError
from jepa_ray.pareto.dominance import crowding_distance, nondominated_ranks
from jepa_ray.sweep.rungs import MultiObjectiveASHA, Signal, parse_signals, priority_keys, rung_levels

SIGNALS = [Signal("acc", "max"), Signal("density", "min")]


def brute_force_fronts(points: np.ndarray) -> list[int]:
    """Front of each point by peeling: front k = points dominated only by fronts < k."""
    left, front, out = set(range(len(points))), 0, [0] * len(points)
    while left:
        current = {
            i
            for i in left
            if not any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in left if j != i)
        }
        for i in current:
            out[i] = front
        left -= current
        front += 1
    return out


def test_fronts_match_brute_force_and_crowding_has_infinite_ends():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.integers(0, 5, size=(12, 2)).astype(float)
        assert (nondominated_ranks(pts, ["min", "min"]) - 1).tolist() == brute_force_fronts(pts)
    line = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    dist = crowding_distance(line)
    assert math.isinf(dist[0]) and math.isinf(dist[3])
    assert dist[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4) and dist[2] == pytest.approx((4 - 1) / 4 + (2 - 0) / 4)


def priority_order(values: np.ndarray, modes: list[str]) -> list[int]:
    """Indices best first by the scheduler's priority keys (front, then crowding), then arrival."""
    keys = priority_keys(values, modes)
    return sorted(range(len(keys)), key=lambda i: (keys[i], i))


def test_priority_keys_honour_each_direction():
    values = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.5]])  # acc, density
    assert priority_order(values, ["max", "min"])[-1] == 1  # dominated by the first
    flipped = priority_order(values, ["max", "max"])  # now a denser z is better
    assert (nondominated_ranks(values * np.array([-1, -1]), ["min", "min"]) - 1).tolist() == [1, 1, 0]
    assert flipped[0] == 2


def test_rung_levels_and_signal_parsing():
    assert rung_levels(1, 3, 30) == [1, 3, 9, 27]
    assert rung_levels(3, 3, 30) == [3, 9, 27]
    assert rung_levels(2, 2, 9) == [2, 4, 8]
    assert parse_signals("online/linear_acc:max, train/l0_density:min") == [
        Signal("online/linear_acc", "max"),
        Signal("train/l0_density", "min"),
    ]
    for bad in ("acc", "acc:up", ""):
        with pytest.raises(UsageError, match="--scheduler-signals"):
            parse_signals(bad)
    with pytest.raises(UsageError, match="--scheduler-eta"):
        MultiObjectiveASHA(SIGNALS, 10, eta=1.0)


def test_judge_follows_the_moasha_rule():
    """The first trial at a rung continues; a later one stops when its rank fraction among the
    rung's trials exceeds 1/eta; a replayed rung is not judged again."""
    s = MultiObjectiveASHA(SIGNALS, max_epochs=10, min_epochs=1, eta=3)
    epoch0 = lambda acc, density: {"epoch": 0, "acc": acc, "density": density}  # noqa: E731
    assert s.judge("a", epoch0(0.9, 0.1)) == (False, "")
    stop, why = s.judge("b", epoch0(0.8, 0.2))
    assert stop and why.startswith("rung 1: dominated by 1 of 1, 1 of 1 ranked ahead")
    assert s.judge("c", epoch0(0.95, 0.3))[0] is False  # a trade-off with a: an end of front 0, like a
    assert s.judge("d", epoch0(0.7, 0.5))[0] is True
    assert s.judge("b", epoch0(0.0, 1.0)) == (False, "")  # b replayed: judged once
    assert s.judge("e", {"epoch": 1, "acc": 0.0, "density": 1.0}) == (False, "")  # epoch 2 is no rung
    assert s.judge("f", {"epoch": 0, "acc": float("nan"), "density": 0.1}) == (False, "")


def test_a_repeated_configuration_is_judged_as_a_trial_of_its_own():
    """Two trials of the same parameters (a repeat trains with a new seed) are each judged at a
    rung; a trial re-run after --resume (same trial key, new Tune trial) is judged once."""
    from ray.tune.schedulers import TrialScheduler

    class Trial:
        def __init__(self, trial_id: str, key: str):
            self.trial_id, self.config = trial_id, {"params_key": "same", "trial_key": key}

    s = MultiObjectiveASHA(SIGNALS, max_epochs=10, min_epochs=1, eta=3)
    result = lambda acc: {"epoch": 0, "acc": acc, "density": 0.5}  # noqa: E731
    assert s.on_trial_result(None, Trial("t0", "0"), result(0.9)) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, Trial("t1", "1"), result(0.1)) == TrialScheduler.STOP
    assert s.on_trial_result(None, Trial("t2", "1"), result(0.0)) == TrialScheduler.CONTINUE
    assert list(s.stopped) == ["t1"]


def test_top_k_after_the_first_rung_keeps_a_fixed_number_not_a_fraction():
    """One rung; a trial goes on when fewer than k recorded there rank ahead of it, so the first
    k always go on and later ones only by beating the k-th best seen."""
    from jepa_ray.sweep.rungs import TopKAfterFirstRung

    s = TopKAfterFirstRung(SIGNALS, max_epochs=10, min_epochs=2, k=2)
    assert s.rungs == [2]
    at = lambda acc, epoch=1: {"epoch": epoch, "acc": acc, "density": 0.5}  # noqa: E731
    decisions = [s.judge(str(i), at(acc))[0] for i, acc in enumerate((0.5, 0.4, 0.3, 0.6, 0.45, 0.7))]
    assert decisions == [False, False, True, False, True, False]
    assert s.judge("x", at(0.0, epoch=5)) == (False, "")  # no later rung
    assert s.judge("y", at(0.1)) == (True, "rung 2: 6 of 6 ranked ahead (kept: the top 2)")
    with pytest.raises(UsageError, match="--scheduler-top-k 0 is not allowed"):
        TopKAfterFirstRung(SIGNALS, 10, k=0)


def test_syne_tunes_moasha_decides_as_ours_on_one_signal_and_judges_every_trial():
    """benchmarks/syne_moasha.py: Syne Tune's MOASHA behind the sweep's scheduler interface. On one
    signal without ties both rules are ASHA's, so the decisions must agree trial by trial, two
    trials of one configuration included (each judged)."""
    pytest.importorskip("syne_tune")
    import random
    import sys

    from ray.tune.schedulers import TrialScheduler

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from syne_moasha import SyneMOASHA

    class Trial:
        def __init__(self, trial_id: str):
            self.trial_id, self.config = trial_id, {"params_key": "same", "trial_key": trial_id}

    signals = [Signal("acc", "max")]
    ours, theirs = MultiObjectiveASHA(signals, 27, min_epochs=1, eta=3), SyneMOASHA(signals, 27, 1, 3)
    rng = random.Random(0)
    trials = [Trial(f"t{i}") for i in range(40)]
    quality = {t.trial_id: rng.random() for t in trials}
    alive = {t.trial_id: True for t in trials}
    for t in trials:
        ours.on_trial_add(None, t)
        theirs.on_trial_add(None, t)
    for epoch in range(27):
        for t in trials:
            if not alive[t.trial_id]:
                continue
            result = {"epoch": epoch, "acc": quality[t.trial_id] * (epoch + 1) + 1e-9 * rng.random()}
            a, b = ours.on_trial_result(None, t, result), theirs.on_trial_result(None, t, result)
            assert a == b, (t.trial_id, epoch)
            alive[t.trial_id] = a == TrialScheduler.CONTINUE
    assert 0 < sum(alive.values()) < len(trials) and set(theirs.stopped) == set(ours.stopped)


# --------------------------------------------------------------------------------------------
# Tune runs of synthetic curves


CURVES = {  # trial -> (acc, density), constant over epochs; they run in this order
    "best": (0.90, 0.10),
    "dominated": (0.80, 0.20),
    "worse": (0.70, 0.30),
    "trade_off": (0.95, 0.40),
    "dominated_late": (0.60, 0.90),
    "sparse_poor": (0.50, 0.05),
}


def run_synthetic(signals: list[Signal]) -> dict[str, int]:
    """name -> epochs each synthetic trial trained before it ended (6: ran to its end)."""
    from ray import tune

    curves = dict(CURVES)

    def synthetic_trial(config):  # nested: pickled by value, so Ray workers need no test module
        from ray import tune

        acc, density = curves[config["name"]]
        for epoch in range(6):
            tune.report({"epoch": epoch, "acc": acc, "density": density})

    scheduler = MultiObjectiveASHA(signals, max_epochs=6, min_epochs=1, eta=3)
    tuner = tune.Tuner(
        synthetic_trial,
        param_space={"name": tune.grid_search(list(CURVES))},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(verbose=0),
    )
    results = tuner.fit()
    trained = {r.config["name"]: r.metrics["epoch"] + 1 for r in results}
    assert set(scheduler.stopped.values()) and all(w.startswith("rung 1:") for w in scheduler.stopped.values())
    return trained


@pytest.mark.slow
def test_dominated_trials_stop_at_the_first_rung_and_the_front_runs_on(ray_cluster):
    trained = run_synthetic(SIGNALS)
    assert trained == {"best": 6, "dominated": 1, "worse": 1, "trade_off": 6, "dominated_late": 1, "sparse_poor": 6}


@pytest.mark.slow
def test_flipping_a_direction_flips_who_is_dominated(ray_cluster):
    """With density maximized, the sparse, inaccurate trial is the one dominated by all (stopped at
    the first rung), and the others are trade-offs with those before them (kept)."""
    trained = run_synthetic([Signal("acc", "max"), Signal("density", "max")])
    assert trained == {"best": 6, "dominated": 6, "worse": 6, "trade_off": 6, "dominated_late": 6, "sparse_poor": 1}


# --------------------------------------------------------------------------------------------
# A sweep with the scheduler, end to end


@pytest.mark.slow
def test_sweep_with_the_scheduler_records_stopped_trials_and_resumes_their_rungs(ray_cluster, tmp_path):
    from test_sweep import client, load_study, parent_and_children, run_sweep

    args = (
        "--replay",  # recorded digits curves: the scheduler, MLflow and --resume run as for trained trials
        str(Path(__file__).resolve().parents[1] / "benchmarks" / "curves" / "digits.parquet"),
        "--scheduler",
        "moasha",
        "--scheduler-min-epochs",
        "1",
        "--sampler",
        "random",
        "--seed",
        "0",  # the same six configurations every run (one at a time: the same stops too)
        "--max-concurrent",
        "1",
        "--set",
        "collapse_guard=false",
    )
    run = run_sweep(tmp_path, *args, "--num-samples", "6", address=ray_cluster)
    assert run.returncode == 0, run.output()
    assert "stopped at a rung" in run.stdout
    parent, children = parent_and_children(run)
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"} and len(children) == 6
    stopped = [r for r in children if r.info.status == "KILLED"]
    assert stopped, "no trial was stopped"
    c = client(run)
    for r in stopped:
        assert r.data.tags[STOPPED].startswith("rung ") and r.data.tags[FAILURE_KIND] == "stopped"
        rung = int(r.data.tags[STOPPED].split()[1].rstrip(":"))
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train/loss"))
        assert steps == list(range(rung)), (r.data.tags[STOPPED], steps)  # its curve up to the rung, kept
    study = load_study(run, parent)
    states = sorted(t.state.name for t in study.get_trials())
    assert states == sorted(["PRUNED"] * len(stopped) + ["COMPLETE"] * (6 - len(stopped)))
    assert all(t.user_attrs["rung_stop"].startswith("rung ") for t in study.get_trials() if t.state.name == "PRUNED")
    curve = c.get_metric_history(parent.info.run_id, "sweep/hypervolume")
    assert len(curve) == 6 and all(
        a.value <= b.value for a, b in itertools.pairwise(sorted(curve, key=lambda m: m.step))
    )

    # --resume with more trials: stopped trials stay stopped, and new ones are judged against the
    # rungs the first run recorded (rebuilt from MLflow).
    again = run_sweep(tmp_path, *args, "--num-samples", "9", "--resume", address=ray_cluster)
    assert again.returncode == 0, again.output()
    assert "3 trials launched, 6 already finished" in again.stdout
    _, children = parent_and_children(again)
    assert len(children) == 9
    assert {r.info.run_id for r in children if r.info.status == "KILLED"} >= {r.info.run_id for r in stopped}
    first = {r.info.run_id for r in stopped}
    reasons = [r.data.tags[STOPPED] for r in children if r.info.status == "KILLED" and r.info.run_id not in first]
    for why in reasons:  # "dominated by x of n": n counts the first run's trials at that rung
        assert int(why.split(" of ")[1].split(",")[0]) >= 6 - len(stopped), why
    assert not load_study(again, parent).get_trials(states=[optuna.trial.TrialState.RUNNING])
    assert tracking.FAILURE not in {k for r in children if r.info.status == "FINISHED" for k in r.data.tags}
