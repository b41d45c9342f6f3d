"""K small fold models, one training step each: three ways (issue 16, item 4).

    python -m pytest bench/test_fold_models_bench.py --benchmark-only --benchmark-columns=median,iqr,rounds
    UNSEEN_FAST_BENCH_DEVICE=cuda python -m pytest bench/test_fold_models_bench.py --benchmark-only

The K = 4 fastnet fold models of a CIFAR-size run (batch 256 each, 32 px,
bf16 autocast where the device computes it natively), one SGD step of all
four per round:
- one after another (the CPU default: `train_many` trains the jobs in turn);
- on K CUDA streams from one thread (GPU only; `--gpus 1` runs them on
  streams from K threads);
- one grouped network: the K models as one module whose convolutions have
  groups=K (the K batches side by side in the channels), BatchNorm per
  channel is per model, SGD is elementwise, so it trains K independent
  models. A bench-only prototype, not package code: it is worth building
  only where it wins.
Ours (role) is the current default of the device; the summary prints the
others' time over ours.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unseen_fast.constants import resolve_amp
from unseen_fast.models import FastNet

DEVICE = os.environ.get("UNSEEN_FAST_BENCH_DEVICE", "cpu")
K, BATCH, SIZE, CLASSES = 4, 256, 32, 10
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("UNSEEN_FAST_BENCH_DEVICE=cuda but torch sees no GPU", allow_module_level=True)


class GroupedFastNet(nn.Module):
    """K FastNets as one module: every layer's channels are K blocks."""

    def __init__(self, k: int, num_classes: int, widths=(32, 64, 128)):
        super().__init__()
        stem = widths[0] // 2
        layers = [nn.Conv2d(3 * k, stem * k, 3, padding=1, bias=False, groups=k), nn.BatchNorm2d(stem * k), nn.GELU()]
        channels = stem
        for width in widths:
            layers += [nn.Conv2d(channels * k, width * k, 3, padding=1, bias=False, groups=k), nn.MaxPool2d(2),
                       nn.BatchNorm2d(width * k), nn.GELU(),
                       nn.Conv2d(width * k, width * k, 3, padding=1, bias=False, groups=k),
                       nn.BatchNorm2d(width * k), nn.GELU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv1d(channels * k, num_classes * k, 1, bias=False, groups=k)
        self.k = k

    def forward(self, x):  # (B, 3K, H, W) -> (B, K, classes)
        pooled = torch.amax(self.features(x), dim=(2, 3)).unsqueeze(-1)
        return self.head(pooled).squeeze(-1).view(x.shape[0], self.k, -1)


def _autocast():
    dtype = torch.bfloat16 if resolve_amp("auto", DEVICE) == "bf16" else None
    return torch.autocast(torch.device(DEVICE).type, dtype=dtype, enabled=dtype is not None)


def _separate():
    models = [FastNet(CLASSES).to(DEVICE, memory_format=torch.channels_last) for _ in range(K)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True) for m in models]
    batches = [torch.randn(BATCH, 3, SIZE, SIZE, device=DEVICE).to(memory_format=torch.channels_last)
               for _ in range(K)]
    labels = [torch.randint(0, CLASSES, (BATCH,), device=DEVICE) for _ in range(K)]

    def step(k):
        with _autocast():
            logits = models[k](batches[k])
        F.cross_entropy(logits.float(), labels[k]).backward()
        optimizers[k].step()
        optimizers[k].zero_grad(set_to_none=True)
    return step


def one_after_another():
    step = _separate()
    return lambda: [step(k) for k in range(K)]


def on_streams():
    step = _separate()
    streams = [torch.cuda.Stream() for _ in range(K)]

    def round_():
        main = torch.cuda.current_stream()
        for k, stream in enumerate(streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                step(k)
        for stream in streams:
            main.wait_stream(stream)
    return round_


def grouped():
    model = GroupedFastNet(K, CLASSES).to(DEVICE, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batch = torch.randn(BATCH, 3 * K, SIZE, SIZE, device=DEVICE).to(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (BATCH * K,), device=DEVICE)

    def round_():
        with _autocast():
            logits = model(batch)
        # the sum of the K models' mean losses: each model's gradient is its own
        F.cross_entropy(logits.float().reshape(-1, CLASSES), labels, reduction="sum").div(BATCH).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return round_


WAYS = {"one after another": one_after_another, "grouped convolutions": grouped}
if DEVICE == "cuda":
    WAYS["CUDA streams, one thread"] = on_streams
OURS = "CUDA streams, one thread" if DEVICE == "cuda" else "one after another"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("way", list(WAYS))
def test_fold_models_step(benchmark, way):
    benchmark.group = f"{K} fastnet fold models, one step of batch {BATCH} each, {DEVICE}"
    benchmark.extra_info.update(items=K * BATCH, unit="img")
    if way == OURS:
        benchmark.extra_info["role"] = "ours"
    round_ = WAYS[way]()
    for _ in range(3):  # warm-up: allocator, cuDNN/oneDNN plans
        round_()
    _sync()

    def timed():
        round_()
        _sync()
    benchmark.pedantic(timed, rounds=10, iterations=2)
