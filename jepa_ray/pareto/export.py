"""Exporting a front (or several fronts compared): the Pareto-optimal checkpoints copied and
verified, the table, the JSON summary, the front plot and the ℓ0 calibration plot, optionally
registered as MLflow models and logged to the sweeps' parent runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from jepa_ray import tracking
from jepa_ray.contract import CHECKPOINT as CHECKPOINT_TAG
from jepa_ray.errors import UsageError
from jepa_ray.pareto.calibration import write_calibration_plot
from jepa_ray.pareto.columns import DEFAULT_TRACKING_URI, METRIC_PREFIX
from jepa_ray.pareto.comparison import Comparison
from jepa_ray.pareto.front import ParetoResult
from jepa_ray.pareto.plot import CALIBRATION_FILE, as_comparison, write_plot
from jepa_ray.pareto.report import format_comparison
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train.checkpoint import EXPORT_FILES

OUTPUT_FILES = ("pareto.parquet", "pareto.png", "pareto.txt", "pareto.json", CALIBRATION_FILE)
"""What an export writes beside checkpoints/ (and what --overwrite replaces)."""


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output directory if it may be written: absent, empty, or (with overwrite) any
    directory; raises UsageError otherwise. Changes nothing."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: directory exists and is not empty (pass --overwrite to replace the export)")
    return out


STAGING_PREFIX = ".export-"
"""An export is written into a hidden sibling of its --out directory, `.NAME.export-XXXX`, and
moved into place whole: one killed half-way leaves the previous export as it was."""


def _staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}{STAGING_PREFIX}*"):  # left by an export that was killed
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_PREFIX}", dir=out.parent))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _move_into_place(staged: Path, out: Path) -> None:
    """`staged` (a complete export) becomes `out`; files of `out` that no export writes stay."""
    if not out.exists() or not any(out.iterdir()):
        os.replace(staged, out)  # rename(2) replaces an empty directory
        return
    if not _exchange(staged, out):  # the two renames below leave a window of microseconds
        old = staged.with_name(staged.name + "-old")
        os.replace(out, old)
        os.replace(staged, out)
        staged = old
    for item in staged.iterdir():  # now the previous export: keep what was not the export's
        if item.name not in OUTPUT_FILES and item.name != "checkpoints" and not (out / item.name).exists():
            os.replace(item, out / item.name)
    shutil.rmtree(staged, ignore_errors=True)


def export(
    result: ParetoResult | Comparison,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    register: str | None = None,
    tracking_uri: str | None = None,
    l0_scale: str = "auto",
    labels: bool = True,
) -> Path:
    """Write `pareto.parquet` (one row per Pareto-optimal trial of each group, with its
    experiment, sweep_run_id, sweep_name and group; objectives, reference, hypervolumes,
    experiment(s) and time in the schema metadata), `pareto.json` (the summary: each group's
    and each sweep's hypervolume at the shared reference, their mean and spread),
    `pareto.png`, `l0_calibration.png` (when the runs record target_l0_density), `pareto.txt`
    (the tables) and `checkpoints/<run_id>/` (each checkpoint copied, checked loadable with
    jepa_ray.load_encoder, with its MLflow metrics and run info). A checkpoint that cannot be
    read is reported on stderr and in the `export_error` column; the others are exported.
    register: also register the exported encoders under this MLflow model name."""
    comp = as_comparison(result)
    out = check_out_dir(out_dir, overwrite)
    staged = _staging_dir(out)
    try:
        front = _write_export(comp, staged, l0_scale, labels)
        _move_into_place(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if register:
        register_encoders(comp, front, out, register, tracking_uri or DEFAULT_TRACKING_URI)
    return out


def _write_export(comp: Comparison, out: Path, l0_scale: str, labels: bool) -> pd.DataFrame:
    """Every file of an export, into the directory `out`; returns the front as written."""
    front = comp.front()
    paths, errors = [], []
    for row in front.itertuples(index=False):
        values = dict(zip(front.columns, row))
        path, error = _export_checkpoint(values, comp, out / "checkpoints" / str(values["run_id"]))
        if error:
            print(
                f"warning: run {values['run_id']}: checkpoint {values['checkpoint']!r} not exported: {error}",
                file=sys.stderr,
            )
        paths.append(path)
        errors.append(error)
    front["export_path"] = paths
    front["export_error"] = errors
    write_parquet(comp, front, out / "pareto.parquet")
    write_summary(comp, out / "pareto.json")
    write_plot(comp, out / "pareto.png", l0_scale=l0_scale, labels=labels)
    write_calibration_plot(comp, out / CALIBRATION_FILE, l0_scale=l0_scale)
    (out / "pareto.txt").write_text(format_comparison(comp) + "\n")
    return front


def write_summary(result: ParetoResult | Comparison, path: str | os.PathLike) -> Path:
    """The comparison's summary (Comparison.summary) as indented JSON."""
    Path(path).write_text(json.dumps(as_comparison(result).summary(), indent=2, default=str) + "\n")
    return Path(path)


def _export_checkpoint(values: dict, result: Comparison, dest: Path) -> tuple[str | None, str | None]:
    """Copy one checkpoint and verify it; (relative path, None) or (None, reason)."""
    uri = values.get("checkpoint")
    if not isinstance(uri, str) or not uri:
        return None, f"run has no {CHECKPOINT_TAG} tag"
    try:
        missing = [f for f in EXPORT_FILES[:2] if not ckpt_lib.has_file(uri, f)]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(missing)} in {uri}")
        dest.mkdir(parents=True)
        ckpt_lib.copy_files(uri, dest, EXPORT_FILES)  # file by file, local or remote
        _write_run_info(values, result, dest)
        ckpt_lib.load_encoder(dest)
    except Exception as exc:  # any unreadable checkpoint is reported, the others still exported
        shutil.rmtree(dest, ignore_errors=True)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return str(dest.relative_to(dest.parents[1])), None


