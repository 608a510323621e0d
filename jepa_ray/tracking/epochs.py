"""Which per-epoch results the MLflow writer may write, so that MLflow holds every epoch of a
trial exactly once whatever restarts happened."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReusedRun:
    """The MLflow run of an interrupted trial that its re-run writes into, as --resume read it
    before the sweep began (so that no MLflow read waits on the driver's loop mid-sweep, where a
    tracking server down for a moment would stop the sweep instead of the writer's patience)."""

    run_id: str
    failure_tags: tuple[str, ...]  # why the stopped sweep failed it (of FAILURE_TAGS): the re-run clears them
    committed: int  # its newest epoch in MLflow (-1: none)


class EpochLog:
    """The per-epoch metrics of one trial, released for writing exactly once per epoch.

    An epoch is released once a checkpoint covers it (a result carrying `checkpoint_uri`, or the
    trial's end). A restarted trial resumes from its newest checkpoint and reports the epochs
    after it again; until a checkpoint covers them they wait here, and a repeated epoch
    replaces the earlier report and those after it (the later values belong to the training
    that produced the final weights). An epoch a checkpoint covers but whose report never
    arrived (a worker killed after its checkpoint, before its report was collected) is read
    from that checkpoint's history."""

    def __init__(self, committed: int = -1):
        self.committed = committed
        self.pending: dict[int, dict] = {}

    def add(self, epoch: int, metrics: dict) -> None:
        if epoch <= self.committed:
            return  # already written: a restart never resumes before a written epoch's checkpoint
        for later in [e for e in self.pending if e >= epoch]:
            del self.pending[later]
        self.pending[epoch] = metrics

    def commit(self, upto: int, history: Callable[[], list[dict]] | None = None) -> list[tuple[int, dict]]:
        """Release every epoch up to `upto` (covered by a checkpoint whose history `history`
        reads, to fill epochs whose report was lost)."""
        missing = [e for e in range(self.committed + 1, upto + 1) if e not in self.pending]
        if missing and history is not None:
            try:
                recorded = {int(m["epoch"]): m for m in history()}
            except Exception as err:  # the gap stays a gap; the rest is still written
                logger.warning("could not read the history of a checkpoint to fill epochs %s: %s", missing, err)
                recorded = {}
            for e in missing:
                if e in recorded:
                    self.pending[e] = {k: v for k, v in recorded[e].items() if k != "epoch"}
        out = sorted((e, m) for e, m in self.pending.items() if e <= upto)
        for e, _ in out:
            del self.pending[e]
        self.committed = max(self.committed, upto)
        return out

    def flush(self) -> list[tuple[int, dict]]:
        """Release what is left (the trial ended: nothing will be reported again)."""
        return self.commit(max(self.pending, default=self.committed))
