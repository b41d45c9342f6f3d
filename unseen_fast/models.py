"""Model registry: torchvision ResNets (ImageNet stem, or a 3x3 stem without
max-pool for small images) and a small fast CNN for CPU runs."""
from __future__ import annotations

import logging

import torch
from torch import nn

from unseen_fast.constants import SMALL_IMAGE_MAX
from unseen_fast.errors import UserError



class FastNet(nn.Module):
    """A small CNN in the style of airbench (Keller Jordan's CIFAR-10
    speedruns): conv-pool-BN-GELU blocks at three widths, max-pooled head.
    Default on CPU: a 32px CIFAR-10 epoch takes seconds, not minutes."""

    def __init__(self, num_classes: int, widths=(32, 64, 128)):
        super().__init__()
        stem = widths[0] // 2
        layers = [nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.GELU()]
        channels = stem
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(width), nn.GELU(),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes, bias=False)

    def forward(self, x):
        x = self.features(x)
        return self.head(torch.amax(x, dim=(2, 3)))


def _resnet(depth: int):
    def build(num_classes: int, small_input: bool) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
        if small_input:  # CIFAR-style stem: 3x3 stride 1, no max-pool
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        return model
    return build


ARCHS = {
    "fastnet": lambda num_classes, small_input: FastNet(num_classes),
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "resnet50": _resnet(50),
}


def default_arch(device) -> str:
    """fastnet on CPU, resnet18 on a GPU."""
    return "resnet18" if torch.device(device).type == "cuda" else "fastnet"


def build_model(arch: str, num_classes: int, *, image_size: int, small_input: bool | None = None) -> nn.Module:
    """A fresh model in channels_last memory.

    ``small_input`` (3x3 stem, no max-pool) defaults to image_size <= 64.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if small_input is None:
        small_input = image_size <= SMALL_IMAGE_MAX
    return ARCHS[arch](num_classes, small_input).to(memory_format=torch.channels_last)


def default_image_size(index) -> int:
    """Training size: the native size for small images (CIFAR, digits), else
    224; native = the median size of a sample of the files (logged)."""
    height, width = index.native_size()
    size = max(height, width) if max(height, width) <= SMALL_IMAGE_MAX else 224
    logging.getLogger("unseen_fast.models").info(
        "image size %d px: the median native size of the sampled images is %dx%d (--image-size to change)",
        size, height, width)
    return size
