"""Per-sample training dynamics (the fused loss's statistics, every epoch),
stored by sample id in memory-mapped float32 arrays of a run directory.
The Forgetting, AUM, EL2N, DynUnc and TDDS baselines read them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from unseen_fast.fused_loss import STATS
from unseen_fast.rundir import allocate, write_json


class DynamicsRecorder:
    """``{stat}.f32`` arrays of shape (epochs, num_samples) under ``folder``,
    NaN where a sample was not seen in an epoch; with ``num_classes`` also
    ``probs.f16`` (epochs, num_samples, num_classes): each sample's softmax
    vector per epoch (TDDS needs it). Opening an existing folder (a resumed
    run) keeps what was recorded."""

    def __init__(self, folder, *, epochs: int, num_samples: int, stats=STATS, num_classes: int | None = None):
        self.folder = Path(folder)
        self.stats = tuple(stats)
        self.shape = (epochs, num_samples)
        self._pending = []  # (epoch, ids, stats, probs) of batches recorded since the last flush
        meta = dict(shape=list(self.shape), stats=list(self.stats), num_classes=num_classes)
        meta_path = self.folder / "dynamics.json"
        exists = meta_path.exists()
        if exists:
            saved = json.loads(meta_path.read_text())
            if saved != meta:
                raise ValueError(f"{meta_path} records {saved}, not {meta}")
        self.folder.mkdir(parents=True, exist_ok=True)
        files = {name: (self.folder / f"{name}.f32", np.float32, self.shape) for name in self.stats}
        if num_classes:
            files["probs"] = (self.folder / "probs.f16", np.float16, self.shape + (num_classes,))
        if not exists:  # reserved first: a full disk fails in one line, not as a SIGBUS in the NaN fill
            for path, dtype, shape in files.values():
                allocate(path, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self.arrays = {name: np.memmap(path, dtype=dtype, mode="r+", shape=shape)
                       for name, (path, dtype, shape) in files.items()}
        if not exists:
            for array in self.arrays.values():
                array[:] = np.nan
            self.flush()
            write_json(meta_path, meta)

    def record(self, epoch: int, sample_ids: torch.Tensor, stats: torch.Tensor, probs: torch.Tensor | None = None):
        """Keep a batch's (B, len(STATS)) statistics (and (B, C) probabilities
        when recorded) at its sample ids, where they are (on the device):
        :meth:`flush` writes them with one copy to the host, so recording
        never makes a training step wait for the device."""
        self._pending.append((epoch, sample_ids.detach(), stats.detach().float(),
                              None if probs is None else probs.detach().to(torch.float16)))

    def flush(self) -> None:
        """Write what :meth:`record` kept (one host copy per epoch and array)
        and flush the files."""
        for epoch in sorted({part[0] for part in self._pending}):
            parts = [part[1:] for part in self._pending if part[0] == epoch]
            ids = torch.cat([ids for ids, _, _ in parts]).cpu().numpy()
            values = torch.cat([stats for _, stats, _ in parts]).cpu().numpy()
            for column, name in enumerate(STATS):
                if name in self.arrays:
                    self.arrays[name][epoch, ids] = values[:, column]
            if "probs" in self.arrays:
                self.arrays["probs"][epoch, ids] = torch.cat([probs for _, _, probs in parts]).cpu().numpy()
        self._pending = []
        for array in self.arrays.values():
            array.flush()


def load_dynamics(folder) -> dict[str, np.ndarray]:
    """{stat: (epochs, num_samples) float32} read-only views of a recorder's
    arrays, plus "probs" (epochs, num_samples, C) float16 when recorded."""
    folder = Path(folder)
    meta = json.loads((folder / "dynamics.json").read_text())
    shape = tuple(meta["shape"])
    arrays = {name: np.memmap(folder / f"{name}.f32", dtype=np.float32, mode="r", shape=shape)
              for name in meta["stats"]}
    if meta.get("num_classes"):
        arrays["probs"] = np.memmap(folder / "probs.f16", dtype=np.float16, mode="r",
                                    shape=shape + (meta["num_classes"],))
    return arrays