def _write_run_info(values: dict, result: Comparison, dest: Path) -> None:
    """metrics.json gains the trial's final MLflow metrics; mlflow_run.json records the run."""
    metrics_path = dest / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for column, value in values.items():
        if column.startswith(METRIC_PREFIX) and isinstance(value, float) and math.isfinite(value):
            metrics[column[len(METRIC_PREFIX) :]] = value
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    info = {
        "run_id": values["run_id"],
        "trial_id": values["trial_id"],
        "sweep_run_id": values["sweep_run_id"],
        "experiment": values.get("experiment") or result.overall.experiment,
        "sweep_name": values.get("sweep_name"),
        "group": values.get("group"),
        "source_checkpoint": values["checkpoint"],
        "objectives": {o.name: values[o.column] for o in result.objectives},
        "directions": {o.name: o.direction for o in result.objectives},
        "knee": bool(values.get("knee")),
    }
    (dest / "mlflow_run.json").write_text(json.dumps(info, indent=2, default=str))


def write_parquet(result: ParetoResult | Comparison, front: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The front as parquet with the result's metadata in the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(front, preserve_index=False)
    meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in result.metadata().items()}}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return Path(path)


def register_encoders(
    result: ParetoResult | Comparison, front: pd.DataFrame, out: Path, name: str, tracking_uri: str
) -> list[str]:
    """Log each exported checkpoint to its trial run (artifact `pareto_encoder`) and register it
    as a version of model `name`, tagged with its objectives; the version numbers."""
    from mlflow.exceptions import MlflowException

    comp = as_comparison(result)
    client = tracking.client(tracking_uri)
    try:
        client.create_registered_model(name, description="Pareto-optimal jepa_ray encoders")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    versions = []
    for row in front.itertuples(index=False):
        values = dict(zip(front.columns, row))
        if not isinstance(values["export_path"], str):
            continue
        run_id = str(values["run_id"])
        client.log_artifacts(run_id, str(out / values["export_path"]), artifact_path="pareto_encoder")
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/pareto_encoder"
        tags = {o.name: f"{values[o.column]:.6g}" for o in comp.objectives}
        tags.update(
            {
                "directions": ",".join(map(str, comp.objectives)),
                "knee": str(bool(values["knee"])),
                "experiment": str(values.get("experiment") or comp.overall.experiment),
                "trial_id": str(values["trial_id"]),
            }
        )
        version = client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=f"Pareto-optimal trial {values['trial_id']}"
        )
        versions.append(version.version)
    return versions


def log_to_parent(
    result: ParetoResult | Comparison,
    tracking_uri: str,
    parent_run_id: str,
    files: Sequence[str | os.PathLike] | None = None,
) -> None:
    """Log the front plot, the ℓ0 calibration plot and the table (or the given files) under
    `pareto/` of a sweep's parent run, with the hypervolume and front size of the front the
    sweep belongs to (its group's, in a comparison) as metrics. The sweep driver calls this
    at a sweep's end."""
    comp = as_comparison(result)
    client = tracking.client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="jepa_ray_pareto_") as tmp:
        if files is None:
            files = [write_plot(comp, Path(tmp) / "pareto.png"), Path(tmp) / "pareto.txt"]
            Path(files[1]).write_text(format_comparison(comp) + "\n")
            files += [p for p in [write_calibration_plot(comp, Path(tmp) / CALIBRATION_FILE)] if p is not None]
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="pareto")
    front = group_of(comp, parent_run_id)
    client.log_metric(parent_run_id, "pareto/hypervolume", front.hypervolume)
    client.log_metric(parent_run_id, "pareto/front_size", float(len(front.front)))


def group_of(comp: Comparison, sweep_run_id: str) -> ParetoResult:
    """The front a sweep's trials belong to: its group's, else the pooled one."""
    rows = comp.sweeps[comp.sweeps["sweep_run_id"] == sweep_run_id]
    label = rows["group"].iloc[0] if len(rows) else None
    return comp.groups.get(label, comp.overall) if len(comp.groups) > 1 else comp.overall
