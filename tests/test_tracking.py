"""What the driver writes to MLflow: every epoch exactly once, with the values of the training
that produced the final weights, whatever restarts happened (tracking.EpochLog); and what the
MLflow UI needs to show a sweep as training runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jepa_ray import contract, tracking
from jepa_ray.config import DataConfig
from jepa_ray.outcome import Ledger


def m(epoch: int, run: str = "a") -> dict:
    return {"train/loss": float(epoch), "run": run}


def test_epochs_are_released_when_a_checkpoint_covers_them():
    log = tracking.EpochLog()
    log.add(0, m(0))
    log.add(1, m(1))
    assert log.commit(1) == [(0, m(0)), (1, m(1))]
    log.add(2, m(2))
    assert log.flush() == [(2, m(2))]
    assert log.flush() == []


def test_a_replayed_epoch_replaces_the_uncommitted_reports_from_it_on():
    log = tracking.EpochLog()
    for e in range(3):
        log.add(e, m(e))
    log.commit(0)  # a checkpoint after epoch 0; epochs 1 and 2 were reported without one
    log.add(1, m(1, "restarted"))  # the worker group restarted from the epoch-0 checkpoint
    assert log.commit(1) == [(1, m(1, "restarted"))]
    assert log.pending == {}  # the old epoch 2 went with the restart


def test_an_epoch_already_written_is_never_written_again():
    log = tracking.EpochLog(committed=3)  # a resumed sweep: MLflow already has epochs 0..3
    log.add(2, m(2))
    log.add(4, m(4))
    assert log.commit(4) == [(4, m(4))]


def test_a_lost_report_is_read_from_the_checkpoint_history():
    """The report of epoch 1 was lost (its worker died after writing the checkpoint); the next
    checkpoint's history has it."""
    log = tracking.EpochLog()
    log.add(0, m(0))
    log.add(2, m(2))
    history = [{"epoch": 0, **m(0, "history")}, {"epoch": 1, **m(1, "history")}, {"epoch": 2, **m(2, "history")}]
    assert log.commit(2, lambda: history) == [(0, m(0)), (1, m(1, "history")), (2, m(2))]


def test_an_unreadable_history_leaves_the_gap_and_writes_the_rest():
    log = tracking.EpochLog()
    log.add(1, m(1))

    def broken():
        raise OSError("no such bucket")

    assert log.commit(1, broken) == [(1, m(1))]
    assert log.committed == 1


def test_final_results_are_recognised_by_their_marker():
    assert tracking.is_final({"linear_acc": 0.9, "epoch": 3, contract.FINAL_RESULT: True})
    assert not tracking.is_final({"linear_acc": 0.9, "epoch": 3})  # final metrics alone do not say it
    assert not tracking.is_final({"epoch": 3, "train/loss": 1.0})
    assert not tracking.is_final({"linear_acc": 0.9, "failure": "collapse", contract.FINAL_RESULT: True})


# --------------------------------------------------------------------------------------------
# What the MLflow UI needs to show a sweep as training runs (tags, dataset input, source)


