"""Speed of the regularizers against the plain formulas they replace, in the same run.

Prints one JSON line per case (milliseconds per call, median of the repeats after warm-up;
a repeat runs enough back-to-back calls to last MIN_REPEAT_MS):

- `rdmreg ...`: forward+backward of `jepa_ray.regularizers.rdmreg` on given directions and
  target samples; baseline: the plain formula of the reference snippet (directions as columns,
  `proj_z = z @ dirs`, `proj_y = y @ dirs`, sort both over the batch, mean squared difference,
  all under autograd).
- `RDMReg step ...`: the `RDMReg` module (drawing its directions and target samples, then
  forward+backward); baseline: the plain formula with plain draws (`torch.randn` directions,
  `targets.sample` targets).
- `sigreg ...` / `SIGReg step ...`: the same for SIGReg; baseline: the complex empirical
  characteristic function on the full symmetric grid, `torch.trapezoid` (LeJEPA's snippet),
  with the same knots as ours so that both compute the same number.
- `sample rgg p=... B=256 D=512`: `targets.sample`; baseline: one `rdmreg` forward+backward at
  B=256, D=512, N=8192 (N=1024 with --quick) (goal: ratio <= 0.3 at p = 0.5).

Each pair (ours, baseline) is timed in alternation so that load changes hit both alike. On
CUDA, the `rdmreg`/`sigreg` cases are also timed as CUDA-graph replays (case suffix `graph`):
the device work alone, which is what remains of a step when the host launches it while the
GPU is still busy with the backbone.

Goals: ratio <= 1.0 for every RDMReg case. Usage:
`python benchmarks/regularizers.py [--device cpu|cuda|all] [--repeats N] [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import torch

from jepa_ray import regularizers as R
from jepa_ray import targets

BENCH = "regularizers"
RDMREG_SIZES = ((256, 512, 8192), (512, 2048, 1024))  # (B, D, N)
SIGREG_SIZE = (512, 512, 1024, 17)  # (B, D, N, knots)
SAMPLE_SIZE = (256, 512)
SAMPLE_PS = (0.5, 1.0, 2.0)
SAMPLE_SLICES = 8192  # the rdmreg step that sampling is compared with
TARGET = dict(kind="rgg", p=1.0, mu=0.0)
T_MAX = 3.0
MIN_REPEAT_MS = 25.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Milliseconds per call of `calls` back-to-back calls, device work included."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3 / calls


def _calls_per_repeat(fn: Callable[[], object], device: torch.device) -> int:
    """Calls that make one timed repeat last about MIN_REPEAT_MS: a sub-millisecond GPU step
    timed alone measures timer and launch jitter more than the step."""
    return max(1, min(1000, math.ceil(MIN_REPEAT_MS / max(_timed(fn, device, 1), 1e-3))))


def time_pair_ms(
    ours: Callable[[], object], plain: Callable[[], object], device: torch.device, repeats: int, warmup: int
) -> tuple[float, float]:
    """Medians (ms per call) of two functions timed in alternation, so that a change in
    machine load during the run weighs on both sides of the ratio alike."""
    for _ in range(warmup):
        ours()
        plain()
    sides = ((ours, _calls_per_repeat(ours, device)), (plain, _calls_per_repeat(plain, device)))
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            fn, calls = sides[side]
            times[side].append(_timed(fn, device, calls))
    return statistics.median(times[0]), statistics.median(times[1])


def cuda_graph(fn: Callable[[], object]) -> Callable[[], object]:
    """fn captured in a CUDA graph; replaying it runs the same kernels without the host's
    per-op launch cost. At these sizes a GPU step is bound by that cost (tens of microseconds
    per op on a slow host), so only the replay shows the device work of each formula."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # capture needs warmed-up kernels and allocator pools
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


# --------------------------------------------------------------------------------------------
# The plain formulas (baselines)


def plain_directions(num: int, dim: int, device: torch.device) -> torch.Tensor:
    """(dim, num) unit columns, as the reference snippet draws them."""
    dirs = torch.randn(dim, num, device=device)
    return dirs / dirs.norm(dim=0, keepdim=True)


