"""train_many: several independent models (K folds, stages), trained one
after another in-process, concurrently on CUDA streams of one GPU, or in
worker processes started by torch.distributed's elastic launcher (one per
GPU, or N gloo workers on CPU)."""
from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unseen_fast.data import ImageIndex
from unseen_fast.train import TrainConfig, train

log = logging.getLogger("unseen_fast.train")


@dataclass
class TrainJob:
    """One model to train: its sample ids, seed and output folder."""

    name: str
    ids: np.ndarray
    out_dir: str
    seed: int = 0


def _run_job(job: TrainJob, config: TrainConfig, index: ImageIndex, device, loader_kwargs, progress,
             model_factory=None) -> None:
    # Each job reads all of its ids: never shard them by the worker's rank.
    kwargs = dict(loader_kwargs or {}, rank=0, world_size=1)
    train(dataclasses.replace(config, seed=job.seed), index, job.ids, job.out_dir, device=device,
          progress=progress, loader_kwargs=kwargs, model_factory=model_factory)


def train_many(jobs: list[TrainJob], config: TrainConfig, index: ImageIndex, *, device="cpu",
               nproc: int | None = None, gpus: int | None = None, loader_kwargs: dict | None = None,
               progress: bool = False, model_factory=None) -> list[Path]:
    """Train every job; return their output folders (each holds checkpoint.pt).

    - ``gpus`` > 1: one worker process per GPU (elastic launch), jobs dealt
      round-robin. ``nproc`` > 1 on CPU: the same with gloo workers.
    - one GPU and several jobs: concurrently, one CUDA stream (and thread,
      loader and optimizer) per job.
    - otherwise: one after another in this process.
    Finished jobs are skipped on a rerun (their checkpoints are resumed), so
    a crashed run continues where it stopped. A failing worker stops the run
    with that worker's error.
    """
    workers = gpus if gpus and gpus > 1 else nproc
    if workers and workers > 1:
        _launch(jobs, config, index, workers=workers, use_gpus=bool(gpus and gpus > 1),
                loader_kwargs=loader_kwargs, model_factory=model_factory)
    elif torch.device(device).type == "cuda" and len(jobs) > 1:
        _on_streams(jobs, config, index, torch.device(device), loader_kwargs, model_factory)
    else:
        for job in jobs:
            log.info("training %s on %d samples", job.name, len(job.ids))
            _run_job(job, config, index, device, loader_kwargs, progress, model_factory)
    return [Path(job.out_dir) for job in jobs]


def _on_streams(jobs, config, index, device, loader_kwargs, model_factory) -> None:
    """One thread per job, each issuing its kernels on its own stream so the
    GPU overlaps them (the models are small next to the GPU)."""
    def run(job):
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
            _run_job(job, config, index, device, loader_kwargs, False, model_factory)

    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(run, job) for job in jobs]:
            future.result()  # re-raises the first failure


def _worker(jobs, config, index, use_gpus, loader_kwargs, model_factory=None) -> None:
    """Body of each launched process: train this rank's share of the jobs."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpus else torch.device("cpu")
    dist.init_process_group("nccl" if use_gpus else "gloo")
    try:
        for job in jobs[rank::world]:
            log.info("rank %d/%d training %s on %d samples", rank, world, job.name, len(job.ids))
            _run_job(job, config, index, device, loader_kwargs, False, model_factory)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _launch(jobs, config, index, *, workers: int, use_gpus: bool, loader_kwargs, model_factory=None) -> None:
    """Start ``workers`` processes with torch.distributed's elastic launcher
    (or, already inside torchrun, run this rank's share directly)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: we are one of the workers
        return _worker(jobs, config, index, use_gpus, loader_kwargs, model_factory)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    try:
        elastic_launch(launch, _recorded_worker)(jobs, config, index, use_gpus, loader_kwargs, model_factory)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
        raise RuntimeError(f"training worker {rank} failed: {message.strip().splitlines()[-1] if message else err}") from None


def _recorded_worker(*args):
    # @record writes the worker's exception to the file the launcher reads,
    # so the parent can report the real error instead of an exit code.
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_worker)(*args)