def test_new_and_existing_experiments_are_tagged_as_training_experiments(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    old = c.create_experiment("made-before-the-tag")  # as an older version of the sweep left it
    assert contract.EXPERIMENT_KIND not in c.get_experiment(old).tags
    assert tracking.experiment_id(uri, "made-before-the-tag") == old
    assert c.get_experiment(old).tags[contract.EXPERIMENT_KIND] == contract.TRAINING_KIND
    new = tracking.experiment_id(uri, "new")
    assert c.get_experiment(new).tags[contract.EXPERIMENT_KIND] == contract.TRAINING_KIND
    c.delete_experiment(new)
    assert tracking.experiment_id(uri, "new") == new  # restored, still tagged
    assert c.get_experiment(new).tags[contract.EXPERIMENT_KIND] == contract.TRAINING_KIND


def test_the_dataset_input_names_the_data_its_split_sizes_and_a_digest_of_the_selection(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(uri, "e")
    data = DataConfig(dataset="parquet", data_dir="/data/cifar10", max_train_samples=5000)
    runs = [c.create_run(exp).info.run_id for _ in range(3)]
    tracking.log_dataset_input(c, runs[0], data, 5000, 2000)
    tracking.log_dataset_input(c, runs[1], data, 5000, 2000)
    tracking.log_dataset_input(c, runs[2], DataConfig(dataset="parquet", data_dir="/data/cifar10"), 50000, 10000)
    inputs = [c.get_run(r).inputs.dataset_inputs for r in runs]
    assert all(len(i) == 1 for i in inputs)
    first = inputs[0][0].dataset
    assert first.name == "parquet" and json.loads(first.source) == {"uri": "/data/cifar10"}
    assert json.loads(first.profile) == {"train_images": 5000, "test_images": 2000}
    assert inputs[1][0].dataset.digest == first.digest  # the same selection, the same digest
    assert inputs[2][0].dataset.digest != first.digest


def test_a_finished_run_records_the_precision_its_checkpoint_trained_at(tmp_path):
    """The `precision` param is what was asked (maybe auto); the checkpoint's config says what
    trained: the run gets it as a tag and as checkpoint/config.json."""
    from jepa_ray import config as config_lib
    from jepa_ray.tracking import ops

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    run = c.create_run(tracking.experiment_id(uri, "e")).info.run_id
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    trained = config_lib.resolve(config_lib.apply_overrides(config_lib.preset("smoke"), {"precision": "bf16"}))
    config_lib.save_json(trained, checkpoint / "config.json")
    (checkpoint / "metrics.json").write_text(json.dumps({"linear_acc": 0.5}))
    ops.checkpoint_artifacts(c, run, str(checkpoint), None)
    assert c.get_run(run).data.tags[contract.PRECISION] == "bf16"
    logged = sorted(a.path for a in c.list_artifacts(run, "checkpoint"))
    assert logged == ["checkpoint/config.json", "checkpoint/metrics.json"]


def test_source_tags_name_the_entry_point_in_the_checkout_and_its_commit(monkeypatch, tmp_path):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(sys, "argv", [str(root / "sweeps" / "rectified.py")])
    tags = tracking.source_tags(root)
    assert tags[contract.SOURCE_NAME] == "sweeps/rectified.py" and tags[contract.SOURCE_TYPE] == "LOCAL"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert tags.get(contract.SOURCE_COMMIT) == (head or None)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/jepa-sweep"])
    assert tracking.source_tags(tmp_path) == {contract.SOURCE_NAME: "jepa-sweep", contract.SOURCE_TYPE: "LOCAL"}


def test_the_stop_column_says_why_each_trial_ended():
    ledger = Ledger()
    ledger.note_stop("t3", "rung 3: dominated by 5 of 8")
    final = {"linear_acc": 0.9, "l0_density": 0.1, contract.FINAL_RESULT: True}
    assert ledger.end("t1", final).label == "finished"
    assert ledger.end("t2", {"failure": "z collapsed", "failure_kind": "collapsed"}).label == "collapsed"
    assert ledger.end("t4", {"failure": "CUDA out of memory"}).label == "failed"
    assert ledger.end("t3", {"epoch": 2}).label == "rung 3"
    # no final metrics, no failure, no scheduler's stop: Tune stopped it with the sweep
    assert ledger.end("t5", {"epoch": 2}).label == "unfinished"
    assert ledger.get("t5").reason == "stopped before its end: the sweep stopped it"


def test_only_the_sweeps_running_trials_are_failed_at_its_end(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(uri, "e")
    parent, other = (c.create_run(exp).info.run_id for _ in range(2))

    def child(of: str, status: str) -> str:
        run_id = c.create_run(exp, tags={contract.PARENT: of}).info.run_id
        if status != "RUNNING":
            c.set_terminated(run_id, status)
        return run_id

    running, finished, killed = child(parent, "RUNNING"), child(parent, "FINISHED"), child(parent, "KILLED")
    elsewhere = child(other, "RUNNING")  # another sweep's trial, still training
    assert tracking.fail_running_trials(uri, exp, parent, "stopped by the budget") == 1
    run = c.get_run(running)
    assert run.info.status == "FAILED"
    assert run.data.tags[contract.FAILURE] == "stopped by the budget"
    assert run.data.tags[contract.FAILURE_KIND] == "unfinished"
    assert [c.get_run(r).info.status for r in (finished, killed, elsewhere)] == ["FINISHED", "KILLED", "RUNNING"]
    assert tracking.fail_running_trials(uri, exp, parent, "again") == 0


def test_the_commit_outside_git_comes_from_the_environment(tmp_path, monkeypatch):
    """A job-submitted sweep runs in a working dir without .git: the commit the submitter passes."""
    from jepa_ray.tracking.store import git_commit

    monkeypatch.delenv("JEPA_RAY_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.setenv("JEPA_RAY_GIT_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"
    assert git_commit(Path(__file__).parent) not in ("abc123", "unknown")  # a checkout's own commit wins


class SentOps:
    """A writer that keeps what it is sent (MlflowWriter's interface as the callback uses it)."""

    def __init__(self):
        self.sent = []

    def check(self) -> None:
        pass

    def send(self, op) -> None:
        self.sent.append(op)


def test_a_resumed_trial_reopens_its_run_without_asking_mlflow_on_the_drivers_loop():
    """The run a re-queued trial reuses, and its newest logged epoch, come from what --resume
    read before the sweep began: a tracking server down when the trial starts costs nothing
    here (the writer waits out its patience), instead of an MLflow call failing on Tune's loop."""
    from types import SimpleNamespace

    from jepa_ray.config import TrialConfig
    from jepa_ray.tracking import ops
    from jepa_ray.tracking.epochs import ReusedRun

    writer = SentOps()
    cb = tracking.MlflowSweepCallback(
        "http://127.0.0.1:9",  # nothing answers: any read would fail
        "0",
        "parent",
        lambda spec: TrialConfig(),
        reuse_runs={"7": [ReusedRun("run-a", (contract.FAILURE, contract.FAILURE_KIND), 2)]},
        writer=writer,
    )
    trial = SimpleNamespace(trial_id="t1", config={contract.SPEC_TRIAL_KEY: "7", contract.SPEC_NUMBER: 9})
    cb.on_trial_start(0, [], trial)
    (reopen,) = writer.sent
    assert isinstance(reopen, ops.Reopen) and reopen.ref.run_id == "run-a"
    assert reopen.failure_tags == (contract.FAILURE, contract.FAILURE_KIND)
    assert reopen.tags[contract.OPTUNA_TRIAL] == "9"
    assert cb.logs["t1"].committed == 2  # epochs 0-2 are in MLflow: not written again