def plain_rdmreg(z: torch.Tensor, y: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Project, sort over the batch, mean squared difference; dirs is (D, N)."""
    proj_z = z @ dirs
    proj_y = y @ dirs
    return (torch.sort(proj_z, dim=0).values - torch.sort(proj_y, dim=0).values).square().mean()


def plain_sigreg(z: torch.Tensor, dirs: torch.Tensor, t_max: float, knots: int) -> torch.Tensor:
    """Epps-Pulley with the complex ECF on [-t_max, t_max] (2*knots-1 points: the knots of
    our half grid, mirrored); dirs is (D, N)."""
    t = torch.linspace(-t_max, t_max, 2 * knots - 1, device=z.device)
    gauss = torch.exp(-0.5 * t.square())
    x_t = (z @ dirs).unsqueeze(2) * t  # (B, N, T)
    ecf = (1j * x_t).exp().mean(0)
    err = (ecf - gauss).abs().square() * gauss
    return (torch.trapezoid(err, t, dim=1) * z.shape[0]).mean()


# --------------------------------------------------------------------------------------------
# Cases


def _fwd_bwd(loss_fn: Callable[[], torch.Tensor], z: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        z.grad = None
        loss_fn().backward()

    return step


def _emit(case: str, value: float, device: torch.device, baseline: float | None = None) -> dict:
    row = {"bench": BENCH, "case": f"{case} {device.type}", "metric": "ms", "value": round(value, 4)}
    if baseline is not None:
        row.update(baseline=round(baseline, 4), ratio=round(value / baseline, 4))
    row["device"] = device.type
    print(json.dumps(row), flush=True)
    return row


def _check_same(ours: torch.Tensor, plain: torch.Tensor, what: str) -> None:
    """The two sides of a comparison must compute the same number."""
    if not torch.allclose(ours.detach().double(), plain.detach().double(), rtol=1e-4, atol=1e-6):
        raise AssertionError(f"{what}: ours {ours.item():.6g} != plain formula {plain.item():.6g}")


def bench_rdmreg(b: int, d: int, n: int, device: torch.device, repeats: int, warmup: int) -> None:
    z = torch.randn(b, d, device=device).relu_().requires_grad_(True)
    y = targets.sample(TARGET["kind"], (b, d), p=TARGET["p"], mu=TARGET["mu"], device=device)
    dirs = R.random_directions(n, d, device=device)
    _check_same(R.rdmreg(z, y, dirs), plain_rdmreg(z, y, dirs.t()), f"rdmreg B={b} D={d} N={n}")

    size = f"B={b} D={d} N={n}"
    ours, plain = time_pair_ms(
        _fwd_bwd(lambda: R.rdmreg(z, y, dirs), z),
        _fwd_bwd(lambda: plain_rdmreg(z, y, dirs.t()), z),
        device,
        repeats,
        warmup,
    )
    _emit(f"rdmreg {size}", ours, device, plain)
    if device.type == "cuda":
        ours, plain = time_pair_ms(
            cuda_graph(_fwd_bwd(lambda: R.rdmreg(z, y, dirs), z)),
            cuda_graph(_fwd_bwd(lambda: plain_rdmreg(z, y, dirs.t()), z)),
            device,
            repeats,
            warmup,
        )
        _emit(f"rdmreg {size} graph", ours, device, plain)

    module = R.RDMReg(n, target=TARGET["kind"], p=TARGET["p"], mu=TARGET["mu"])
    steps = iter(range(10**9))

    def plain_drawn() -> torch.Tensor:
        y_new = targets.sample(TARGET["kind"], (b, d), p=TARGET["p"], mu=TARGET["mu"], device=device)
        return plain_rdmreg(z, y_new, plain_directions(n, d, device))

    ours_step, plain_step = time_pair_ms(
        _fwd_bwd(lambda: module(z, next(steps)), z), _fwd_bwd(plain_drawn, z), device, repeats, warmup
    )
    _emit(f"RDMReg step {size}", ours_step, device, plain_step)


def bench_sigreg(b: int, d: int, n: int, knots: int, device: torch.device, repeats: int, warmup: int) -> None:
    z = torch.randn(b, d, device=device, requires_grad=True)
    dirs = R.random_directions(n, d, device=device)
    _check_same(
        R.sigreg(z, dirs, t_max=T_MAX, knots=knots),
        plain_sigreg(z, dirs.t(), T_MAX, knots),
        f"sigreg B={b} D={d} N={n}",
    )

    size = f"B={b} D={d} N={n} knots={knots}"
    ours, plain = time_pair_ms(
        _fwd_bwd(lambda: R.sigreg(z, dirs, t_max=T_MAX, knots=knots), z),
        _fwd_bwd(lambda: plain_sigreg(z, dirs.t(), T_MAX, knots), z),
        device,
        repeats,
        warmup,
    )
    _emit(f"sigreg {size}", ours, device, plain)
    if device.type == "cuda":
        ours, plain = time_pair_ms(
            cuda_graph(_fwd_bwd(lambda: R.sigreg(z, dirs, t_max=T_MAX, knots=knots), z)),
            cuda_graph(_fwd_bwd(lambda: plain_sigreg(z, dirs.t(), T_MAX, knots), z)),
            device,
            repeats,
            warmup,
        )
        _emit(f"sigreg {size} graph", ours, device, plain)

    module = R.SIGReg(n, t_max=T_MAX, knots=knots)
    steps = iter(range(10**9))
    ours_step, plain_step = time_pair_ms(
        _fwd_bwd(lambda: module(z, next(steps)), z),
        _fwd_bwd(lambda: plain_sigreg(z, plain_directions(n, d, device), T_MAX, knots), z),
        device,
        repeats,
        warmup,
    )
    _emit(f"SIGReg step {size}", ours_step, device, plain_step)


def bench_sampling(device: torch.device, repeats: int, warmup: int, n: int) -> None:
    """targets.sample against one rdmreg forward+backward at (B, D) = SAMPLE_SIZE, N = n."""
    b, d = SAMPLE_SIZE
    z = torch.randn(b, d, device=device).relu_().requires_grad_(True)
    y = targets.sample(TARGET["kind"], (b, d), p=TARGET["p"], mu=TARGET["mu"], device=device)
    dirs = R.random_directions(n, d, device=device)
    step = _fwd_bwd(lambda: R.rdmreg(z, y, dirs), z)
    for p in SAMPLE_PS:
        ms, step_ms = time_pair_ms(
            lambda p=p: targets.sample("rgg", (b, d), p=p, mu=0.0, device=device), step, device, repeats, warmup
        )
        _emit(f"sample rgg p={p:g} B={b} D={d}", ms, device, step_ms)


def run(device: torch.device, repeats: int, warmup: int, slice_div: int = 1) -> None:
    """Every case on one device; slice_div divides the numbers of slices (smoke runs)."""
    torch.manual_seed(0)
    for b, d, n in RDMREG_SIZES:
        bench_rdmreg(b, d, n // slice_div, device, repeats, warmup)
    b, d, n, knots = SIGREG_SIZE
    bench_sigreg(b, d, n // slice_div, knots, device, repeats, warmup)
    bench_sampling(device, repeats, warmup, SAMPLE_SLICES // slice_div)


def _devices(choice: str) -> list[torch.device]:
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise SystemExit("--device cuda: no CUDA device is available (allowed here: cpu, all)")
    if choice == "all":
        return [torch.device("cpu")] + ([torch.device("cuda")] if has_cuda else [])
    return [torch.device(choice)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="where to measure (all: CPU, and CUDA when present)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case (median; >= 1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 warm-up, 3 repeats and 1/8 of the slices (the rdmreg "
        "and sigreg case names carry the sizes used)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be >= 1")
    repeats, warmup, slice_div = (3, 1, 8) if args.quick else (args.repeats, 2, 1)
    for device in _devices(args.device):
        run(device, repeats, warmup, slice_div)


if __name__ == "__main__":
    main()
