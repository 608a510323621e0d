"""The trainer of one trial: the per-worker loop `fit` in process (resume, non-finite loss,
collapse guard) and `python -m jepa_ray.train`.

Ray runs cost 30-60 s each on a small CPU, so there is one: the command line with 2 workers
(whose checkpoints also serve the per-epoch metric checks); the uninterrupted reference of the
in-process resume check is an in-process `fit`. A Ray Train worker killed mid-epoch (fault
injection, then SIGKILL) is tested through the whole sweep: tests/test_sweep.py's DDP trial.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import jepa_ray
from jepa_ray import config as config_lib
from jepa_ray.config import LOSS_CONVENTION, ConfigError, TrialConfig
from jepa_ray.errors import UsageError
from jepa_ray.targets import expected_l0_density, sigma_gn
from jepa_ray.train import (
    EPOCH_METRICS,
    HEADLINE_METRICS,
    LocalReporter,
    TrialFailure,
    cli,
    collapse_reason,
    faults,
    fit,
    loop,
    run_trial,
    step,
)
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train.store import TrialStore

RESUME = {"epochs": 4, "checkpoint_every": 1}
"""The resume runs: smoke preset (4 steps of 128 images per epoch), a checkpoint every epoch."""

CLI_SETS = ["epochs=2", "checkpoint_every=1"]
CLI_ARGS = ["--preset", "smoke", "--workers", "2", *(a for kv in CLI_SETS for a in ("--set", kv))]
"""The 2-worker command-line trial (smoke: 4 steps of 128 images per epoch)."""


def smoke(**overrides) -> TrialConfig:
    return config_lib.resolve(config_lib.apply_overrides(config_lib.preset("smoke"), overrides))


def model_file(checkpoint: Path) -> dict:
    """Everything in model.pt (encoder and online probe), loaded as plain tensors."""
    return ckpt_lib.load_state(checkpoint, ckpt_lib.MODEL_FILE)


def history(checkpoint: Path) -> list[dict]:
    return ckpt_lib.read_history(checkpoint)


def assert_same_weights(got: dict, want: dict) -> None:
    """Bitwise equality of two model.pt contents.

    Exact, not approximate: both runs execute the same CPU kernels with one intra-op thread
    (fit sets it from cpus_per_worker=1), the same op order, and the same random streams,
    which are seeded from (seed, epoch) and (seed, global step) and never from process state.
    A resumed run therefore repeats the uninterrupted one bit for bit; any difference means
    something was not restored (optimizer moments, schedule position, probe, data order)."""
    assert got.keys() == want.keys()
    for part in want:
        assert got[part].keys() == want[part].keys(), part
        for name, tensor in want[part].items():
            assert torch.equal(got[part][name], tensor), f"{part}.{name} differs"


@dataclass
class Reference:
    final: dict
    weights: dict
    history: list[dict]
    trained_epochs: list[int]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Reference:
    """The resume configuration trained in process on one worker, without interruption."""
    out = tmp_path_factory.mktemp("uninterrupted")
    trained: list[int] = []
    final = fit(smoke(**RESUME), LocalReporter(out), on_epoch=lambda m: trained.append(m["epoch"]))
    return Reference(final, model_file(out / "checkpoint"), history(out / "checkpoint"), trained)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# In process


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before_with_one_line(uninterrupted, tmp_path, damage, capsys):
    """A disk that filled or a bad block spoils the newest checkpoint after it was written: the
    resume says so in one line and goes on from the checkpoint kept before it, and the trial
    ends as the uninterrupted one did."""
    cfg = smoke(**RESUME)

    def crash_after_epoch_2(metrics: dict, kept: Path | None) -> None:
        if metrics["epoch"] == 2:
            raise SimulatedCrash

    store = tmp_path / "trial"
    with pytest.raises(SimulatedCrash):
        fit(cfg, LocalReporter(store, callback=crash_after_epoch_2))
    newest = Path(TrialStore(store).latest())
    assert newest.name == "epoch-00003"
    model = newest / ckpt_lib.MODEL_FILE
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    else:
        model.unlink()
    why = ckpt_lib.damage(newest)
    assert why == {"truncated": "BadZipFile: File is not a zip file", "missing": "no model.pt"}[damage]
    capsys.readouterr()

    trained: list[int] = []
    final = fit(cfg, LocalReporter(store), on_epoch=lambda m: trained.append(m["epoch"]))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: checkpoint {newest} cannot be restored ({why}); resuming from {newest.with_name('epoch-00002')}"
    ]
    assert trained == [2, 3]  # epoch 2 again: its checkpoint was the damaged one
    assert_same_weights(model_file(store / "checkpoint"), uninterrupted.weights)
    for key in HEADLINE_METRICS:
        assert final[key] == uninterrupted.final[key], key


def test_a_store_with_no_restorable_checkpoint_starts_over_with_one_line(tmp_path):
    store = TrialStore(tmp_path)
    (tmp_path / "checkpoints" / "epoch-00001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "epoch-00001" / ckpt_lib.MODEL_FILE).write_bytes(b"PK\x03\x04 not a whole zip")
    (tmp_path / "checkpoints" / "LATEST").write_text("epoch-00001")
    said: list[str] = []
    assert store.restorable(said.append) is None
    why = "BadZipFile: File is not a zip file"
    assert said == [f"warning: no checkpoint in {tmp_path} can be restored ({why}); the trial starts over"]


def test_fit_resumed_from_local_checkpoint_repeats_uninterrupted_run(uninterrupted, tmp_path):
    cfg = smoke(**RESUME)

    def crash_after_epoch_1(metrics: dict, kept: Path | None) -> None:
        assert kept is not None  # checkpoint_every=1: every epoch's report carries one
        if metrics["epoch"] == 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        fit(cfg, LocalReporter(tmp_path / "crashed", callback=crash_after_epoch_1))
    saved = tmp_path / "after_epoch_1"
    latest = TrialStore(tmp_path / "crashed").latest()
    assert latest.endswith("checkpoints/epoch-00002")
    shutil.copytree(latest, saved)
    assert ckpt_lib.load_state(saved, ckpt_lib.TRAIN_STATE_FILE)["epoch"] == 2
    assert [h["epoch"] for h in history(saved)] == [0, 1]

    trained: list[int] = []
    final = fit(
        cfg, LocalReporter(tmp_path / "resumed", resume_from=saved), on_epoch=lambda m: trained.append(m["epoch"])
    )

    assert uninterrupted.trained_epochs == [0, 1, 2, 3]
    assert trained == [2, 3]  # no epoch trained twice
    resumed = tmp_path / "resumed" / "checkpoint"
    assert [h["epoch"] for h in history(resumed)] == [0, 1, 2, 3]
    assert_same_weights(model_file(resumed), uninterrupted.weights)
    for got, want in zip(history(resumed), uninterrupted.history):
        for key in (
            "train/loss",
            "train/invariance",
            "train/regularizer",
            "train/l0_density",
            "online/linear_acc",
            "train/lr",
        ):
            assert got[key] == want[key], (got["epoch"], key)
    for key in HEADLINE_METRICS:
        assert final[key] == uninterrupted.final[key], key


def test_non_finite_loss_raises_trial_failure_naming_epoch_and_step(monkeypatch, tmp_path):
    real = loop.create_regularizer

    def poisoned(cfg):
        regularizer = real(cfg)

        def call(z, step):
            value = regularizer(z, step)
            return value * float("nan") if step == 5 else value

        return call

    monkeypatch.setattr(loop, "create_regularizer", poisoned)
    reported: list[int] = []
    # 512 training images in batches of 128: 4 steps per epoch, so global step 5 is in epoch 1.
    with pytest.raises(TrialFailure, match=r"non-finite loss at epoch 1 step 5"):
        fit(
            smoke(epochs=2, checkpoint_every=1),
            LocalReporter(tmp_path, callback=lambda m, k: reported.append(m["epoch"])),
        )
    assert reported == [0]


def test_collapse_guard_stops_fit_after_its_warmup(tmp_path):
    # A minimum rank no representation reaches: the guard must fire at the first checked epoch.
    cfg = smoke(epochs=3, collapse_warmup_epochs=1, collapse_min_rank=1e9)
    trained: list[int] = []
    with pytest.raises(TrialFailure, match=r"collapse at epoch 1: train/rank_me="):
        fit(cfg, LocalReporter(tmp_path), on_epoch=lambda m: trained.append(m["epoch"]))
    assert trained == [0]


def epoch_metrics(epoch: int, density: float = 0.4, rank: float = 20.0) -> dict:
    return {"epoch": epoch, "train/l0_density": density, "train/rank_me": rank}


@pytest.mark.parametrize(
    "density, rank, reason",
    [
        (0.0, 20.0, "all zeros"),
        (1.0, 20.0, "never sparse"),
        (0.4, 1.0, "representation collapsed"),
        (0.05, 20.0, "collapsing to all zeros"),  # below 0.2 x the target density 0.5
    ],
)
def test_collapse_reason_after_warmup_only(density, rank, reason):
    cfg = smoke(collapse_warmup_epochs=3)  # rgg, mu=0: target density 0.5
    assert collapse_reason(cfg, epoch_metrics(2, density, rank)) is None  # epochs 0..2: warm-up
    assert reason in collapse_reason(cfg, epoch_metrics(3, density, rank))
    off = config_lib.apply_overrides(cfg, {"collapse_guard": False})
    assert collapse_reason(off, epoch_metrics(3, density, rank)) is None


def test_collapse_reason_accepts_healthy_and_dense_targets():
    assert collapse_reason(smoke(), epoch_metrics(10)) is None
    assert collapse_reason(smoke(), epoch_metrics(10, density=0.11)) is None  # sparse, not collapsed
    # A Gaussian target is dense: z that is never zero is what it asks for.
    gaussian = smoke(target="gaussian", regularizer="sigreg")
    assert collapse_reason(gaussian, epoch_metrics(10, density=1.0)) is None


# --------------------------------------------------------------------------------------------
# Precision


@pytest.mark.parametrize(
    "caps, native",
    [
        ({"architecture": "x86_64", "avx512_f": True, "amx_bf16": True}, True),
        ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True}, True),
        ({"architecture": "arm64", "neon": True, "bf16": True}, True),
        ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, False),
        ({"architecture": "x86_64", "avx2": True}, False),
    ],
)
def test_native_bf16_is_read_from_torch_s_cpu_capabilities(monkeypatch, caps, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert step.cpu_has_native_bf16() is native
    # Kernels capped at AVX2 (ATEN_CPU_CAPABILITY=avx2, as another CPU) do not use AVX-512 or AMX.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert step.cpu_has_native_bf16() is (native and caps["architecture"] == "arm64")


@pytest.mark.parametrize(
    "requested, device, native, want",
    [
        ("auto", "cpu", True, "bf16"),
        ("auto", "cpu", False, "fp32"),
        ("auto", "cuda", False, "bf16"),
        ("fp32", "cpu", True, "fp32"),
        ("bf16", "cpu", False, "bf16"),
    ],
)
def test_auto_precision_is_bf16_where_the_device_multiplies_bf16_natively(monkeypatch, requested, device, native, want):
    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: native)
    assert step.resolve_precision(requested, torch.device(device))[0] == want


@pytest.mark.parametrize(
    "requested, native, want, why",
    [
        ("auto", True, "bf16", "auto: the CPU has native bf16 matrix support"),
        ("auto", False, "fp32", "auto: no native bf16 matrix support"),
        ("fp32", True, "fp32", "set"),
        ("bf16", False, "bf16", "set; warning: this CPU has no native bf16 matrix support, torch emulates it (slow)"),
        ("bf16", True, "bf16", "set)"),
    ],
)
def test_a_trial_trains_prints_and_records_its_precision(monkeypatch, capsys, tmp_path, requested, native, want, why):
    """`python -m jepa_ray.train` (in process): the precision it resolved is printed, used for
    every step and recorded in the checkpoint's config; the final evaluation's features are
    fp32 whatever it is."""
    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: native)
    used: set = set()
    evaluated: set = set()
    real, real_evaluate = loop.train_step, loop.evaluate_batches

    def spy(*args, **kwargs):
        used.add(args[7] if len(args) > 7 else kwargs.get("autocast_dtype"))
        return real(*args, **kwargs)

    def spy_evaluate(*args, **kwargs):
        evaluated.add(kwargs["autocast_dtype"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    monkeypatch.setattr(loop, "evaluate_batches", spy_evaluate)
    # Two small steps: emulated bf16 (a CPU without bf16 units) makes each step seconds long.
    sets = ["--set", "epochs=1", "--set", "max_train_samples=128", "--set", "batch_size=64"]
    sets += ["--set", f"precision={requested}"]
    assert cli.main(["--preset", "smoke", *sets, "--out", str(tmp_path)]) == 0
    assert f"[jepa_ray] device cpu, precision {want} ({why}" in capsys.readouterr().err
    assert used == {torch.bfloat16 if want == "bf16" else None} and evaluated == {None}
    assert ckpt_lib.read_config(tmp_path / "checkpoint").system.precision == want


@pytest.mark.parametrize("started, native_now, want", [("bf16", False, "bf16"), ("auto", True, "fp32")])
def test_a_resumed_run_keeps_the_precision_it_started_with(monkeypatch, tmp_path, started, native_now, want):
    """auto on resume continues at the checkpoint's precision; a checkpoint recorded before trials
    resolved auto says "auto", which meant fp32 on a CPU. An explicit other precision is refused."""
    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: started == "bf16")
    resume = {"epochs": 2, "checkpoint_every": 1, "warmup_epochs": 0.0}  # a float, as config.json reads back
    resume |= {"max_train_samples": 128, "batch_size": 64}  # small steps: emulated bf16 is slow
    cfg = smoke(**resume)

    def crash(metrics: dict) -> None:
        raise SimulatedCrash  # after the epoch-1 checkpoint

    with pytest.raises(SimulatedCrash):
        run_trial(cfg, str(tmp_path), report=crash)
    latest = Path(TrialStore(tmp_path).latest())
    if started == "auto":  # as written before trials resolved it
        saved = json.loads((latest / ckpt_lib.CONFIG_FILE).read_text())
        saved["system"]["precision"] = "auto"
        (latest / ckpt_lib.CONFIG_FILE).write_text(json.dumps(saved))
    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: native_now)
    assert cli.check_resumable(TrialStore(tmp_path), cfg, resume=True) == str(latest)
    other = "fp32" if want == "bf16" else "bf16"
    with pytest.raises(UsageError, match=f"precision={other} \\(recorded: {started}\\)"):
        cli.check_resumable(TrialStore(tmp_path), smoke(**resume, precision=other), resume=True)
    run_trial(cfg, str(tmp_path))
    assert ckpt_lib.read_config(tmp_path / "checkpoint").system.precision == want


# --------------------------------------------------------------------------------------------
# Ray Train


def test_run_trial_resumes_from_its_own_store(uninterrupted, tmp_path):
    """An in-process trial whose process died after its epoch-1 checkpoint (a Tune retry runs
    the same trial directory again) resumes from its store and ends as if uninterrupted."""
    cfg = smoke(**RESUME)

    def crash_after_epoch_1(metrics: dict) -> None:
        if metrics.get("epoch") == 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_trial(cfg, str(tmp_path), report=crash_after_epoch_1)
    reported: list[int] = []
    final, uri = run_trial(cfg, str(tmp_path), report=lambda m: reported.append(m["epoch"]))
    assert reported == [2, 3] and uri == str(tmp_path / "checkpoint")
    assert_same_weights(model_file(Path(uri)), uninterrupted.weights)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*")) == ["epoch-00002", "epoch-00003"]


def test_fault_spec_is_read_from_the_environment():
    assert faults.from_env({}) is None
    assert faults.from_env({faults.ENV: "rank=1,step=5,marker=/tmp/m"}) == faults.Fault(1, 5, "/tmp/m")
    for bad in ("rank=1", "rank=x,step=1,marker=m", "rank=-1,step=1,marker=m", "step=1"):
        with pytest.raises(UsageError, match=faults.ENV):
            faults.from_env({faults.ENV: bad})


# --------------------------------------------------------------------------------------------
# Command line


def run_cli(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jepa_ray.train", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_cli_rejects_bad_config_before_starting_ray(tmp_path):
    proc = run_cli(["--set", "p=-1", "--out", str(tmp_path / "out")], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config field 'p'" in lines[0] and "allowed: p > 0" in lines[0], proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr  # e.g. "Started a local Ray instance"
    assert not (tmp_path / "out").exists()


def test_cli_rejects_an_unreachable_address_with_one_line(tmp_path):
    # Port 1 on the loopback refuses connections: the check fails fast, before ray.init.
    proc = run_cli(
        ["--preset", "smoke", "--workers", "2", "--address", "127.0.0.1:1", "--out", str(tmp_path / "out")],
        tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--address '127.0.0.1:1'" in lines[0] and "unreachable" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_without_out_is_a_usage_error(capsys):
    assert cli.main(["--preset", "smoke"]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_list_keys_prints_every_key_with_its_doc(capsys):
    assert cli.main(["--list-keys"]) == 0
    rows = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()}
    assert rows.keys() == config_lib.LEAVES.keys()
    assert all(doc.strip() for doc in rows.values())


def test_build_config_applies_sets_and_shortcuts():
    cfg = config_lib.build("smoke", ["mu=-1", "p=0.5"], {"workers": 2, "gpus_per_worker": 0, "seed": None})
    assert (cfg.target.mu, cfg.target.p, cfg.system.workers, cfg.system.seed) == (-1.0, 0.5, 2, 0)
    assert cfg.target.sigma == pytest.approx(sigma_gn(0.5))
    with pytest.raises(ConfigError, match="'batch_size'"):
        config_lib.build("smoke", [], {"workers": 3})  # 128 images per step over 3 workers
    unresolved = config_lib.build("smoke", ["p=0.5"], resolved=False)
    assert unresolved.target.sigma == 0.0  # a sweep's base: each trial's p resolves its own sigma


def printed_json(stdout: str) -> dict:
    """The last JSON object printed (indented, starting with a line '{')."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return json.loads("\n".join(lines[start : end + 1]))


