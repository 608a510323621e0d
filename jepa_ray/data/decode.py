"""Encoded images (JPEG, PNG, ... from parquet tables or image folders) decoded to uint8 tensors
of one square size, in parallel threads."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def _decode_workers(pixels: int, n: int) -> int:
    """Decoding threads: small images are GIL-bound past a few threads (the best pool measured:
    2 threads for 32x32 JPEGs, 8 for 224x224). Capped by torch's thread count, which follows the
    CPUs Ray gives a worker."""
    cap = 2 if pixels < 64 * 64 else 4 if pixels < 96 * 96 else 8
    return 1 if n < 256 else max(1, min(cap, torch.get_num_threads()))


def decode_blob(blob: torch.Tensor) -> torch.Tensor:
    """One encoded image (1-D uint8 tensor) -> uint8 RGB tensor (3, H, W). torchvision's decoder
    reads JPEG/PNG/GIF/WebP; other formats (BMP, TIFF, PPM, ...) fall back to PIL."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(blob, mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(blob.numpy().tobytes())) as img:
                arr = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode {len(blob)} bytes as an image ({err})") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_blobs(
    blobs: list[torch.Tensor], image_size: int = 0, describe: Callable[[int], str] = lambda i: f"image {i}"
) -> torch.Tensor:
    """Decode encoded images into one uint8 tensor (N, 3, S, S); see `stack_square` for S.
    A failure raises ValueError naming `describe(index)` (a file or a table row)."""
    if not blobs:
        raise ValueError("decode_blobs: no images")

    def decode_range(start: int, stop: int) -> list[torch.Tensor]:
        out = []
        for i in range(start, stop):
            try:
                out.append(decode_blob(blobs[i]))
            except ValueError as err:
                raise ValueError(f"{describe(i)}: {err}") from None
        return out

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec (one warning per call).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        images = decode_range(0, 1)
        workers = _decode_workers(images[0].shape[-1] * images[0].shape[-2], len(blobs))
        if workers > 1:
            chunk = -(-len(blobs) // (4 * workers))
            with ThreadPoolExecutor(workers) as pool:
                parts = pool.map(lambda i: decode_range(i, min(i + chunk, len(blobs))), range(1, len(blobs), chunk))
                images += [img for part in parts for img in part]
        else:
            images += decode_range(1, len(blobs))
    return stack_square(images, image_size)


def stack_square(images: list[torch.Tensor], image_size: int = 0) -> torch.Tensor:
    """Stack (C, H, W) uint8 images into (N, C, S, S). S = image_size, or when 0 the shorter side
    of the first image; images of another size or shape are resized (shorter side to S,
    antialiased) and center-cropped to S x S."""
    side = image_size or min(images[0].shape[-2:])
    out = torch.empty((len(images), images[0].shape[0], side, side), dtype=torch.uint8)
    for i, img in enumerate(images):
        out[i] = img if img.shape[-2:] == (side, side) else fit_square(img[None], side)[0]
    return out


def fit_square(x: torch.Tensor, side: int) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) so the shorter side is `side` (bilinear, antialiased), then
    center-crop to side x side."""
    from torchvision.transforms.v2 import functional as TF

    if x.shape[-2:] != (side, side):
        if min(x.shape[-2:]) != side:
            x = TF.resize(x, [side], antialias=True)
        x = TF.center_crop(x, [side, side])
    return x
