"""One optimization step of a trial: the module one optimizer trains (the encoder and the online
probes, DDP-wrapped as one), what a step returns, and the process's device and precision."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from jepa_ray import distributed as dist_lib
from jepa_ray.config import trained_precision
from jepa_ray.regularizers import invariance, total_loss
from jepa_ray.train.checkpoint import unwrap

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    precision: str
    """What the trial trains at, "fp32" or "bf16" (autocast): `system.precision` resolved."""
    precision_reason: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX512-BF16 on x86, BF16
    on Arm), as torch detects it: there bf16 autocast trains faster than fp32; elsewhere torch
    emulates bf16 and it is slower. x86 kernels capped below AVX-512 (ATEN_CPU_CAPABILITY) count
    as without."""
    if hasattr(torch.cpu, "get_capabilities"):
        caps = torch.cpu.get_capabilities()
        x86, arm = caps.get("amx_bf16") or caps.get("avx512_bf16"), caps.get("bf16")
    else:  # torch before 2.14
        x86, arm = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)(), False
    if x86:
        return torch.backends.cpu.get_cpu_capability() == "AVX512"
    return bool(arm)


def emulates_bf16(precision: str, device: torch.device) -> bool:
    """Whether training at `precision` on `device` means bf16 that torch emulates (a CPU without
    native bf16 matrix support): many times slower than fp32."""
    return precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16()


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """The precision a trial asking for `requested` trains at on `device`, and why: fp32 and bf16
    as given (bf16 set on a CPU that emulates it says so: it trains many times slower than fp32);
    auto is bf16 on CUDA and on a CPU with native bf16 matrix support, else fp32."""
    if emulates_bf16(requested, device):
        return requested, "set; warning: this CPU has no native bf16 matrix support, torch emulates it (slow)"
    if requested != "auto":
        return requested, "set"
    if device.type == "cuda":
        return "bf16", "auto: CUDA"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "auto: the CPU has native bf16 matrix support"
    return "fp32", f"auto: no native bf16 matrix support on {device.type}"


def default_device(cfg: TrialConfig) -> torch.device:
    """This process's GPU when the trial asks for GPUs and one is visible, else the CPU."""
    if torch.cuda.is_available() and cfg.system.gpus_per_worker > 0:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def runtime(cfg: TrialConfig, device: torch.device | None = None, *, resumed: str | None = None) -> Runtime:
    """Rank, world size, device and precision of this worker. `resumed`: the precision recorded by
    the checkpoint a run resumes from, which `auto` keeps (a run does not change precision midway)."""
    device = device if device is not None else default_device(cfg)
    if cfg.system.precision == "auto" and resumed is not None:
        precision, why = trained_precision(resumed, device.type == "cuda"), "auto: the resumed run's"
    else:
        precision, why = resolve_precision(cfg.system.precision, device)
    return Runtime(dist_lib.rank(), dist_lib.world_size(), device, precision, why)


def set_threads(cfg: TrialConfig) -> None:
    """torch's intra-op threads: threads_per_worker, else the worker's CPUs rounded up."""
    n = cfg.system.threads_per_worker or max(1, math.ceil(cfg.system.cpus_per_worker))
    torch.set_num_threads(n)


class TrainModule(nn.Module):
    """The encoder and the online linear probes on detached backbone features (`probe_h`) and on
    z (`probe_z`), trained each step on the global views in the encoder's optimizer, as the
    reference's online classifiers are. DDP wraps this one module, called once per step."""

    def __init__(self, encoder: nn.Module, num_classes: int, joint_views: bool = False):
        super().__init__()
        self.encoder = encoder
        self.probe_h = nn.Linear(encoder.feature_dim, num_classes)
        self.probe_z = nn.Linear(encoder.projector.out_dim, num_classes)
        self.joint_views = joint_views

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor, num_global: int) -> StepOutput:
        """(V, b, F) backbone features and (V, b, D) projections of the views, and the probes'
        cross-entropy on the global views (mean over views, as the reference averages them).
        One encoder forward per view, as the reference (BatchNorm statistics per view), or
        with joint_views one forward of all global views and one of all local views."""
        if self.joint_views:
            groups = [views[:num_global]] + ([views[num_global:]] if len(views) > num_global else [])
        else:
            groups = [[v] for v in views]
        hs, zs = [], []
        for group in groups:
            x = torch.cat(group) if len(group) > 1 else group[0]
            if x.is_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            h, z = self.encoder(x)
            hs.append(h.view(len(group), -1, h.shape[-1]))
            zs.append(z.view(len(group), -1, z.shape[-1]))
        h, z = torch.cat(hs), torch.cat(zs)
        target = labels.repeat(num_global)
        with torch.autocast(h.device.type, enabled=False):
            logits_h = self.probe_h(dist_lib.full_precision(h[:num_global].detach()).flatten(0, 1))
            logits_z = self.probe_z(dist_lib.full_precision(z[:num_global].detach()).flatten(0, 1))
            probe_loss = F.cross_entropy(logits_h, target) + F.cross_entropy(logits_z, target)
        correct = torch.stack([(logits_h.argmax(1) == target).sum(), (logits_z.argmax(1) == target).sum()])
        return StepOutput(h, z, probe_loss, correct)


@dataclass
class StepOutput:
    h: torch.Tensor
    z: torch.Tensor
    probe_loss: torch.Tensor
    correct: torch.Tensor
    """Right answers of the two probes on this rank's global views (before the step)."""


@dataclass
class StepStats:
    """One step's terms (detached, on the device; read once per epoch)."""

    loss: torch.Tensor
    invariance: torch.Tensor
    regularizer: torch.Tensor
    correct: torch.Tensor
    z: torch.Tensor


def train_step(
    model: nn.Module,
    regularizer: nn.Module,
    optimizer: torch.optim.Optimizer,
    views: list[torch.Tensor],
    labels: torch.Tensor,
    step: int,
    cfg: TrialConfig,
    autocast_dtype: torch.dtype | None = None,
) -> StepStats:
    """One optimization step on a batch of views: forward (a TrainModule, or DDP around one),
    loss = loss_scale * ((1 - lambd) * invariance + lambd * regularizer) plus the probes'
    cross-entropy (which reaches the probes only), backward, optimizer step. The learning rate
    is set beforehand (optim.schedule_step)."""
    num_global = cfg.views.num_views
    device_type = views[0].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(views, labels, num_global)
    inv = invariance(dist_lib.full_precision(out.z), num_global)
    reg = regularizer(out.z[:num_global], step)
    loss = total_loss(inv, reg, cfg.loss.lambd, cfg.loss.loss_scale)
    optimizer.zero_grad(set_to_none=True)
    (loss + out.probe_loss).backward()
    if cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(unwrap(model).encoder.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    return StepStats(loss.detach(), inv.detach(), reg.detach(), out.correct, out.z.detach())
