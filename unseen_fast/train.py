"""The training loop: read it top to bottom. One model, one set of sample
ids, checkpoints after every epoch, resumable to the same weights."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unseen_fast.data import ImageIndex, make_loader
from unseen_fast.dynamics import DynamicsRecorder
from unseen_fast.fused_loss import cross_entropy_with_stats
from unseen_fast.models import build_model

log = logging.getLogger("unseen_fast.train")
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    arch: str = "fastnet"            # models.ARCHS name
    epochs: int = 10                 # passes over the training ids
    batch_size: int = 256            # per step (per rank under DDP)
    lr: float = 0.05                 # peak learning rate (SGD; tuned for fastnet, batch 256)
    momentum: float = 0.9            # Nesterov momentum
    weight_decay: float = 5e-4       # on conv/linear weights only; none on norms and biases
    label_smoothing: float = 0.1     # target (1 - eps) onehot + eps / C
    schedule: str = "onecycle"       # "onecycle" (linear up, linear down) or "cosine"
    warmup_epochs: float = 1.0       # linear warm-up length, stepped per iteration
    amp: str = "bf16"                # "bf16" autocast, "fp16" autocast + GradScaler, or "off"
    compile: bool = False            # torch.compile the model
    image_size: int = 32             # training crop size
    seed: int = 0                    # model init and data order: (seed, epoch)
    backend: str = "auto"            # data backend (see unseen_fast.data.make_loader)
    threads: int | None = None       # torch CPU threads (same count = bitwise same CPU results)
    record_dynamics: bool = False    # keep per-sample statistics per epoch (baselines need them)
    record_probabilities: bool = False  # with record_dynamics: each sample's softmax per epoch (TDDS), float16
    # Precise BatchNorm: after the last epoch, re-estimate every BatchNorm's running statistics from this
    # many training samples (eval transform, the inputs scoring sees); 0 keeps the momentum averages, which
    # on a small fold (few steps) still sit near their initial values and make eval-mode outputs garbage.
    bn_recalibration_samples: int = 50_000

    def __post_init__(self):
        if self.schedule not in ("onecycle", "cosine"):
            raise ValueError(f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}")
        if self.amp not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp must be 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if self.bn_recalibration_samples < 0:
            raise ValueError(f"bn_recalibration_samples must be >= 0, got {self.bn_recalibration_samples}")


def parameter_groups(model: nn.Module, weight_decay: float):
    """Weight decay on conv and linear weights; none on norm weights and biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim > 1 else no_decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def steps_per_epoch_for(num_samples: int, batch_size: int) -> int:
    """Optimizer steps per epoch: full batches only (one batch if fewer samples)."""
    return max(1, num_samples // batch_size)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1 - progress)


def amp_dtype(amp: str) -> torch.dtype:
    """The autocast dtype of an ``amp`` setting ("bf16", "fp16" or "off")."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[amp]


def train(config: TrainConfig, index: ImageIndex, ids, out_dir, *, device="cpu", progress: bool = False,
          loader_kwargs: dict | None = None, model_factory=None, ddp_group=None) -> nn.Module:
    """Train one model on ``ids`` of ``index``; checkpoint to ``out_dir``.

    A checkpoint already in ``out_dir`` (same config) is resumed from the
    epoch after it; a finished one is loaded and returned without training.
    ``ddp_group`` (a torch.distributed process group): train data-parallel
    over its ranks, each reading its share of the ids with ``batch_size``
    per rank; the group's first rank writes the checkpoints.
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    ids = np.asarray(ids, dtype=np.int64)
    loader_kwargs = dict(loader_kwargs or {})
    group_rank, group_size = 0, 1
    if ddp_group is not None:
        import torch.distributed as dist

        group_rank, group_size = dist.get_rank(ddp_group), dist.get_world_size(ddp_group)
        loader_kwargs.update(rank=group_rank, world_size=group_size)

    # Model, optimizer, schedule: everything a checkpoint restores.
    torch.manual_seed(config.seed)
    model = _new_model(config, index.num_classes, model_factory).to(device)
    optimizer = torch.optim.SGD(parameter_groups(model, config.weight_decay), lr=config.lr,
                                momentum=config.momentum, nesterov=True)
    per_rank = -(-len(ids) // group_size)  # training shards are padded to equal length
    steps_per_epoch = steps_per_epoch_for(per_rank, config.batch_size)
    drop_last = per_rank >= config.batch_size  # full batches: a last batch of 1 breaks BatchNorm
    total_steps = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, config.schedule))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    start_epoch = _resume(out_dir, config, model, optimizer, scheduler, scaler)
    recorder = _open_recorder(config, out_dir, index, group_rank, ddp_group)
    step_model = torch.compile(model) if config.compile else model
    if ddp_group is not None:  # gradients averaged over the group after each backward
        step_model = nn.parallel.DistributedDataParallel(
            step_model, process_group=ddp_group, device_ids=[device.index] if device.type == "cuda" else None)
    dtype = amp_dtype(config.amp)

    for epoch in range(start_epoch, config.epochs):
        model.train()
        loader = make_loader(index, ids, train=True, batch_size=config.batch_size, image_size=config.image_size,
                             backend=config.backend, device=device, seed=config.seed, epoch=epoch,
                             dtype=dtype if config.amp == "bf16" else torch.float32, drop_last=drop_last,
                             **loader_kwargs)
        if epoch == start_epoch:
            log.info("training on %d samples with the %s data backend", len(ids), loader.backend)
        start, seen, loss_sum, correct_sum = time.perf_counter(), 0, 0.0, 0.0
        for images, labels, sample_ids in _progress(loader, progress, f"epoch {epoch + 1}/{config.epochs}"):
            with torch.autocast(device.type, dtype=dtype, enabled=config.amp != "off"):
                logits = step_model(images)
            loss, stats = cross_entropy_with_stats(logits, labels, label_smoothing=config.label_smoothing)
            scaler.scale(loss.mean()).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if recorder is not None:
                probs = torch.softmax(logits.detach().float(), 1) if config.record_probabilities else None
                recorder.record(epoch, sample_ids, stats, probs)
            seen += len(labels)
            loss_sum += float(loss.detach().sum())
            correct_sum += float(stats[:, 1].sum())
        if recorder is not None:
            recorder.flush()
        elapsed = time.perf_counter() - start
        log.info("epoch %d/%d: loss %.4f, train acc %.4f, %.0f img/s", epoch + 1, config.epochs,
                 loss_sum / max(seen, 1), correct_sum / max(seen, 1), seen / elapsed)
        if group_rank == 0 and epoch + 1 == config.epochs:
            # every id on this one rank, whatever torch.distributed's world is
            eval_kwargs = dict(loader_kwargs, rank=0, world_size=1)
            recalibrate_batchnorm(model, index, ids, config, device=device, loader_kwargs=eval_kwargs)
        if group_rank == 0:
            _save_checkpoint(out_dir, config, model, optimizer, scheduler, scaler, epoch + 1)
        if ddp_group is not None:
            torch.distributed.barrier(ddp_group)  # nobody runs ahead of a checkpoint
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, index: ImageIndex, ids, config: TrainConfig, *, device="cpu",
                          loader_kwargs: dict | None = None) -> int:
    """Precise BatchNorm: replace every BatchNorm's running mean and variance
    by their average over equal-size batches of (up to
    ``config.bn_recalibration_samples``) training samples under the
    evaluation transform, the inputs the model is scored on. Returns the
    number of samples used (0: no BatchNorm, or recalibration disabled)."""
    from torch.optim.swa_utils import update_bn

    has_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    limit = config.bn_recalibration_samples
    if not has_norm or limit == 0 or len(ids) == 0:
        return 0
    rng = np.random.Generator(np.random.PCG64([config.seed, 5]))
    chosen = rng.permutation(np.asarray(ids, dtype=np.int64))[:limit]
    batch = min(config.batch_size, len(chosen))
    chosen = np.sort(chosen[:len(chosen) // batch * batch])  # equal batches: each weighs the same in the mean
    dtype = amp_dtype(config.amp)
    loader = make_loader(index, chosen, train=False, batch_size=batch, image_size=config.image_size,
                         backend=config.backend, device=device,
                         dtype=dtype if config.amp == "bf16" else torch.float32, **(loader_kwargs or {}))
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=config.amp != "off"):
        update_bn(loader, model, device=torch.device(device))  # resets the statistics, cumulative average
    log.info("BatchNorm statistics re-estimated from %d training samples", len(chosen))
    return len(chosen)


def _open_recorder(config: TrainConfig, out_dir: Path, index: ImageIndex, group_rank: int, ddp_group):
    """The dynamics recorder; under DDP the group's first rank creates the
    arrays and the others open them after a barrier (each rank then writes
    the ids of its own shard)."""
    if not config.record_dynamics:
        return None

    def open_it():
        return DynamicsRecorder(out_dir / "dynamics", epochs=config.epochs, num_samples=len(index),
                                num_classes=index.num_classes if config.record_probabilities else None)

    recorder = open_it() if group_rank == 0 else None
    if ddp_group is not None:
        torch.distributed.barrier(ddp_group)
    return recorder if recorder is not None else open_it()


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, unit="batch", leave=False)


