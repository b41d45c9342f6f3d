"""Augmentation, defined once and realised three ways (torchvision per
sample, DALI per batch, batched tensor ops for the decoded cache).

Small images (image_size <= SMALL_IMAGE_MAX, CIFAR-like): resize to a square
image_size if needed; train adds zero-pad-and-crop (pad = image_size // 8)
and a horizontal flip. Large images (ImageNet-like): train is
random-resized-crop (area 8%-100%, aspect 3/4-4/3) + flip; eval resizes the
shorter side to image_size / 0.875 and center-crops image_size.
Every backend hands uint8 pixels to :func:`finish_batch`, which normalizes
on the target device, so normalization is identical everywhere.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from unseen_fast.constants import SMALL_IMAGE_MAX
from unseen_fast.data.lut import apply_lut

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet statistics, in uint8 units
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
RRC_AREA = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # 224 of 256
RRC_ATTEMPTS = 10  # random-resized-crop boxes tried per sample before the whole image


@dataclass(frozen=True)
class Augment:
    """What to do to each image. ``side`` is the square size the decoded
    cache stores (image_size for small images, the eval resize otherwise)."""

    image_size: int
    train: bool

    @property
    def small(self) -> bool:
        return self.image_size <= SMALL_IMAGE_MAX

    @property
    def pad(self) -> int:
        return self.image_size // 8

    @property
    def resize_size(self) -> int:
        return self.image_size if self.small else int(round(self.image_size / EVAL_CROP_FRACTION))

    @property
    def side(self) -> int:
        return self.resize_size


def torchvision_transform(aug: Augment):
    """Per-sample torchvision.transforms.v2 pipeline on (3, H, W) uint8."""
    from torchvision.transforms import v2

    size = aug.image_size
    if aug.small:
        steps = [v2.Resize((size, size), antialias=True)]
        if aug.train:
            steps += [v2.RandomCrop(size, padding=aug.pad, fill=0), v2.RandomHorizontalFlip()]
    elif aug.train:
        steps = [v2.RandomResizedCrop(size, scale=RRC_AREA, ratio=RRC_RATIO, antialias=True),
                 v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(aug.resize_size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(steps)


def cache_pixels(image: torch.Tensor, aug: Augment) -> torch.Tensor:
    """What the decoded cache stores for one (3, H, W) uint8 image: a square
    ``aug.side`` image, (side, side, 3) uint8 HWC. Small images are resized to
    the square; large ones resized (shorter side) and center-cropped, so an
    eval center crop of it equals the torchvision eval transform."""
    from torchvision.transforms.v2 import functional as F

    side = aug.side
    if aug.small:
        image = F.resize(image, [side, side], antialias=True)
    else:
        image = F.center_crop(F.resize(image, side, antialias=True), [side, side])
    return image.permute(1, 2, 0)


def cache_augment(batch: torch.Tensor, aug: Augment, generator: torch.Generator | None) -> torch.Tensor:
    """Augment a batch from the decoded cache on its device.

    batch: (B, side, side, 3) uint8. Returns (B, 3, S, S) uint8 in
    channels_last memory, S = aug.image_size.
    """
    params = augment_params(aug, batch.shape[0], generator, batch.device)
    return apply_augment(batch.permute(0, 3, 1, 2), aug, params)  # NCHW view of NHWC memory


def augment_params(aug: Augment, count: int, generator: torch.Generator | None, device) -> dict:
    """The random numbers of ``count`` samples' augmentation, uniform in
    [0, 1), drawn in a fixed order: a batch's worth (cache backend) or an
    epoch's worth sliced per batch (resident backend)."""
    if not aug.train:
        return {}
    if aug.small:
        params = dict(shift=_rand((count, 2), generator, device))
    else:
        params = dict(area=_rand((count, RRC_ATTEMPTS), generator, device),
                      ratio=_rand((count, RRC_ATTEMPTS), generator, device),
                      x0=_rand((count,), generator, device), y0=_rand((count,), generator, device))
    params["flip"] = _rand((count,), generator, device)
    return params


def apply_augment(images: torch.Tensor, aug: Augment, params: dict) -> torch.Tensor:
    """(B, 3, side, side) uint8 -> (B, 3, S, S) uint8 channels_last with the
    given random numbers (see :func:`augment_params`)."""
    size = aug.image_size
    if not aug.train:
        if images.shape[-1] == size:
            return images
        offset = int(round((images.shape[-1] - size) / 2.0))  # as torchvision's center_crop
        return images[..., offset:offset + size, offset:offset + size]
    if aug.small:
        images = _pad_crop(images, aug.pad, params["shift"])
    else:
        images = _random_resized_crop(images, size, params)
    return _random_flip(images, params["flip"])


