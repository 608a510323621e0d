"""Batched view augmentations: geometry, photometric ops against torchvision, and ViewMaker."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from jepa_ray.config import ConfigError, ViewConfig
from jepa_ray.data.augment import ViewMaker, measure_views_per_second, recipe_defaults
from jepa_ray.data.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
    rgb_to_grayscale,
    solarize,
)
from jepa_ray.data.geometry import crop_affine, sample_crop_boxes, warp

MEAN3, STD3 = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
IDENTITY = dict(
    p_flip=0.0,
    rotate_deg=0.0,
    translate=0.0,
    p_color_jitter=0.0,
    p_grayscale=0.0,
    p_solarize=0.0,
    p_blur=0.0,
    p_noise=0.0,
)
"""Every random op off; with crop_scale_min=1 a view is the normalized input."""


def _images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _normalized(x: torch.Tensor, mean, std) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# geometry


def test_crop_affine_integer_box_is_the_exact_sub_block():
    x = torch.rand(2, 3, 20, 24)
    boxes = torch.tensor([[8.0, 4.0, 10.0, 10.0], [0.0, 10.0, 10.0, 10.0]])
    out = warp(x, crop_affine(boxes, 20, 24), 10)
    torch.testing.assert_close(out[0], x[0, :, 4:14, 8:18], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, 10:20, 0:10], atol=1e-5, rtol=0)


def test_crop_affine_flip_rotation_and_shift():
    x = torch.rand(3, 2, 9, 9)
    whole = torch.tensor([[0.0, 0.0, 9.0, 9.0]]).repeat(3, 1)
    flipped = warp(x, crop_affine(whole, 9, 9, flip=torch.tensor([True, False, True])), 9)
    torch.testing.assert_close(flipped[0], x[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[1], x[1], atol=1e-5, rtol=0)
    # angle pi/2: output pixel (i, j) reads input pixel (j, W-1-i), i.e. torch.rot90(k=1).
    rotated = warp(x, crop_affine(whole, 9, 9, angle=torch.full((3,), math.pi / 2)), 9)
    torch.testing.assert_close(rotated, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)
    # A shift of 2/9 (normalized) moves the sampling window right by one pixel.
    shifted = warp(x, crop_affine(whole, 9, 9, shift=torch.tensor([[2 / 9, 0.0]] * 3)), 9, "zeros")
    torch.testing.assert_close(shifted[..., :-1], x[..., 1:], atol=1e-5, rtol=0)
    assert torch.all(shifted[..., -1] == 0)


def test_sample_crop_boxes_follow_scale_and_ratio():
    boxes = sample_crop_boxes(4000, 30, 40, (0.2, 1.0), (3 / 4, 4 / 3), _gen(0), torch.device("cpu"))
    x0, y0, w, h = boxes.unbind(1)
    assert torch.all(x0 >= 0) and torch.all(y0 >= 0)
    assert torch.all(x0 + w <= 40 + 1e-4) and torch.all(y0 + h <= 30 + 1e-4)
    area, ratio = w * h / 1200, w / h
    whole = (w == 40) & (h == 30)  # the fallback when no candidate fits
    assert torch.all((area[~whole] >= 0.2 - 1e-5) & (area[~whole] <= 1 + 1e-5))
    assert torch.all((ratio[~whole] >= 3 / 4 - 1e-5) & (ratio[~whole] <= 4 / 3 + 1e-5))
    assert 0.5 < area.mean() < 0.65  # E[U(0.2, 1)] = 0.6, slightly skewed by rejections
    full = sample_crop_boxes(8, 16, 16, (1.0, 1.0), (3 / 4, 4 / 3), _gen(1), torch.device("cpu"))
    torch.testing.assert_close(full, torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(8, 1))


# --------------------------------------------------------------------------------------------
# photometric ops against torchvision, one sample at a time


def _rgb_batch(n: int = 6, size: int = 7) -> torch.Tensor:
    x = torch.rand(n, 3, size, size, generator=_gen(5))
    x[0, :, 0, 0] = 0.3  # gray pixel (undefined hue)
    x[1, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    x[2, :, :2, :] = torch.tensor([0.2, 0.9, 0.9]).view(3, 1, 1)  # max shared by two channels
    return x


@pytest.mark.parametrize(
    "ours, ref, factors",
    [
        (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4, 0.9, 1.2, 0.0]),
        (adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.4, 0.9, 1.2, 0.0]),
        (adjust_saturation, TF.adjust_saturation, [0.8, 1.0, 1.2, 0.9, 1.1, 0.0]),
        (adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.1, 0.05, -0.5, 0.37]),
    ],
)
def test_color_ops_match_torchvision_per_sample(ours, ref, factors):
    x = _rgb_batch()
    out = ours(x.clone(), torch.tensor(factors))
    expected = torch.stack([ref(img, f) for img, f in zip(x, factors)])
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)


def test_one_channel_ops_match_torchvision():
    x = torch.rand(3, 1, 6, 6, generator=_gen(2))
    f = [0.7, 1.3, 1.0]
    torch.testing.assert_close(
        adjust_contrast(x, torch.tensor(f)),
        torch.stack([TF.adjust_contrast(i, v) for i, v in zip(x, f)]),
        atol=1e-6,
        rtol=0,
    )
    assert rgb_to_grayscale(x) is x


def test_grayscale_and_solarize_match_torchvision():
    x = _rgb_batch()
    torch.testing.assert_close(rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(solarize(x, 0.5), TF.solarize(x, 0.5), atol=0, rtol=0)


def test_gaussian_blur_matches_torchvision_per_sample():
    x = torch.rand(4, 3, 12, 10, generator=_gen(3))
    sigmas = [0.1, 0.7, 1.5, 2.0]
    out = gaussian_blur(x, torch.tensor(sigmas), 5)
    expected = torch.stack([TF.gaussian_blur(img, [5, 5], [s, s]) for img, s in zip(x, sigmas)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert blur_kernel_size(32) == 3 and blur_kernel_size(224) == 23 and blur_kernel_size(4) == 3


# --------------------------------------------------------------------------------------------
# ViewMaker


@pytest.mark.parametrize(
    "recipe, channels, size, local", [("digits", 1, 8, 0), ("cifar", 3, 32, 0), ("imagenet", 3, 24, 2)]
)
def test_view_shapes_dtypes_and_determinism(recipe, channels, size, local):
    mean, std = MEAN3[:channels], STD3[:channels]
    vm = ViewMaker(ViewConfig(recipe=recipe, num_views=2, num_local_views=local), size, mean, std)
    x = _images(16, channels, size)
    views = vm(x, _gen(0))
    assert len(views) == 2 + local == vm.total_views
    for i, v in enumerate(views):
        side = size if i < 2 else size // 2
        assert v.shape == (16, channels, side, side) and v.dtype == torch.float32 and torch.isfinite(v).all()
    again = vm(x, _gen(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other = vm(x, _gen(1))
    assert not torch.allclose(views[0], other[0])
    assert not torch.allclose(views[0], views[1])


@pytest.mark.parametrize("recipe, channels, size, local", [("digits", 1, 8, 0), ("imagenet", 3, 24, 2)])
def test_shares_of_a_batch_get_the_views_of_the_whole_batch(recipe, channels, size, local):
    """W ranks, each with its rows of the global batch and the same generator seed, make exactly
    the views one process makes of the whole batch (so trials do not depend on the worker count)."""
    mean, std = MEAN3[:channels], STD3[:channels]
    vm = ViewMaker(ViewConfig(recipe=recipe, num_views=2, num_local_views=local), size, mean, std)
    x = _images(12, channels, size)
    whole = vm(x, _gen(3))
    for world in (2, 3):
        b = 12 // world
        shares = [vm(x[r * b : (r + 1) * b], _gen(3), offset=r * b, total=12) for r in range(world)]
        for v, view in enumerate(whole):
            torch.testing.assert_close(torch.cat([s[v] for s in shares]), view, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not lie in a batch of 12"):
        vm(x[:6], _gen(3), offset=8, total=12)


def test_digits_views_are_never_flipped():
    """With every other random op off, a digits view must be the input itself: any flip shows."""
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 1:7, 1] = 255  # a vertical bar on the left: mirror-asymmetric
    x[:, :, 1, 1:5] = 200
    ident = {k: v for k, v in IDENTITY.items() if k != "p_flip"}
    vm = ViewMaker(ViewConfig(recipe="digits", crop_scale_min=1.0), 8, (0.3,), (0.4,), **ident)
    for seed in range(3):
        for v in vm(x, _gen(seed)):
            torch.testing.assert_close(v, _normalized(x, (0.3,), (0.4,)), atol=1e-5, rtol=0)
    flipping = ViewMaker(ViewConfig(recipe="digits", crop_scale_min=1.0), 8, (0.3,), (0.4,), **ident, p_flip=0.5)
    assert not torch.allclose(flipping(x, _gen(0))[0], _normalized(x, (0.3,), (0.4,)), atol=1e-3)


def test_cifar_flips_about_half_of_the_samples_of_every_view():
    x = _images(300, 3, 8)
    vm = ViewMaker(
        ViewConfig(recipe="cifar", crop_scale_min=1.0, num_views=3), 8, MEAN3, STD3, **{**IDENTITY, "p_flip": 0.5}
    )
    views = vm(x, _gen(0))
    assert len(views) == 3
    flips = []
    for v in views:  # row i of every view must come from image i (no mixing across the view stack)
        same = torch.isclose(v, _normalized(x, MEAN3, STD3), atol=1e-5).flatten(1).all(1)
        mirrored = torch.isclose(v, _normalized(x.flip(-1), MEAN3, STD3), atol=1e-5).flatten(1).all(1)
        assert torch.all(same ^ mirrored)
        assert 0.4 < mirrored.float().mean() < 0.6
        flips.append(mirrored)
    assert not torch.equal(flips[0], flips[1])  # independent draws per view


def test_normalization_zero_mean_unit_std_on_the_data():
    from jepa_ray.config import DataConfig
    from jepa_ray.data import load_dataset

    s = load_dataset(DataConfig(dataset="digits"))
    ident = ViewMaker(ViewConfig(recipe="digits", crop_scale_min=1.0), 8, s.mean, s.std, **IDENTITY)
    v = ident(s.train_x, _gen(0))[0]
    assert abs(float(v.mean())) < 1e-4 and abs(float(v.std(unbiased=False)) - 1) < 1e-4
    augmented = ViewMaker(ViewConfig(recipe="digits"), 8, s.mean, s.std)(s.train_x, _gen(0))[0]
    assert abs(float(augmented.mean())) < 0.25


def test_grayscale_fires_gives_equal_channels():
    vm = ViewMaker(ViewConfig(recipe="cifar"), 16, MEAN3, STD3, p_grayscale=1.0)
    for v in vm(_images(32, 3, 16), _gen(0)):
        pixels = v * torch.tensor(STD3).view(1, 3, 1, 1) + torch.tensor(MEAN3).view(1, 3, 1, 1)
        torch.testing.assert_close(pixels[:, 0], pixels[:, 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(pixels[:, 0], pixels[:, 2], atol=1e-5, rtol=0)
    colored = ViewMaker(ViewConfig(recipe="cifar"), 16, MEAN3, STD3, p_grayscale=0.0)(_images(32, 3, 16), _gen(0))[0]
    assert not torch.allclose(colored[:, 0] * STD3[0] + MEAN3[0], colored[:, 1] * STD3[1] + MEAN3[1], atol=1e-3)


def test_solarize_and_noise_when_they_fire():
    x = _images(8, 3, 8)
    vm = ViewMaker(ViewConfig(recipe="cifar", crop_scale_min=1.0), 8, MEAN3, STD3, **{**IDENTITY, "p_solarize": 1.0})
    expected = (torch.where(x >= 128, 255 - x, x)).float()  # x/255 >= 0.5 <=> x >= 128 for uint8
    got = vm(x, _gen(0))[0] * torch.tensor(STD3).view(1, 3, 1, 1) + torch.tensor(MEAN3).view(1, 3, 1, 1)
    torch.testing.assert_close(got * 255, expected, atol=1e-3, rtol=0)
    gray = torch.full((64, 1, 16, 16), 0.5)
    noisy = ViewMaker(
        ViewConfig(recipe="digits", crop_scale_min=1.0),
        16,
        (0.0,),
        (1.0,),
        **{**IDENTITY, "p_noise": 1.0, "noise_std": 0.05},
    )(gray, _gen(0))[0]
    assert abs(float((noisy - 0.5).std()) - 0.05) < 0.003


def test_view_maker_runs_with_a_float_batch_and_measures_throughput():
    vm = ViewMaker(ViewConfig(recipe="imagenet"), 16, MEAN3, STD3)
    views = vm(torch.rand(4, 3, 20, 20), _gen(0))
    assert views[0].shape == (4, 3, 16, 16)
    assert measure_views_per_second(vm, _images(8, 3, 20), batch_size=12, repeats=1) > 0


def test_bad_arguments():
    with pytest.raises(ConfigError, match="recipe"):
        ViewMaker(ViewConfig(recipe="auto"), 8, (0.5,), (0.2,))
    with pytest.raises(ValueError, match="p_jump"):
        ViewMaker(ViewConfig(recipe="digits"), 8, (0.5,), (0.2,), p_jump=0.5)
    with pytest.raises(ValueError, match="p_grayscale"):
        ViewMaker(ViewConfig(recipe="cifar"), 8, MEAN3, STD3, p_grayscale=1.5)
    with pytest.raises(ValueError, match="mean/std"):
        ViewMaker(ViewConfig(recipe="cifar"), 8, MEAN3, STD3, num_channels=1)
    vm = ViewMaker(ViewConfig(recipe="cifar"), 8, MEAN3, STD3)
    with pytest.raises(ValueError, match=r"x: expected \(B, 3, H, W\)"):
        vm(_images(2, 1, 8), _gen(0))
    assert recipe_defaults("digits", 0.2).crop_scale == (0.5, 1.0) and recipe_defaults("digits", 0.2).p_flip == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_on_cuda_match_shapes_and_are_reproducible():
    vm = ViewMaker(ViewConfig(recipe="imagenet", num_local_views=2), 32, MEAN3, STD3)
    x = _images(64, 3, 32).cuda()
    a = vm(x, torch.Generator(device="cuda").manual_seed(0))
    b = vm(x, torch.Generator(device="cuda").manual_seed(0))
    c = vm(x, torch.Generator().manual_seed(0))  # a CPU generator also works (parameters are copied)
    assert all(v.is_cuda for v in a + c) and all(torch.equal(u, v) for u, v in zip(a, b))


class _ScriptedRows:
    """Stands in for the view rows' random draws: every sample jitters, factors and order keys
    come from the script in the order ViewMaker asks for them."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws = list(draws)

    def bernoulli(self, p: float) -> torch.Tensor:
        return torch.ones(self.draws[0].shape[0], dtype=torch.bool)

    def uniform(self, lo: float, hi: float) -> torch.Tensor:
        return self.draws.pop(0)


