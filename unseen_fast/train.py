"""The training loop: read it top to bottom. One model, one set of sample
ids, checkpoints after every epoch, resumable to the same weights."""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unseen_fast.checkpoint import (CHECKPOINT, CheckpointWriter, checked_checkpoint, config_identity, job_identity,
                                    load_state, stop_on_sigterm, to_cpu_copy)
from unseen_fast.constants import AMP_MODES, amp_dtype, input_dtype, resolve_amp
from unseen_fast.data import ImageIndex, make_loader
from unseen_fast.dynamics import DynamicsRecorder
from unseen_fast.errors import Stopped, UserError
from unseen_fast.fused_loss import cross_entropy_with_stats
from unseen_fast.models import build_model, default_image_size
from unseen_fast.precise_bn import recalibrate_batchnorm
from unseen_fast.progress import progress_of
from unseen_fast.rundir import atomic_path

log = logging.getLogger("unseen_fast.train")
# Model initialization draws from the global RNG: one job at a time, so a
# job's weights depend on its seed only, whatever other threads do.
_SEEDED_INIT = threading.Lock()
# Devices where torch's fused SGD runs (CPU and CUDA kernels); elsewhere the default step.
FUSED_SGD_DEVICES = ("cpu", "cuda")


@dataclass
class TrainConfig:
    arch: str = "fastnet"            # models.ARCHS name
    epochs: int = 10                 # passes over the training ids
    batch_size: int = 256            # samples per optimizer step; under DDP split over the ranks
    lr: float = 0.05                 # peak learning rate (SGD; tuned for fastnet, batch 256)
    momentum: float = 0.9            # Nesterov momentum
    weight_decay: float = 5e-4       # on conv/linear weights only; none on norms and biases
    label_smoothing: float = 0.1     # target (1 - eps) onehot + eps / C
    schedule: str = "onecycle"       # "onecycle" (linear up, linear down) or "cosine"
    warmup_epochs: float = 1.0       # linear warm-up length, stepped per iteration
    amp: str = "auto"                # "bf16" autocast, "fp16" autocast + GradScaler, "off", or "auto" (see resolve_amp)
    compile: bool = False            # torch.compile the model
    image_size: int | None = None    # training crop size; None: the data's (models.default_image_size)
    seed: int = 0                    # model init and data order: (seed, epoch)
    backend: str = "auto"            # data backend (see unseen_fast.data.make_loader)
    threads: int | None = None       # torch CPU threads (same count = bitwise same CPU results)
    record_dynamics: bool = False    # keep per-sample statistics per epoch (baselines need them)
    record_probabilities: bool = False  # with record_dynamics: each sample's softmax per epoch (TDDS), float16
    # Precise BatchNorm: after the last epoch, re-estimate every BatchNorm's running statistics from this
    # many (augmented) training samples; 0 keeps the momentum averages, which on a small fold (few steps)
    # still sit near their initial values and make eval-mode outputs garbage.
    bn_recalibration_samples: int = 50_000
    # Checkpoint after every this many epochs (and after the last one, and on SIGTERM). A run setting:
    # not part of what a checkpoint or a shared model is (config_identity), so it may change on --resume.
    checkpoint_every: int = 1

    def __post_init__(self):
        if self.schedule not in ("onecycle", "cosine"):
            raise UserError(f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise UserError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"need epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if self.checkpoint_every < 1:
            raise UserError(f"checkpoint_every must be >= 1 epoch, got {self.checkpoint_every}")
        if self.bn_recalibration_samples < 0:
            raise UserError(f"bn_recalibration_samples must be >= 0, got {self.bn_recalibration_samples}")


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


def train(config: TrainConfig, index: ImageIndex, ids, out_dir, *, device="cpu", progress: bool = False,
          loader_kwargs: dict | None = None, model_factory=None, ddp_group=None,
          init_from: str | None = None) -> nn.Module:
    """Train one model on ``ids`` of ``index``; checkpoint to ``out_dir``.

    A checkpoint already in ``out_dir`` (same config, ids and ``init_from``,
    else refused) is resumed from the epoch after it; a finished one is
    returned without training. ``init_from``: a train() output folder whose
    model (its own architecture) starts this one (fine-tuning).
    ``ddp_group`` (a torch.distributed process group): train data-parallel
    over its ranks, each reading its share of the ids in batches of
    ``batch_size / ranks``, so a step sees ``batch_size`` samples and N
    ranks take the same steps as one process (same schedule, same learning
    rate); the group's first rank writes the checkpoints.
    """
    device = _reproducible_on(device)
    config = concrete(config, index, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    ids = np.asarray(ids, dtype=np.int64)
    group_rank, group_size = _group_position(ddp_group)
    loader_kwargs = dict(loader_kwargs or {}, **({"rank": group_rank, "world_size": group_size} if ddp_group else {}))

    source = load_state(init_from) if init_from else None
    model = _seeded_model(config, index.num_classes, model_factory, source).to(device)
    rank_batch = max(1, config.batch_size // group_size)  # the global batch split over the ranks
    opt = _Optimization.create(config, model, device, per_rank=-(-len(ids) // group_size), batch=rank_batch)
    job = job_identity(ids, source)
    start_epoch = _resume(out_dir, config, job, model, opt)
    recorder = _open_recorder(config, out_dir, index, group_rank, ddp_group)
    step_model = torch.compile(model) if config.compile else model
    if ddp_group is not None:  # gradients averaged over the group after each backward
        step_model = nn.parallel.DistributedDataParallel(
            step_model, process_group=ddp_group, device_ids=[device.index] if device.type == "cuda" else None)

    context = _EpochContext(config, index, ids, model, step_model, opt, recorder, device, loader_kwargs,
                            rank_batch, progress, out_dir, group_rank)
    writer = CheckpointWriter(out_dir / CHECKPOINT) if group_rank == 0 else None
    try:
        with stop_on_sigterm() as stop:
            for epoch in range(start_epoch, config.epochs):
                context.run(epoch, first=epoch == start_epoch)
                stopping = _agreed_stop(stop.requested, device, ddp_group)
                if writer is not None and (stopping or epoch + 1 == config.epochs
                                           or (epoch + 1) % config.checkpoint_every == 0):
                    _save_checkpoint(writer, config, job, model, opt, epoch + 1)
                if ddp_group is not None:
                    torch.distributed.barrier(ddp_group)  # nobody runs ahead of a checkpoint
                if stopping:
                    raise Stopped(f"training {out_dir.name} stopped by SIGTERM after epoch {epoch + 1}/{config.epochs}"
                                  f" (checkpoint saved)")  # the CLI adds how its command continues
    except BaseException:
        if writer is not None:
            writer.wait(raise_error=False)  # the checkpoint in flight lands; the first error is the one raised
        raise
    if writer is not None:
        writer.wait()  # the last checkpoint is on disk before train returns
    return model


def _agreed_stop(requested: bool, device: torch.device, ddp_group) -> bool:
    """Whether to stop after this epoch; under DDP every rank stops if one
    was asked (a rank that stopped alone would hang the others' collectives)."""
    if ddp_group is None:
        return requested
    flag = torch.tensor([float(requested)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=ddp_group)
    return bool(flag.item())


@dataclass
class _EpochContext:
    """What every epoch of one train() call uses."""
    config: TrainConfig
    index: ImageIndex
    ids: np.ndarray
    model: nn.Module
    step_model: nn.Module
    opt: "_Optimization"
    recorder: DynamicsRecorder | None
    device: torch.device
    loader_kwargs: dict
    rank_batch: int
    progress: bool
    out_dir: Path
    group_rank: int

    def run(self, epoch: int, *, first: bool) -> None:
        config = self.config
        self.model.train()
        loader = make_loader(self.index, self.ids, train=True, batch_size=self.rank_batch,
                             image_size=config.image_size, backend=config.backend, device=self.device,
                             seed=config.seed, epoch=epoch, dtype=input_dtype(config.amp),
                             drop_last=self.opt.drop_last, **self.loader_kwargs)
        if first:
            log.info("training on %d samples on %s, precision %s, with the %s data backend", len(self.ids),
                     self.device, config.amp, loader.backend)
        batches = progress_of(loader, self.progress, f"epoch {epoch + 1}/{config.epochs}")
        start = time.perf_counter()
        sums = _train_epoch(config, self.step_model, self.opt, batches, self.recorder, epoch, self.device)
        _report_epoch(config, self.out_dir.name, epoch, *sums, start)
        if self.group_rank == 0 and epoch + 1 == config.epochs:
            # every id on this one rank, whatever torch.distributed's world is
            eval_kwargs = dict(self.loader_kwargs, rank=0, world_size=1)
            recalibrate_batchnorm(self.model, self.index, self.ids, config, device=self.device,
                                  loader_kwargs=eval_kwargs)


@dataclass
class _Optimization:
    """Everything besides the weights that a checkpoint restores."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    drop_last: bool

    @classmethod
    def create(cls, config: TrainConfig, model: nn.Module, device: torch.device, per_rank: int,
               batch: int | None = None) -> "_Optimization":
        batch = batch or config.batch_size
        # fused: one kernel for all parameters, and with fp16 the GradScaler's
        # overflow check stays on the device (the unfused step reads it with .item())
        optimizer = torch.optim.SGD(parameter_groups(model, config.weight_decay), lr=config.lr,
                                    momentum=config.momentum, nesterov=True, fused=device.type in FUSED_SGD_DEVICES)
        steps_per_epoch = steps_per_epoch_for(per_rank, batch)
        total_steps = steps_per_epoch * config.epochs
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, warmup, config.schedule))
        scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        # full batches: a last batch of 1 breaks BatchNorm
        return cls(optimizer, scheduler, scaler, drop_last=per_rank >= batch)


def _train_epoch(config: TrainConfig, step_model: nn.Module, opt: _Optimization, batches, recorder, epoch: int,
                 device: torch.device):
    """One pass over ``batches``. Returns (samples seen, loss sum, correct
    sum), the sums as device tensors: nothing here waits for the device."""
    dtype = amp_dtype(config.amp)
    seen = 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct_sum = torch.zeros((), dtype=torch.float64, device=device)
    for images, labels, sample_ids in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=config.amp != "off"):
            logits = step_model(images)
        if recorder is None:  # no per-sample statistics wanted: the plain fused loss of ATen / cuDNN
            # float32 like autocast's own cross_entropy: the logits left autocast in bf16/fp16
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing, reduction="none")
            correct = logits.detach().argmax(1) == labels
        else:  # labels come from the validated index: no label check, so no host sync per step
            loss, stats = cross_entropy_with_stats(logits, labels, label_smoothing=config.label_smoothing,
                                                   check_labels=False)
            correct = stats[:, 1]
        opt.scaler.scale(loss.mean()).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scheduler.step()
        if recorder is not None:
            probs = torch.softmax(logits.detach().float(), 1) if config.record_probabilities else None
            recorder.record(epoch, sample_ids, stats, probs)
        seen += len(labels)
        loss_sum += loss.detach().sum()
        correct_sum += correct.sum()
    if recorder is not None:
        recorder.flush()
    return seen, loss_sum, correct_sum


def _report_epoch(config: TrainConfig, name: str, epoch: int, seen: int, loss_sum, correct_sum, start: float):
    """Log the epoch (its one wait for the device); a non-finite loss stops the
    job here, before this epoch's checkpoint, so the last good one stays."""
    loss, accuracy = float(loss_sum) / max(seen, 1), float(correct_sum) / max(seen, 1)
    if not math.isfinite(loss):
        raise UserError(f"training {name} diverged in epoch {epoch + 1}/{config.epochs}: the loss is {loss}; "
                        f"lower the learning rate (now {config.lr}) or use --amp off")
    log.info("epoch %d/%d: loss %.4f, train acc %.4f, %.0f img/s", epoch + 1, config.epochs, loss, accuracy,
             seen / (time.perf_counter() - start))


def _group_position(ddp_group) -> tuple[int, int]:
    """(rank, size) in the DDP group, (0, 1) without one."""
    if ddp_group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(ddp_group), dist.get_world_size(ddp_group)


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


def _save_checkpoint(writer: CheckpointWriter, config, job: dict, model, opt: _Optimization, epochs_done: int) -> None:
    """Snapshot the training state (a copy on the CPU) and hand it to the
    writer thread: the file is serialized and written while training goes on."""
    state = dict(config=dataclasses.asdict(config), job=job, epochs_done=epochs_done, model=model.state_dict(),
                 optimizer=opt.optimizer.state_dict(), scheduler=opt.scheduler.state_dict(),
                 scaler=opt.scaler.state_dict(), torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state())
    writer.save(to_cpu_copy(state))


def _resume(out_dir: Path, config, job: dict, model, opt: _Optimization) -> int:
    state = checked_checkpoint(out_dir / CHECKPOINT, config_identity(config), job)
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    log.info("resuming %s after epoch %d", out_dir, state["epochs_done"])
    return state["epochs_done"]


def _seeded_model(config: TrainConfig, num_classes: int, model_factory, source: dict | None) -> nn.Module:
    with _SEEDED_INIT:  # concurrent jobs (threads on CUDA streams) must not interleave their seeded inits
        torch.manual_seed(config.seed)
        return _new_model(config, num_classes, model_factory, source)


def _reproducible_on(device) -> torch.device:
    """``device``; on CUDA, deterministic cuDNN algorithms (its default
    heuristics may pick convolution backward passes that add with atomics),
    so two runs with the same seed train the same models and keep the same
    coreset. cuBLAS is made repeatable across streams by the workspace
    setting unseen_fast sets on import (CUBLAS_WORKSPACE_CONFIG)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
    return device


def concrete(config: TrainConfig, index: ImageIndex, device) -> TrainConfig:
    """What a run records and trains with: "auto" precision resolved for the
    device, no image size replaced by the data's (native up to 64 px, else 224)."""
    return dataclasses.replace(config, amp=resolve_amp(config.amp, device),
                               image_size=config.image_size or default_image_size(index))


def check_model(config: TrainConfig, num_classes: int, model_factory=None) -> None:
    """One image of ``config.image_size`` through the model on the CPU: an unknown
    arch or a size it cannot take is one line before a run folder is written."""
    model = _new_model(config, num_classes, model_factory).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, config.image_size, config.image_size))
    except RuntimeError as err:
        name = "the model_factory's model" if model_factory else config.arch
        raise UserError(f"--image-size {config.image_size} does not fit {name}: {str(err).splitlines()[0]}") from None


def _new_model(config: TrainConfig, num_classes: int, model_factory=None, source: dict | None = None) -> nn.Module:
    """config.arch from the registry, the user's factory(num_classes), or
    the model of a saved checkpoint ``source`` (its own architecture)."""
    if source is not None:
        model = _new_model(TrainConfig(**source["config"]), num_classes, model_factory)
        model.load_state_dict(source["model"])
        return model
    if model_factory is not None:
        return model_factory(num_classes).to(memory_format=torch.channels_last)
    return build_model(config.arch, num_classes, image_size=config.image_size)


def load_model(out_dir, num_classes: int, *, device="cpu", model_factory=None) -> nn.Module:
    """The model of a checkpoint written by :func:`train`, in eval mode."""
    return _new_model(None, num_classes, model_factory, load_state(out_dir)).to(device).eval()