@functools.lru_cache(maxsize=16)
def normalization_table(dtype: torch.dtype, device) -> torch.Tensor:
    """(256, 3) normalized value of every uint8 level per channel, computed
    with the same float32 formula as ``(x - mean) / std`` then cast."""
    levels = torch.arange(256, dtype=torch.float32).view(256, 1)
    inv_std = torch.tensor([1 / s for s in STD])
    return ((levels - torch.tensor(MEAN)) * inv_std).to(device=device, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without waiting for it: from the host to a
    GPU through pinned memory, since a copy from pageable memory first waits
    for the stream to drain (non_blocking or not)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()  # the caching host allocator keeps it until the copy is done
    return tensor.to(device, non_blocking=True)


def finish_batch(images: torch.Tensor, *, dtype: torch.dtype, device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalized ``dtype`` on ``device``, channels_last.

    One table lookup per element (unseen_fast.ops.apply_lut): on CPU this
    is about 3x faster than the float formula and gives identical values.
    """
    images = to_device(images, torch.device(device))
    nhwc = images.permute(0, 2, 3, 1)  # free when the batch is already channels_last
    out = apply_lut(nhwc, normalization_table(dtype, images.device))  # the table is built once per device
    return out.permute(0, 3, 1, 2)


def _rand(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device)


def _random_flip(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    flip = u < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def _pad_crop(images: torch.Tensor, pad: int, u: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back at a random offset per sample (``u``:
    (B, 2) uniforms), as one gather (no Python loop over the batch)."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    shifts = (u * (2 * pad + 1)).long().clamp_(max=2 * pad)
    rows = (shifts[:, 0:1] + torch.arange(h, device=images.device)).view(b, 1, h, 1)
    cols = (shifts[:, 1:2] + torch.arange(w, device=images.device)).view(b, 1, 1, w)
    batch_idx = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chan = torch.arange(3, device=images.device).view(1, 3, 1, 1)
    out = padded[batch_idx, chan, rows, cols]
    return out.contiguous(memory_format=torch.channels_last)


def _random_resized_crop(images: torch.Tensor, size: int, params: dict) -> torch.Tensor:
    """torchvision's RandomResizedCrop over a batch of equal-size images,
    with bilinear crop-and-resize by roi_align."""
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    x0, y0, cw, ch = _rrc_boxes(torch.full((b,), float(h), device=images.device),
                                torch.full((b,), float(w), device=images.device), params)
    boxes = torch.stack([torch.arange(b, device=images.device, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(images.float(), boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)


def augment_whole_images(images: list[torch.Tensor], aug: Augment, generator: torch.Generator | None) -> torch.Tensor:
    """A training batch of large images of any sizes ((3, H, W) uint8 each,
    on one device): random-resized crops of each whole image, as
    torchvision and DALI take them (the decoded cache's come from its center
    square), then flips; (B, 3, S, S) uint8 channels_last. The random
    numbers are the cache's (augment_params); roi_align samples each output
    pixel adaptively (about one sample per source pixel), so a large crop
    is averaged, not aliased."""
    from torchvision.ops import roi_align

    device = images[0].device
    params = augment_params(aug, len(images), generator, device)
    h = torch.tensor([image.shape[1] for image in images], dtype=torch.float32, device=device)
    w = torch.tensor([image.shape[2] for image in images], dtype=torch.float32, device=device)
    x0, y0, cw, ch = _rrc_boxes(h, w, params)
    boxes = torch.stack([torch.zeros_like(x0), x0, y0, x0 + cw, y0 + ch], 1)
    crops = torch.cat([roi_align(image[None].float(), boxes[k:k + 1], output_size=aug.image_size,
                                 spatial_scale=1.0, sampling_ratio=0, aligned=True)
                       for k, image in enumerate(images)])
    crops = crops.round_().clamp_(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    return _random_flip(crops, params["flip"])


def _rrc_boxes(h: torch.Tensor, w: torch.Tensor, params: dict):
    """torchvision's RandomResizedCrop box sampling, vectorized: for images
    of heights ``h`` and widths ``w`` ((B,) float), the first valid of
    RRC_ATTEMPTS tries, else the whole image; (x0, y0, width, height)."""
    area = (h * w).unsqueeze(1) * (RRC_AREA[0] + (RRC_AREA[1] - RRC_AREA[0]) * params["area"])
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * params["ratio"])
    cw = torch.sqrt(area * ratio).round()
    ch = torch.sqrt(area / ratio).round()
    ok = (cw <= w.unsqueeze(1)) & (ch <= h.unsqueeze(1)) & (cw > 0) & (ch > 0)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(h, -1).long())
    pick = first.clamp(min=0).view(-1, 1)
    cw = torch.where(first >= 0, cw.gather(1, pick).squeeze(1), w)
    ch = torch.where(first >= 0, ch.gather(1, pick).squeeze(1), h)
    x0 = ((w - cw + 1) * params["x0"]).floor()
    y0 = ((h - ch + 1) * params["y0"]).floor()
    return x0, y0, cw, ch
