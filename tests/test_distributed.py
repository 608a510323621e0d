"""Distributed correctness of the regularizers: two gloo processes on CPU, each holding half of
one global batch, must see the same loss as one process on the whole batch, and the gradient
convention of jepa_ray.distributed (collectives sum gradients over ranks, DDP averages them)
must give the single-process parameter gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jepa_ray import distributed as dist_lib
from jepa_ray import regularizers as R
from jepa_ray import seeding

WORLD = 2
STEP = 5
IN_DIM = 6

# name -> (regularizer, feature shape (B, D) or (V, B, D) of the GLOBAL batch)
CASES: dict[str, tuple[str, tuple[int, ...]]] = {
    "rdmreg-BD": ("rdmreg", (16, 8)),
    "rdmreg-VBD": ("rdmreg", (3, 16, 8)),
    "sigreg-BD": ("sigreg", (16, 8)),
    "sigreg-VBD": ("sigreg", (3, 16, 8)),
}


def _regularizer(kind: str) -> nn.Module:
    if kind == "rdmreg":
        return R.RDMReg(32, target="rgg", p=1.0, mu=-0.5, seed=3)
    return R.SIGReg(32, t_max=3.0, knots=17, seed=3)


def _global_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    """The case's global batch, the same in every process: features z for the feature-level
    check, inputs x and a Linear layer (features = Linear(x)) for the parameter-level check."""
    _, shape = CASES[name]
    g = torch.Generator().manual_seed(sorted(CASES).index(name))
    z = torch.randn(shape, generator=g)
    x = torch.randn((*shape[:-1], IN_DIM), generator=g)
    lin = nn.Linear(IN_DIM, shape[-1])
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
    return z, x, lin


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's half of the batch dimension (the one before the feature dimension)."""
    return t.chunk(WORLD, dim=-2)[rank].contiguous()


def _feature_level(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kind, _ = CASES[name]
    z = z.clone().requires_grad_(True)
    loss = _regularizer(kind)(z, STEP)
    loss.backward()
    return loss.detach(), z.grad


def _parameter_level(name: str, x: torch.Tensor, lin: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kind, _ = CASES[name]
    loss = _regularizer(kind)(lin(x), STEP)
    loss.backward()
    inner = lin.module if isinstance(lin, DistributedDataParallel) else lin
    return loss.detach(), inner.weight.grad, inner.bias.grad


def _bn_net() -> nn.Module:
    """Conv-BN2d-ReLU-pool-Linear-BN1d, seeded: the BatchNorm check's network."""
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5),
        nn.BatchNorm1d(5),
    )


def _bn_inputs() -> torch.Tensor:
    return torch.randn(12, 3, 6, 6, generator=torch.Generator().manual_seed(5)) * 2 + 1