def _save_checkpoint(out_dir: Path, config, model, optimizer, scheduler, scaler, epochs_done: int) -> None:
    state = dict(config=dataclasses.asdict(config), epochs_done=epochs_done, model=model.state_dict(),
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                 torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state())
    tmp = out_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out_dir / CHECKPOINT)  # a crash mid-write keeps the previous checkpoint


def _resume(out_dir: Path, config, model, optimizer, scheduler, scaler) -> int:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state["config"]
    if saved != dataclasses.asdict(config):
        diff = {k: (saved.get(k), v) for k, v in dataclasses.asdict(config).items() if saved.get(k) != v}
        raise ValueError(f"{path} was written with a different training config (saved, now): {diff}; "
                         f"use another output folder or the same settings")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    log.info("resuming %s after epoch %d", out_dir, state["epochs_done"])
    return state["epochs_done"]


def _new_model(config: TrainConfig, num_classes: int, model_factory=None) -> nn.Module:
    """config.arch from the registry, or the user's factory(num_classes)."""
    if model_factory is not None:
        return model_factory(num_classes).to(memory_format=torch.channels_last)
    return build_model(config.arch, num_classes, image_size=config.image_size)


def load_model(out_dir, num_classes: int, *, device="cpu", model_factory=None) -> nn.Module:
    """The model of a checkpoint written by :func:`train`, in eval mode."""
    state = torch.load(Path(out_dir) / CHECKPOINT, map_location="cpu", weights_only=False)
    model = _new_model(TrainConfig(**state["config"]), num_classes, model_factory)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def predict_logits(model: nn.Module, index: ImageIndex, ids, *, image_size: int, device="cpu",
                   batch_size: int = 512, amp: str = "bf16", **loader_kwargs) -> torch.Tensor:
    """(len(ids), C) float32 logits, row i for ids[i] (evaluation transform)."""
    ids = np.asarray(ids, dtype=np.int64)
    device = torch.device(device)
    model.eval()
    dtype = amp_dtype(amp)
    out = torch.empty(len(ids), model_classes(model), dtype=torch.float32, device=device)
    position = torch.empty(len(index), dtype=torch.int64, device=device)
    position[torch.from_numpy(ids).to(device)] = torch.arange(len(ids), device=device)
    loader = make_loader(index, ids, train=False, batch_size=batch_size, image_size=image_size, device=device,
                         dtype=dtype if amp == "bf16" else torch.float32, **loader_kwargs)
    for images, _, sample_ids in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
            out[position[sample_ids]] = model(images).float()
    return out


def model_classes(model: nn.Module) -> int:
    head = model.head if hasattr(model, "head") else model.fc
    return head.out_features


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """top1, per-class accuracy and the variance of per-class accuracy."""
    correct = (logits.argmax(1) == labels).double()
    per_class = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, labels, correct)
    counts = torch.bincount(labels, minlength=len(classes)).double()
    present = counts > 0
    acc = per_class[present] / counts[present]
    return dict(top1=float(correct.mean()) if len(correct) else float("nan"), num_samples=len(correct),
                per_class={c: float(per_class[i] / counts[i]) for i, c in enumerate(classes) if present[i]},
                class_accuracy_variance=float(acc.var(unbiased=False)) if len(acc) else float("nan"))


def write_json(path, data) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