def test_random_jitter_order_applies_each_samples_permutation_like_torchvision():
    vm = ViewMaker(ViewConfig(recipe="cifar"), 7, MEAN3, STD3)
    assert vm.recipe.jitter_order == "random" and vm.recipe.interpolation == "bicubic"
    x = _rgb_batch(n=6)
    g = torch.Generator().manual_seed(4)
    factors = [
        1 + 0.4 * (2 * torch.rand(6, generator=g) - 1),
        1 + 0.4 * (2 * torch.rand(6, generator=g) - 1),
        1 + 0.2 * (2 * torch.rand(6, generator=g) - 1),
        0.1 * (2 * torch.rand(6, generator=g) - 1),
    ]
    keys = [torch.rand(6, generator=g) for _ in range(4)]
    out = vm._color_jitter(x.clone(), _ScriptedRows(factors + keys), rgb=True)
    order = torch.stack(keys, 1).argsort(1)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    assert len({tuple(o) for o in order.tolist()}) > 1  # the samples do not share one order
    for i in range(6):
        want = x[i : i + 1]
        for j in order[i].tolist():
            want = ops[j](want, float(factors[j][i]))
        torch.testing.assert_close(out[i : i + 1], want, atol=2e-5, rtol=0)


def test_bicubic_crops_stay_in_range():
    vm = ViewMaker(ViewConfig(recipe="cifar"), 16, MEAN3, STD3, p_color_jitter=0.0, p_grayscale=0.0, p_solarize=0.0)
    views = vm(_images(8, 3, 16), _gen(0))
    mean, std = torch.tensor(MEAN3).view(1, 3, 1, 1), torch.tensor(STD3).view(1, 3, 1, 1)
    raw = views[0] * std + mean
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