@dataclass
class CliRun:
    out: Path
    proc: subprocess.CompletedProcess
    seconds: float


@pytest.fixture(scope="module")
def cli_run(ray_cluster, tmp_path_factory) -> CliRun:
    """`python -m jepa_ray.train --preset smoke` with 2 gloo workers and 2 epochs, joining the
    session's Ray instance (a subprocess that starts its own would pay Ray's start-up again)."""
    out = tmp_path_factory.mktemp("cli") / "out"
    start = time.monotonic()
    proc = run_cli([*CLI_ARGS, "--address", ray_cluster, "--out", str(out)], out.parent, timeout=500)
    return CliRun(out, proc, time.monotonic() - start)


@pytest.mark.slow
def test_cli_trial_prints_final_metrics_in_range(cli_run):
    assert cli_run.proc.returncode == 0, cli_run.proc.stderr[-3000:]
    shown = printed_json(cli_run.proc.stdout)
    assert shown["checkpoint"] == str(cli_run.out.resolve() / "checkpoint")
    assert set(HEADLINE_METRICS) <= shown.keys()
    assert all(finite(shown[k]) for k in HEADLINE_METRICS), shown
    for key in ("linear_acc", "linear_acc_z", "knn_acc"):
        assert 0.2 < shown[key] <= 1.0, (key, shown[key])  # 10 classes: chance is 0.1
    for key in ("l0_density", "l0_density_backbone"):
        assert 0.0 <= shown[key] <= 1.0, (key, shown[key])
    assert shown["target_l0_density"] == pytest.approx(expected_l0_density(1.0, 0.0, sigma_gn(1.0)))
    assert 1.0 <= shown["rank_me"] <= 64.0  # z has 64 dimensions (proj_dims 64-64)
    saved = json.loads((cli_run.out / "checkpoint" / ckpt_lib.METRICS_FILE).read_text())
    assert {k: saved[k] for k in HEADLINE_METRICS} == {k: shown[k] for k in HEADLINE_METRICS}


