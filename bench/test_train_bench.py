"""Training throughput on CPU, in one run:

    python -m pytest bench/test_train_bench.py --benchmark-only --benchmark-columns=median,iqr,rounds

- a training step (forward, fused loss, backward, SGD) of fastnet and
  resnet18 (small-image stem) at 32x32, batch 256: channels_last with the
  precision ``amp="auto"`` picks on this CPU (ours: bf16 autocast where
  oneDNN computes bf16 natively, else float32) vs channels_last + bf16
  autocast and channels_last float32 (whatever the CPU) and NCHW float32,
  and ours under torch.compile (the TrainConfig.compile option; its
  first-call compile time is excluded);
- the SGD step alone (Nesterov, weight decay groups): torch's fused kernel,
  which the trainer uses, vs its default (for-loop on CPU);
- the fused loss with statistics vs F.cross_entropy plus a separate softmax
  pass for the same statistics (forward + backward);
- K=4 fastnet models on digits through train_many with 2 worker processes
  vs one after another in-process (using all cores).
"""
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseen_fast.constants import cpu_has_native_bf16, resolve_amp
from unseen_fast.data import ImageIndex
from unseen_fast.fused_loss import cross_entropy_with_stats
from unseen_fast.models import build_model
from unseen_fast.parallel import TrainJob, train_many
from unseen_fast.train import TrainConfig, parameter_groups

BATCH = 256


def make_step(arch, channels_last, bf16, compiled=False):
    torch.manual_seed(0)
    model = build_model(arch, 10, image_size=32)
    if not channels_last:
        model = model.to(memory_format=torch.contiguous_format)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(BATCH, 3, 32, 32)
    if channels_last:
        images = images.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(images)
        loss, _ = cross_entropy_with_stats(logits, labels)
        loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


AUTO_BF16 = resolve_amp("auto", "cpu") == "bf16"  # what TrainConfig(amp="auto") trains with here
STEP_VARIANTS = {  # name: (channels_last, bf16 autocast, torch.compile)
    f"channels_last + amp auto = {'bf16' if AUTO_BF16 else 'float32'} (ours)": (True, AUTO_BF16, False),
    "channels_last + bf16 autocast": (True, True, False),
    "channels_last float32": (True, False, False),
    "NCHW float32": (False, False, False),
    "ours + torch.compile": (True, AUTO_BF16, True),
}


@pytest.mark.parametrize("arch", ["fastnet", "resnet18"])
@pytest.mark.parametrize("variant", list(STEP_VARIANTS))
def test_train_step(benchmark, arch, variant):
    benchmark.group = f"train step {arch} 32x32 batch {BATCH}"
    benchmark.extra_info.update(items=BATCH, unit="img", native_bf16=cpu_has_native_bf16())
    if "(ours)" in variant:
        benchmark.extra_info["role"] = "ours"
    channels_last, bf16, compiled = STEP_VARIANTS[variant]
    step = make_step(arch, channels_last, bf16, compiled=compiled)
    step()
    step()  # the compiled variant compiles on the first calls
    benchmark.pedantic(step, rounds=3 if arch == "resnet18" else 5, iterations=1)


@pytest.mark.parametrize("arch", ["fastnet", "resnet18"])
@pytest.mark.parametrize("variant", ["fused SGD (ours)", "torch default SGD"])
def test_sgd_step(benchmark, arch, variant):
    benchmark.group = f"SGD step {arch}"
    if "ours" in variant:
        benchmark.extra_info["role"] = "ours"
    torch.manual_seed(0)
    model = build_model(arch, 10, image_size=32)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer = torch.optim.SGD(parameter_groups(model, 5e-4), lr=0.01, momentum=0.9, nesterov=True,
                                fused=True if "ours" in variant else None)
    optimizer.step()  # the momentum buffers exist from here on
    benchmark.pedantic(optimizer.step, rounds=20, iterations=5)


def loss_with_separate_stats(logits, labels):
    loss = F.cross_entropy(logits, labels, reduction="none")
    with torch.no_grad():  # what a user adds for the statistics: another softmax pass
        p = torch.softmax(logits.float(), 1)
        top2 = p.topk(2, 1).values
        stats = torch.stack([p.gather(1, labels[:, None]).squeeze(1), (p.argmax(1) == labels).float(),
                             1 - (top2[:, 0] - top2[:, 1]), torch.special.entr(p).sum(1)], 1)
    return loss, stats


def plain_cross_entropy(logits, labels):  # the floor: no statistics at all
    return F.cross_entropy(logits, labels, reduction="none"), None


LOSS_VARIANTS = {"fused loss with stats (ours)": cross_entropy_with_stats,
                 "F.cross_entropy + softmax stats": loss_with_separate_stats,
                 "F.cross_entropy alone": plain_cross_entropy}


@pytest.mark.parametrize("variant", list(LOSS_VARIANTS))
@pytest.mark.parametrize("shape", [(4096, 1000), (65536, 10)])
def test_loss(benchmark, variant, shape):
    n, c = shape
    benchmark.group = f"loss forward+backward {n} x {c} float32"
    if "ours" in variant:
        benchmark.extra_info["role"] = "ours"
    logits = torch.randn(n, c, generator=torch.Generator().manual_seed(0)).requires_grad_()
    labels = torch.randint(0, c, (n,))
    fn = LOSS_VARIANTS[variant]

    def run():
        loss, _ = fn(logits, labels)
        loss.mean().backward()
        logits.grad = None
    run()
    benchmark.pedantic(run, rounds=5, iterations=1)


@pytest.mark.parametrize("variant", ["train_many, 2 worker processes (ours)", "one after another"])
def test_train_many(benchmark, tmp_path, variant):
    benchmark.group = "K=4 fastnet models on digits, 3 epochs each"
    digits = ImageIndex.digits()
    workers = 2 if "ours" in variant else None
    # Workers use one thread each; one after another uses every core.
    config = TrainConfig(epochs=3, batch_size=64, image_size=8, threads=1 if workers else os.cpu_count())
    if workers:
        benchmark.extra_info["role"] = "ours"
    rounds = iter(range(100))

    def run():
        folder = tmp_path / str(next(rounds))
        jobs = [TrainJob(f"fold{k}", np.arange(k, len(digits), 4), str(folder / f"fold{k}"), seed=k)
                for k in range(4)]
        train_many(jobs, config, digits, nproc=workers)
        shutil.rmtree(folder)
    benchmark.pedantic(run, rounds=2, iterations=1)
