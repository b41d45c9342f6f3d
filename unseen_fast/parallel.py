"""train_many: several independent models (K folds, stages), trained one
after another in-process, concurrently on CUDA streams of one GPU, or in
worker processes started by torch.distributed's elastic launcher (one per
GPU, or N gloo workers on CPU)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unseen_fast.data import ImageIndex, release_resident
from unseen_fast.errors import UserError, user_error_named
from unseen_fast.checkpoint import Terminated, stop_on_sigterm
from unseen_fast.train import TrainConfig, train

log = logging.getLogger("unseen_fast.train")


@dataclass
class TrainJob:
    """One model to train: its sample ids, seed and output folder."""

    name: str
    ids: np.ndarray
    out_dir: str
    seed: int = 0
    init_from: str | None = None  # a train() output folder whose model weights start this one (fine-tuning)


def _run_job(job: TrainJob, config: TrainConfig, index: ImageIndex, device, loader_kwargs, progress,
             model_factory=None, ddp_group=None) -> None:
    # A job reads all of its ids (or, under DDP, its group's share): never
    # shard them by the worker's global rank.
    kwargs = dict(loader_kwargs or {}, rank=0, world_size=1)
    train(dataclasses.replace(config, seed=job.seed), index, job.ids, job.out_dir, device=device,
          progress=progress, loader_kwargs=kwargs, model_factory=model_factory, ddp_group=ddp_group,
          init_from=job.init_from)


def training_device(device, gpus: int | None, nproc: int | None) -> torch.device:
    """Where the trainings run: "auto" is the GPU when one is visible, else
    the CPU; ``gpus`` means CUDA whatever ``device`` says (as the CLI's
    --gpus); ``gpus`` with ``nproc`` (CPU workers) and CUDA without a
    visible GPU are refused in one line."""
    if gpus and nproc:
        raise UserError(f"--gpus {gpus} and --nproc {nproc}: --nproc starts CPU worker processes, --gpus one "
                        f"per GPU; give one of them")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    device = torch.device("cuda") if gpus and device.type != "cuda" else device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{'--gpus' if gpus else '--device ' + str(device)} asked for a GPU, but torch sees none "
                        f"on this machine; leave it out to run on the CPU")
    if gpus and gpus > torch.cuda.device_count():  # else every worker dies on an invalid device ordinal
        raise UserError(f"--gpus {gpus}: torch sees {torch.cuda.device_count()} GPU(s) on this machine")
    return device


def train_many(jobs: list[TrainJob], config: TrainConfig, index: ImageIndex, *, device="cpu",
               nproc: int | None = None, gpus: int | None = None, loader_kwargs: dict | None = None,
               progress: bool = False, model_factory=None) -> list[Path]:
    """Train every job; return their output folders (each holds checkpoint.pt).

    - ``gpus`` > 1: one worker process per GPU (elastic launch), jobs dealt
      round-robin; with more GPUs than jobs each job trains data-parallel
      (DDP) over a subgroup of world // len(jobs) GPUs. ``nproc`` > 1 on
      CPU: the same with gloo workers.
    - one GPU and several jobs: concurrently, one CUDA stream (and thread,
      loader and optimizer) per job.
    - otherwise: one after another in this process.
    Finished jobs are skipped on a rerun (their checkpoints are resumed), so
    a crashed run continues where it stopped. A failing worker stops the run
    with that worker's error.
    """
    device = training_device(device, gpus, nproc)
    workers = gpus if gpus and gpus > 1 else nproc
    if workers and workers > 1:
        if gpus and gpus > 1:  # each worker uploads its own copy: this process's would sit on GPU 0 unused
            release_resident()
            torch.cuda.empty_cache()
        _launch(jobs, config, index, workers=workers, use_gpus=bool(gpus and gpus > 1),
                loader_kwargs=loader_kwargs, model_factory=model_factory)
    # threads on streams, except under torch.compile: Dynamo and Inductor are not thread-safe
    elif torch.device(device).type == "cuda" and len(jobs) > 1 and not config.compile:
        concurrently(jobs, config, index, torch.device(device), loader_kwargs, model_factory)
    else:
        for job in jobs:
            log.info("training %s on %d samples", job.name, len(job.ids))
            _run_job(job, config, index, device, loader_kwargs, progress, model_factory)
    return [Path(job.out_dir) for job in jobs]


def concurrently(jobs, config, index, device, loader_kwargs, model_factory=None) -> None:
    """One thread per job; on CUDA each issues its kernels on its own stream
    so the GPU overlaps them (the models are small next to the GPU). A job's
    model depends only on its seed (seeded inits are serialized, loaders
    draw from their own generators)."""
    device = torch.device(device)

    def run(job):
        if device.type != "cuda":
            return _run_job(job, config, index, device, loader_kwargs, False, model_factory)
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
            _run_job(job, config, index, device, loader_kwargs, False, model_factory)

    # SIGTERM is received by the main thread: its handler asks every job to checkpoint and stop
    with stop_on_sigterm(), ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(run, job) for job in jobs]:
            future.result()  # re-raises the first failure


def _worker(jobs, config, index, use_gpus, loader_kwargs, model_factory=None) -> None:
    """Body of each launched process: train this rank's share of the jobs."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpus else torch.device("cpu")
    if use_gpus:  # this rank's GPU for every CUDA call and NCCL's barriers (else NCCL guesses, and a
        torch.cuda.set_device(device)  # pinning thread would open a context on GPU 0 in every rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        if jobs and world > len(jobs):
            _data_parallel_share(jobs, config, index, device, loader_kwargs, model_factory, rank, world)
        else:
            for job in jobs[rank::world]:
                log.info("rank %d/%d training %s on %d samples", rank, world, job.name, len(job.ids))
                _run_job(job, config, index, device, loader_kwargs, False, model_factory)
        # No closing barrier: jobs are independent, and a barrier would turn a
        # crash of one worker into "connection closed" errors in the others.
    finally:
        dist.destroy_process_group()