@pytest.mark.slow
def test_cli_trial_writes_loadable_checkpoint(cli_run):
    assert cli_run.proc.returncode == 0, cli_run.proc.stderr[-3000:]
    path = cli_run.out / "checkpoint"
    for name in (ckpt_lib.MODEL_FILE, ckpt_lib.CONFIG_FILE, ckpt_lib.METRICS_FILE):
        assert (path / name).is_file(), name
    state = torch.load(path / ckpt_lib.MODEL_FILE, weights_only=True)
    assert "model" in state
    saved_cfg = json.loads((path / ckpt_lib.CONFIG_FILE).read_text())
    assert saved_cfg["loss_convention"] == LOSS_CONVENTION
    assert saved_cfg["loss"]["lambd"] == config_lib.preset("smoke").loss.lambd
    assert saved_cfg["system"]["workers"] == 2

    encoder = jepa_ray.load_encoder(path)
    assert not encoder.training
    x = torch.rand(5, 1, 8, 8)  # pixels in [0, 1], as the exported encoder requires
    with torch.no_grad():
        h, z = encoder(x)
    assert h.shape[0] == 5 and z.shape == (5, 64)
    assert bool((z >= 0).all())  # rgg target: the projector ends in a ReLU
    loaded = encoder.state_dict()
    assert loaded.keys() == state["model"].keys()
    assert all(torch.equal(loaded[k], v) for k, v in state["model"].items())


@pytest.mark.slow
def test_two_worker_trial_reports_every_epoch_metric(cli_run):
    assert cli_run.proc.returncode == 0, cli_run.proc.stderr[-3000:]
    per_epoch = history(cli_run.out / "checkpoint")
    assert [m["epoch"] for m in per_epoch] == [0, 1]
    # checkpoint_every=1: the epoch checkpoints (the newest two are kept) hold the same history.
    assert ckpt_lib.read_history(cli_run.out / "checkpoints" / "epoch-00001") == per_epoch[:1]
    for m in per_epoch:
        for key in EPOCH_METRICS:
            assert finite(m[key]), (m["epoch"], key, m.get(key))
        assert m["train/loss"] > 0 and m["throughput/img_per_s"] > 0
        assert 0.0 <= m["train/l0_density"] <= 1.0 and 0.0 <= m["online/linear_acc"] <= 1.0
        # The loss convention holds for the epoch means too (the mean is linear); each step's
        # terms are float32, hence the float32-sized tolerance.
        lambd = config_lib.preset("smoke").loss.lambd
        assert m["train/loss"] == pytest.approx(
            (1 - lambd) * m["train/invariance"] + lambd * m["train/regularizer"], rel=1e-6
        )
