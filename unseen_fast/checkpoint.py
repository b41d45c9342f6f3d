"""Checkpoint plumbing of the training loop: what identifies a training
config and a job (its ids and starting model), the checks before a resume,
a background writer (the file is serialized and written while
training goes on), and SIGTERM as a request to checkpoint and stop."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from unseen_fast.errors import UserError
from unseen_fast.rundir import atomic_path, reading

log = logging.getLogger("unseen_fast.train")

CHECKPOINT = "checkpoint.pt"
RUN_ONLY_FIELDS = ("checkpoint_every",)
WRITE_CHUNK = 16 << 20  # bytes per write of a serialized checkpoint


def config_identity(config) -> dict:
    """The fields of a TrainConfig (or its dict) that decide the trained
    model: everything but how often it is checkpointed."""
    fields = config if isinstance(config, dict) else dataclasses.asdict(config)
    return {k: v for k, v in fields.items() if k not in RUN_ONLY_FIELDS}


def job_identity(ids: np.ndarray, source: dict | None) -> dict:
    """What a checkpoint was trained on besides its config: the ids (count
    and hash) and the model it started from (``source``, that checkpoint's
    state), named by that model's own identity rather than its folder, so a
    moved run folder still matches."""
    starts_from = None
    if source is not None:
        origin = dict(config=config_identity(source["config"]), job=source.get("job"), epochs=source["epochs_done"])
        starts_from = hashlib.sha256(json.dumps(origin, sort_keys=True, default=str).encode()).hexdigest()[:16]
    digest = hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    return dict(samples=int(len(ids)), ids_sha256=digest, starts_from=starts_from)


def load_state(out_dir) -> dict:
    """The saved state in a train() output folder."""
    path = Path(out_dir) / CHECKPOINT
    with reading(path):
        return torch.load(path, map_location="cpu", weights_only=False)


def checked_checkpoint(path: Path, identity: dict, job: dict) -> dict | None:
    """The checkpoint at ``path`` if there is one; refused (UserError naming
    the difference) when it was written for another config identity or job."""
    if not path.exists():
        return None
    with reading(path):
        state = torch.load(path, map_location="cpu", weights_only=False)
    saved = config_identity(state["config"])
    if saved != identity:
        diff = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
        raise UserError(f"{path} was written with a different training config (saved, now): {diff}; "
                         f"use another output folder or the same settings")
    saved_job = state.get("job", job)  # checkpoints from before 2026-11-23 carry no job: trusted
    if saved_job != job:
        diff = {k: (saved_job.get(k), v) for k, v in job.items() if saved_job.get(k) != v}
        raise UserError(f"{path} was trained on other samples or from another starting model (saved, now): "
                         f"{diff}; use another output folder")
    return state


def to_cpu_copy(value):
    """``value`` with every tensor replaced by a CPU copy (weights and
    optimizer buffers keep changing while the writer thread works)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu_copy(v) for v in value)
    return value


class CheckpointWriter:
    """Writes checkpoints on one background thread, atomically (a crash
    mid-write keeps the previous file); at most one write in flight, and
    ``wait`` re-raises a failed write."""

    def __init__(self, path: Path):
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(state,), name="unseen-fast-checkpoint")
        self._thread.start()

    def _write(self, state: dict) -> None:
        try:
            # serialized in memory first: torch.save into a full disk fails with a RuntimeError of its
            # zip writer, a plain write with ENOSPC, which atomic_path turns into one line
            buffer = io.BytesIO()
            torch.save(state, buffer)
            # copied out in chunks, never through a memoryview of the buffer: a failed write's
            # traceback keeps the writing frames, and CPython 3.12's GC segfaulted freeing such a view
            size = buffer.tell()
            buffer.seek(0)
            with atomic_path(self.path, size=size) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(buffer, out, WRITE_CHUNK)
        except BaseException as err:  # re-raised in the training thread by wait()
            self._error = err

    def wait(self, *, raise_error: bool = True) -> None:
        """Until the write in flight is done; re-raise its failure (unless
        another exception is already on its way out)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if raise_error:
                raise error
            log.error("writing %s failed too: %s", self.path, error)


# One stop request per process: set by the SIGTERM handler of the main thread,
# read by every training (threads of one GPU included).
_STOP = threading.Event()


class StopRequest:
    @property
    def requested(self) -> bool:
        return _STOP.is_set()


@contextlib.contextmanager
def stop_on_sigterm():
    """Within the block SIGTERM (a scheduler's pre-emption) asks every
    training of this process to checkpoint after its current epoch and stop.
    The handler is set by the outermost block of the main thread (signal
    handlers cannot be set elsewhere) and restored on exit; blocks in other
    threads (concurrent trainings on one GPU) share its request."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is _request_stop:
        yield StopRequest()
        return
    _STOP.clear()
    previous = signal.signal(signal.SIGTERM, _request_stop)
    try:
        yield StopRequest()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if _STOP.is_set():  # the block ended normally: the SIGTERM came after its last look; not lost
        signal.raise_signal(signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training (scoring, selection, writing the outputs):
    raised wherever the main thread is, as Ctrl-C raises KeyboardInterrupt,
    so the same cleanups run (and every write is atomic: nothing is left
    half-written). Exit code 143, as a stop inside a training."""
    exit_code = 143


@contextlib.contextmanager
def terminate_on_sigterm():
    """For a whole command: SIGTERM raises Terminated, except inside the
    trainings' stop_on_sigterm blocks, whose handler replaces this one
    (checkpoint after the epoch, then stop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame) -> None:
    raise Terminated("SIGTERM")


def _request_stop(signum, frame) -> None:
    log.warning("SIGTERM: stopping after this epoch's checkpoint")
    _STOP.set()
