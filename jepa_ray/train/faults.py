"""Fault injection for tests: make one worker die like a lost machine (no exception, no cleanup)
at a chosen global step, once. It is not a trial config field (it would be an MLflow param of
every trial): the command lines read it from the environment of the driver and hand it to the
trainer, which only checks it.

    JEPA_RAY_FAULT="rank=0,step=9,marker=/tmp/fault-fired"

The marker file records that the fault fired, so the restarted worker group trains on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jepa_ray.errors import UsageError

ENV = "JEPA_RAY_FAULT"
EXIT_CODE = 17


@dataclass(frozen=True)
class Fault:
    """The worker of `rank` exits when it starts global step `step`, unless `marker` exists."""

    rank: int
    step: int
    marker: str

    def check(self, rank: int, step: int) -> None:
        if rank != self.rank or step != self.step or Path(self.marker).exists():
            return
        Path(self.marker).write_text(f"rank {rank} step {step}\n")
        print(f"[jepa_ray] fault injection: rank {rank} exits at global step {step}", flush=True)
        os._exit(EXIT_CODE)


def from_env(environ: dict[str, str] | None = None) -> Fault | None:
    """The fault $JEPA_RAY_FAULT describes (None when unset); ConfigError when it is malformed."""
    text = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not text:
        return None
    allowed = f"{ENV}='rank=R,step=S,marker=PATH' (R, S integers >= 0)"
    try:
        fields = dict(item.split("=", 1) for item in text.split(","))
        fault = Fault(int(fields["rank"]), int(fields["step"]), fields["marker"])
    except (KeyError, ValueError):
        raise UsageError(f"{ENV}={text!r} is not allowed; allowed: {allowed}") from None
    if fault.rank < 0 or fault.step < 0 or not fault.marker:
        raise UsageError(f"{ENV}={text!r} is not allowed; allowed: {allowed}")
    return fault
