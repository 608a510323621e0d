"""A table of recorded learning curves: one Parquet file, one row per trained trial, holding its
searched params and seed, the full resolved config, every epoch's metrics, the final metrics, its
wall seconds and the command that reproduces it. The recorder (`jepa_ray.curves.record`)
appends to it; the replay trainable serves it epoch by epoch; the search benchmark and the
what-if read it.

Rows are identified by `key`, a digest of (params, seed): a table never holds a key twice.
`revision` (`contract.TRAINING_REVISION`) and `setting` (a digest of the recording's base
config) say what the rows were trained with; rows of another revision or setting are not mixed
in unless asked."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jepa_ray.config import trained_precision
from jepa_ray.errors import UsageError

STATUS_FINISHED, STATUS_FAILED = "finished", "failed"

CURVE_METRICS = {
    "online_linear_acc": "online/linear_acc",
    "online_linear_acc_z": "online/linear_acc_z",
    "train_l0_density": "train/l0_density",
    "train_loss": "train/loss",
    "epoch_wall_s": "time/epoch_wall_s",
}
"""List columns (one value per epoch) and the per-epoch metric each one copies from `history`."""

FINAL_COLUMNS = ("linear_acc", "linear_acc_z", "knn_acc", "l0_density", "target_l0_density", "rank_me")
"""Final metrics kept as columns of their own (every final metric is in the `final` JSON)."""

JSON_COLUMNS = ("params", "config", "history", "final")
"""Columns stored as JSON text and read back as Python values."""


def _schema():
    import pyarrow as pa

    text, num, whole = pa.string(), pa.float64(), pa.int64()
    return pa.schema(
        [
            ("key", text),
            ("grid", text),
            ("setting", text),
            ("revision", whole),
            ("params", text),
            ("seed", whole),
            ("status", text),
            ("failure", text),
            ("epochs", whole),
            *[(c, num) for c in FINAL_COLUMNS],
            *[(c, pa.list_(num)) for c in CURVE_METRICS],
            ("setup_s", num),
            ("eval_s", num),
            ("wall_s", num),
            ("history", text),
            ("final", text),
            ("config", text),
            ("command", text),
            ("jepa_ray_version", text),
            ("git_commit", text),
            ("torch_version", text),
            ("machine", text),
            ("recorded_at", text),
        ]
    )


def canonical(params: dict[str, Any]) -> str:
    """Params as sorted JSON: the one spelling a key is computed from."""
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)


def row_key(params: dict[str, Any], seed: int) -> str:
    """The identity of a recorded trial within its table: its params and seed."""
    return hashlib.sha256(f"{canonical(params)}|seed={int(seed)}".encode()).hexdigest()[:16]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Row:
    """One recorded trial, as the table holds it (JSON columns decoded)."""

    key: str
    grid: str
    setting: str
    revision: int
    params: dict[str, Any]
    seed: int
    status: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    final: dict[str, Any]
    command: str
    failure: str | None = None
    setup_s: float = 0.0
    eval_s: float = 0.0
    wall_s: float = 0.0
    provenance: dict[str, str] = field(default_factory=dict)
    """jepa_ray_version, git_commit, torch_version, machine, recorded_at."""

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def finished(self) -> bool:
        return self.status == STATUS_FINISHED

    def curve(self, metric: str) -> list[float]:
        """One per-epoch metric over the recorded epochs (NaN where an epoch lacks it)."""
        return [float(e.get(metric, math.nan)) for e in self.history]

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "key": self.key,
            "grid": self.grid,
            "setting": self.setting,
            "revision": int(self.revision),
            "params": canonical(self.params),
            "seed": int(self.seed),
            "status": self.status,
            "failure": self.failure,
            "epochs": self.epochs,
            "setup_s": float(self.setup_s),
            "eval_s": float(self.eval_s),
            "wall_s": float(self.wall_s),
            "history": json.dumps(self.history),
            "final": json.dumps(self.final),
            "config": json.dumps(self.config, sort_keys=True),
            "command": self.command,
        }
        rec.update({c: _finite(self.final.get(c)) for c in FINAL_COLUMNS})
        rec.update({col: self.curve(metric) for col, metric in CURVE_METRICS.items()})
        rec.update({k: self.provenance.get(k, "") for k in PROVENANCE})
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Row:
        config, command = _trained_precision(json.loads(rec["config"]), rec["command"])
        return cls(
            key=rec["key"],
            grid=rec["grid"],
            setting=rec["setting"],
            revision=int(rec["revision"]),
            params=json.loads(rec["params"]),
            seed=int(rec["seed"]),
            status=rec["status"],
            failure=rec.get("failure"),
            config=config,
            history=json.loads(rec["history"]),
            final=json.loads(rec["final"]),
            command=command,
            setup_s=float(rec.get("setup_s") or 0.0),
            eval_s=float(rec.get("eval_s") or 0.0),
            wall_s=float(rec.get("wall_s") or 0.0),
            provenance={k: rec.get(k) or "" for k in PROVENANCE},
        )


def _trained_precision(config: dict[str, Any], command: str) -> tuple[dict[str, Any], str]:
    """A row recorded before trials resolved precision=auto (its config says "auto": fp32 on a CPU)
    read as what it trained at: that precision in its config, and pinned in its command so that
    the command retrains the row as recorded wherever `auto` means another precision now."""
    system = config.get("system")
    if not isinstance(system, dict) or system.get("precision", "auto") != "auto":
        return config, command
    precision = trained_precision("auto", float(system.get("gpus_per_worker") or 0) > 0)
    config = {**config, "system": {**system, "precision": precision}}
    argv: list[str] = []
    for arg in shlex.split(command):
        if arg == "precision=auto" and argv[-1:] == ["--set"]:
            argv.pop()
        else:
            argv.append(arg)
    if "jepa_ray.train" in argv and "--out" in argv:
        at = argv.index("--out")
        command = shlex.join([*argv[:at], "--set", f"precision={precision}", *argv[at:]])
    return config, command


PROVENANCE = ("jepa_ray_version", "git_commit", "torch_version", "machine", "recorded_at")


class CurveTable:
    """The rows of one table file, in recording order, with lookups by key and by params."""

    def __init__(self, rows: Iterable[Row] = (), path: str | os.PathLike | None = None):
        self.rows: list[Row] = []
        self._by_key: dict[str, Row] = {}
        self.path = Path(path) if path is not None else None
        for row in rows:
            self.add(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def add(self, row: Row) -> None:
        if row.key in self._by_key:
            raise ValueError(f"row {row.key} ({canonical(row.params)}, seed {row.seed}) is already in the table")
        self.rows.append(row)
        self._by_key[row.key] = row

    def get(self, key: str) -> Row:
        return self._by_key[key]

    def seeds(self, params: dict[str, Any]) -> list[Row]:
        """Every recorded seed of one configuration."""
        text = canonical(params)
        return [r for r in self.rows if canonical(r.params) == text]

    def param_names(self) -> list[str]:
        names: list[str] = []
        for r in self.rows:
            names.extend(k for k in r.params if k not in names)
        return names

    def values(self, name: str) -> list[Any]:
        """The distinct recorded values of one searched param, sorted."""
        return sorted({r.params[name] for r in self.rows if name in r.params}, key=_sort_key)

    def configurations(self, seed: int | None = None) -> list[dict[str, Any]]:
        """The distinct params recorded (at `seed` only, when given), in recording order."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            if seed is None or r.seed == seed:
                seen.setdefault(canonical(r.params), r.params)
        return list(seen.values())

    def write(self, path: str | os.PathLike | None = None) -> Path:
        """Write the whole table atomically (a temp file renamed over the old one)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        target = Path(path or self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([r.to_record() for r in self.rows], schema=_schema())
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.path = target
        return target


def _sort_key(value: Any) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def read_table(path: str | os.PathLike) -> CurveTable:
    """A table file; UsageError (one line) when it is missing or not a curve table."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"curve table {path} does not exist; record one with `python -m jepa_ray.curves record`")
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same bad input
        raise UsageError(f"curve table {path} is not a readable Parquet file: {err}") from None
    missing = {"key", "params", "seed", "history", "final", "config", "status"} - set(records[0] if records else {})
    if records and missing:
        raise UsageError(f"curve table {path} lacks the columns {', '.join(sorted(missing))}: not a curve table")
    return CurveTable((Row.from_record(r) for r in records), path)
