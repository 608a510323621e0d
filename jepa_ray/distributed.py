"""Autograd-aware collectives for the regularizers and BatchNorm, and the few sums over ranks
of the epoch statistics (the per-step seeds that keep every rank on the same random draws are
jepa_ray.seeding's).

Gradient convention (the one DDP needs): every rank computes the same global loss L from the
gathered batch, and the backward of a collective SUMS the incoming gradients over ranks, so
rank r's shard receives W * dL/dz_r. DDP then averages parameter gradients over the W ranks,
which gives exactly dL/dtheta of one process holding the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """x in float32 when it is in a half-precision type (bf16/fp16 under autocast); float32 and
    float64 stay as they are (the tests check the formulas in float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _backend_reduce_scatter(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of grad over ranks, then this rank's chunk along dim."""
    w, r = dist.get_world_size(), dist.get_rank()
    if dist.get_backend() == dist.Backend.NCCL:
        moved = grad.movedim(dim, 0).contiguous()
        out = torch.empty((moved.shape[0] // w, *moved.shape[1:]), dtype=grad.dtype, device=grad.device)
        dist.reduce_scatter_tensor(out, moved, op=dist.ReduceOp.SUM)
        return out.movedim(0, dim)
    # gloo has no reduce_scatter: all_reduce then slice (one collective, W times the data).
    summed = grad.contiguous()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.chunk(w, dim=dim)[r].contiguous()


class _GatherWithGrad(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _backend_reduce_scatter(grad, ctx.dim), None


class _AllReduceSum(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # A fresh tensor: torch.distributed.nn.all_reduce returns the result and leaves its
        # input untouched, and in-place reduction of an autograd input would be wrong here too.
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's (equal-shaped) x along dim; gradients flow back to each shard."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x, dim)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over ranks, differentiable (backward sums the gradients over ranks)."""
    if not is_distributed():
        return x
    return _AllReduceSum.apply(x)


def sum_over_ranks(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sums over ranks of a few numbers (epoch statistics), in float64."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any backend.

    torch.nn.SyncBatchNorm runs on CUDA only; this one all-reduces the per-channel sums and
    sums of squares (one differentiable all-reduce, summing gradients over ranks as the
    convention above needs), so W CPU (gloo) workers with B/W samples each normalize exactly as
    one process with the whole batch. Eval mode and single-process runs are plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D to 5D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = full_precision(x)
        local_n = torch.tensor(float(xf.numel() // xf.shape[1]), device=x.device)
        moments = torch.cat([xf.sum(dims), xf.square().sum(dims), local_n.view(1)])
        moments = all_reduce_sum(moments)
        c = x.shape[1]
        n = moments[-1]
        mean = moments[:c] / n
        var = (moments[c : 2 * c] / n - mean.square()).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)).clamp_min(1.0), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers with global-batch statistics: torch's SyncBatchNorm on CUDA (fused NCCL
    kernels), GlobalBatchNorm elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module)


def _to_global(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_global(child))
    return out
