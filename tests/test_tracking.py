"""What the driver writes to MLflow per epoch: every epoch exactly once, with the values of the
training that produced the final weights, whatever restarts happened (tracking.EpochLog)."""

from __future__ import annotations

from jepa_ray import tracking


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


def test_final_results_are_recognised_by_their_metrics():
    assert tracking.is_final({"linear_acc": 0.9, "epoch": 3})
    assert not tracking.is_final({"epoch": 3, "train/loss": 1.0})
    assert not tracking.is_final({"linear_acc": 0.9, "failure": "collapse"})