def _data_parallel_share(jobs, config, index, device, loader_kwargs, model_factory, rank, world) -> None:
    """More workers than jobs: job j trains with DDP over ranks
    [j*g, (j+1)*g), g = world // len(jobs); leftover ranks wait."""
    import torch.distributed as dist

    size = world // len(jobs)
    # Every rank creates every group, in the same order (new_group is collective).
    groups = [dist.new_group(list(range(j * size, (j + 1) * size))) for j in range(len(jobs))]
    if rank < size * len(jobs):
        job = jobs[rank // size]
        log.info("rank %d/%d training %s data-parallel over %d ranks", rank, world, job.name, size)
        _run_job(job, config, index, device, loader_kwargs, False, model_factory, ddp_group=groups[rank // size])


def check_picklable(model_factory, workers: int | None) -> None:
    """Worker processes receive the model factory by pickling: say so in one
    line, before anything starts, when it cannot be (a lambda, a function
    defined in a notebook cell or in a script's __main__)."""
    if model_factory is None or not workers or workers < 2:
        return
    import pickle

    try:
        pickle.dumps(model_factory)
        # pickled by name: a spawned worker re-imports __main__ to find it, which a
        # notebook, `python -c` or the REPL cannot offer (no file)
        from_main = getattr(model_factory, "__module__", None) == "__main__"
        spawned_ok = not from_main or hasattr(sys.modules["__main__"], "__file__")
    except Exception:  # pickle raises several types for unpicklable objects
        spawned_ok = False
    if not spawned_ok:
        raise UserError(f"model_factory {getattr(model_factory, '__qualname__', model_factory)!r} cannot be sent to "
                        f"the {workers} worker processes (a lambda, or defined in a notebook cell or __main__); "
                        f"define it in an importable module, or train in this process (no nproc/gpus > 1)")


def _launch(jobs, config, index, *, workers: int, use_gpus: bool, loader_kwargs, model_factory=None) -> None:
    """Start ``workers`` processes with torch.distributed's elastic launcher
    (or, already inside torchrun, run this rank's share directly)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: we are one of the workers
        return _worker(jobs, config, index, use_gpus, loader_kwargs, model_factory)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_picklable(model_factory, workers)

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    try:
        with _signal_handlers_kept():
            elastic_launch(launch, _recorded_worker)(jobs, config, index, use_gpus, loader_kwargs, model_factory)
    except SignalException as err:  # the launcher's handler met a signal and has shut the workers down
        raise (Terminated("SIGTERM") if err.sigval == signal.SIGTERM else KeyboardInterrupt()) from None
    except ChildFailedError as err:
        rank, message = _root_failure(err)
        kind, _, text = message.partition(": ")
        user_kind = user_error_named(kind) if text else None  # the worker's own one-line error: the user's to fix
        if user_kind is not None:
            raise user_kind(f"training worker {rank} failed: {text}") from None
        raise RuntimeError(f"training worker {rank} failed: {message or err}") from None


@contextlib.contextmanager
def _signal_handlers_kept():
    """The elastic launcher sets its own handlers of these signals (they
    raise its SignalException) and never restores ours: restored here, so a
    SIGTERM after the trainings (scoring, outputs) is still one line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(sig, handler)


def _root_failure(err) -> tuple[int, str]:
    """The failure that caused the others: earliest, and (timestamps are in
    whole seconds) not a worker that only lost its connection to the one that
    crashed."""
    def text(failure):
        message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
        return message.strip().splitlines()[-1] if message.strip() else ""

    def key(item):
        rank, failure = item
        secondary = "Connection closed by peer" in text(failure) or "Connection reset" in text(failure)
        return failure.timestamp, secondary, rank

    rank, failure = min(err.failures.items(), key=key)
    return rank, text(failure)


def _recorded_worker(*args):
    # @record writes the worker's exception to the file the launcher reads,
    # so the parent can report the real error instead of an exit code.
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_worker)(*args)