def _bn_step(net: nn.Module, x: torch.Tensor) -> dict:
    """Two training forwards (running statistics move twice), one backward of a local loss."""
    net(x)
    y = net(x)
    y.square().mean().backward()
    inner = net.module if isinstance(net, DistributedDataParallel) else net
    return {
        "y": y.detach(),
        "grads": {n: p.grad for n, p in inner.named_parameters()},
        "buffers": {n: b.clone() for n, b in inner.named_buffers()},
    }


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    """One rank: every case at the feature and the parameter level, results saved to a file."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)
    try:
        out: dict[str, object] = {
            "world_size": dist_lib.world_size(),
            "rank": dist_lib.rank(),
            "sums": dist_lib.sum_over_ranks([float(rank), 1.0]),
        }
        for name in CASES:
            z, x, lin = _global_inputs(name)
            loss, grad = _feature_level(name, _shard(z, rank))
            ddp = DistributedDataParallel(lin)
            p_loss, w_grad, b_grad = _parameter_level(name, _shard(x, rank), ddp)
            out[name] = dict(loss=loss, grad=grad, p_loss=p_loss, w_grad=w_grad, b_grad=b_grad)
        net = dist_lib.convert_sync_batchnorm(_bn_net(), torch.device("cpu"))
        out["bn_types"] = sorted({type(m).__name__ for m in net.modules() if "Norm" in type(m).__name__})
        out["bn"] = _bn_step(DistributedDataParallel(net), _bn_inputs().chunk(WORLD)[rank])
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
        # Both ranks reach the teardown with no operation in flight: a rank that closes its gloo
        # pairs while the other still has a pending receive on them makes the other's transport
        # thread throw "connection closed by peer", which aborts the process (SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Results of both ranks of one two-process gloo run (spawned once for the module)."""
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ranks_see_a_two_process_group(ranks):
    assert [(r["world_size"], r["rank"]) for r in ranks] == [(WORLD, 0), (WORLD, 1)]
    assert all(r["sums"] == [1.0, 2.0] for r in ranks)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_loss_equals_the_single_process_loss(ranks, name):
    z, x, lin = _global_inputs(name)
    single, _ = _feature_level(name, z)
    single_p, _, _ = _parameter_level(name, x, lin)
    for r in ranks:
        _close(r[name]["loss"], single)
        _close(r[name]["p_loss"], single_p)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_shard_gradient_is_world_size_times_the_single_process_slice(ranks, name):
    """Every rank computes the same global loss and the collectives' backward sums over ranks,
    so rank r's shard receives W * dL/dz_r."""
    z, _, _ = _global_inputs(name)
    _, single_grad = _feature_level(name, z)
    assert single_grad.abs().max() > 0
    for rank, r in enumerate(ranks):
        _close(r[name]["grad"], WORLD * _shard(single_grad, rank))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_ddp_parameter_gradient_equals_the_single_process_gradient(ranks, name):
    _, x, lin = _global_inputs(name)
    _, w_grad, b_grad = _parameter_level(name, x, lin)
    assert w_grad.abs().max() > 0
    for r in ranks:
        _close(r[name]["w_grad"], w_grad)
        _close(r[name]["b_grad"], b_grad)


# --------------------------------------------------------------------------------------------
# Per-step seeds (no process group needed)


def _directions(seed: int, step: int, stream: int) -> torch.Tensor:
    return R.random_directions(16, 8, seeding.step_generator(torch.device("cpu"), seed, step, stream))


def test_step_seed_is_deterministic_and_63_bit():
    seeds = {seeding.step_seed(s, t, k) for s in range(3) for t in range(50) for k in (1, 2)}
    assert len(seeds) == 3 * 50 * 2
    assert all(0 <= v < 2**63 for v in seeds)
    assert seeding.step_seed(7, 123, 1) == seeding.step_seed(7, 123, 1)


def test_same_seed_step_and_stream_give_the_same_directions():
    torch.testing.assert_close(_directions(0, 10, 1), _directions(0, 10, 1), rtol=0, atol=0)


@pytest.mark.parametrize("other", [(0, 11, 1), (1, 10, 1), (0, 10, 2)], ids=["step", "seed", "stream"])
def test_different_step_seed_or_stream_give_different_directions(other):
    assert not torch.allclose(_directions(0, 10, 1), _directions(*other))


def test_collectives_are_identities_without_a_process_group():
    assert not dist_lib.is_distributed()
    assert (dist_lib.world_size(), dist_lib.rank()) == (1, 0)
    x = torch.randn(3, 4, requires_grad=True)
    assert dist_lib.gather_with_grad(x, dim=0) is x
    assert dist_lib.all_reduce_sum(x) is x
    assert dist_lib.sum_over_ranks([1.5, 2.0]) == [1.5, 2.0]


@pytest.mark.slow
def test_global_batchnorm_on_gloo_equals_batchnorm_on_the_whole_batch(ranks):
    """sync_bn on CPU workers: the outputs, gradients and running statistics of two gloo ranks
    with half the batch each are those of plain BatchNorm on the whole batch."""
    single = _bn_step(_bn_net(), _bn_inputs())
    for rank, r in enumerate(ranks):
        assert r["bn_types"] == ["GlobalBatchNorm"]
        _close(r["bn"]["y"], single["y"].chunk(WORLD)[rank])
        for name, grad in single["grads"].items():
            _close(r["bn"]["grads"][name], grad)
        for name, buf in single["buffers"].items():
            _close(r["bn"]["buffers"][name].to(buf.dtype), buf)


def test_global_batchnorm_without_a_process_group_is_batchnorm():
    net = _bn_net()
    converted = dist_lib.convert_sync_batchnorm(_bn_net(), torch.device("cpu"))
    x = _bn_inputs()
    torch.testing.assert_close(converted(x), net(x), rtol=0, atol=0)
    assert converted.state_dict().keys() == net.state_dict().keys()
