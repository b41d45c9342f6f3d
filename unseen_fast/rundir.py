"""Files and run folders, in one place.

Every file the package writes goes through :func:`atomic_path`: it is
written under a temporary name in the same folder and renamed when
complete, so a crash (SIGKILL included) leaves either the previous version
or the new one, never half a file. :class:`RunDir` adds what a run folder
needs on top: a claim that refuses another configuration, an exclusive lock
against a second process, and resume bookkeeping (a phase is done when its
file exists).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from unseen_fast.errors import UserError


# a full disk, a quota, a read-only or forbidden folder: the user's to fix, said in one line
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _storage_error(path: Path, err: OSError, size: int | None) -> UserError:
    needed = f" ({size:,} bytes)" if size is not None else ""
    free = ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):  # a read-only or forbidden folder: its free bytes say nothing
        try:
            free = f"; {shutil.disk_usage(path.parent).free:,} bytes free there"
        except OSError:
            pass
    return UserError(f"cannot write {path}{needed}: {err.strerror}{free}; the previous version, if any, is kept")


@contextlib.contextmanager
def atomic_path(path, size: int | None = None):
    """Yield a temporary path next to ``path``; on success rename it onto
    ``path``, on an exception remove it and re-raise, so the previous
    version stays whole. A storage error becomes a UserError naming the
    path, the bytes needed (``size``, when known) and the bytes free."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        raise _storage_error(path, err, size) from None
    finally:
        tmp.unlink(missing_ok=True)


def allocate(path, size: int) -> None:
    """Create ``path`` with ``size`` bytes reserved on disk, so that a full
    disk fails here in one line (a UserError naming it) instead of killing
    the process with SIGBUS when a memory map of the file is written.
    Filesystems that cannot reserve space get a sparse file."""
    path = Path(path)
    try:
        with open(path, "wb") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, size) if size else None
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                handle.truncate(size)
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        path.unlink(missing_ok=True)
        raise _storage_error(path, err, size) from None


def make_folder(path, option: str = "--out") -> Path:
    """``path`` as a folder, created with its parents; a file in the way is
    one line naming it and the option that chose it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{option} {path}: it or a folder above it is a file, not a folder; choose another "
                        f"{option}") from None
    return path


def not_a_run_folder(path) -> Path:
    """``path``, unless it holds a prune run (config.json) or an experiment
    (grid.json): a single training's files would be mixed into theirs."""
    path = Path(path)
    for marker, kind in ((RunDir.CONFIG, "prune run"), ("grid.json", "experiment")):
        if (path / marker).is_file():
            raise UserError(f"{path} holds an unseen-fast {kind} ({marker}); train into another --out folder")
    return path


def write_text(path, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=1))


@contextlib.contextmanager
def reading(path):
    """Around the read of a file a run wrote: if it is damaged (cut short by
    a full disk or by hand; a crash cannot, every write is atomic) or gone,
    one line naming it instead of numpy's, json's or torch's traceback."""
    try:
        yield
    except (OSError, EOFError, ValueError, RuntimeError, KeyError) as err:  # JSONDecodeError is a ValueError
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} cannot be read ({why}): a damaged run file; remove the run folder and run "
                        f"again, or use another --out") from None


def read_json(path) -> dict:
    with reading(path):
        return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path, array: np.ndarray) -> None:
    with atomic_path(path, size=array.nbytes) as tmp:
        np.save(tmp, array)


def save_npz(path, **arrays: np.ndarray) -> None:
    with atomic_path(path, size=sum(a.nbytes for a in arrays.values())) as tmp:
        np.savez(tmp, **arrays)


def save_figure(fig, path, dpi: int = 120) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")


def fingerprint(data: dict) -> str:
    """A short stable hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    """A run folder: paths, atomic numpy/JSON writes, claim and lock."""

    CONFIG = "config.json"
    LOCK = ".lock"

    def __init__(self, root):
        self.root = Path(root)
        self._lock = None

    def __truediv__(self, name):
        return self.root / name

    def save_npy(self, name: str, array: np.ndarray) -> None:
        save_npy(self.root / name, array)

    def load_npy(self, name: str):
        """The array saved as ``name``, or None when that phase has not finished."""
        path = self.root / name
        if not path.exists():
            return None
        with reading(path):
            return np.load(path)

    def save_npz(self, name: str, arrays: dict) -> None:
        save_npz(self.root / name, **arrays)

    def load_npz(self, name: str) -> dict | None:
        """The arrays saved as ``name`` (a dict), or None when not yet written."""
        path = self.root / name
        if not path.exists():
            return None
        with reading(path), np.load(path) as data:
            return {key: data[key] for key in data.files}

    def claim(self, config: dict, *, resume: bool, prepare=None, upgrade=None) -> bool:
        """Make this folder the run of ``config``: create it, or continue it
        with ``resume=True`` when it holds the same configuration. Refuses a
        non-empty folder of something else, another configuration, and a
        folder another process is working in. ``prepare(root)`` writes what
        a new run needs before its config.json, whose presence marks a
        claimed folder. ``upgrade(saved config) -> config`` states a folder
        written by an earlier version in today's terms (the values its run
        behaved as for options added since), so it can still be resumed.
        Returns True when resuming."""
        wanted = dict(fingerprint=fingerprint(config), config=config)
        path = self.root / self.CONFIG
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a folder; choose a new --out folder")
        if path.exists():
            saved = self._saved_config(path)
            saved_config = saved.get("config", {})
            if upgrade is not None and isinstance(saved_config, dict):
                saved_config = upgrade(saved_config)
            if fingerprint(saved_config) != wanted["fingerprint"]:
                diff = config_diff(saved_config, config)
                raise UserError(f"{self.root} holds a run with a different configuration ({diff}); "
                                f"use a new --out folder")
            if not resume:
                raise UserError(f"{self.root} already holds a run of this configuration; pass --resume to "
                                f"continue it or choose a new --out folder")
            self.lock()
            return True
        if self.root.exists() and any(p.name != self.LOCK for p in self.root.iterdir()):
            raise UserError(f"{self.root} is not empty and holds no unseen-fast run; choose a new --out folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the run folder {self.root}: {err.strerror}") from None
        self.lock()
        if prepare is not None:
            prepare(self.root)
        write_json(path, wanted)
        return False

    def _saved_config(self, path: Path) -> dict:
        try:  # not read_json: this message says what a foreign or damaged config means here
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not a readable run configuration ({err}); use a new --out folder") from None
        if not isinstance(saved, dict) or "fingerprint" not in saved:
            raise UserError(f"{path} was not written by unseen-fast; use a new --out folder")
        return saved

    def lock(self) -> None:
        """Hold an exclusive lock on the folder for the life of this object
        (released by the OS when the process ends, even on SIGKILL)."""
        if self._lock is not None:
            return
        handle = open(self.root / self.LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserError(f"{self.root} is in use by another unseen-fast process; wait for it to finish "
                            f"or choose a new --out folder") from None
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def config_diff(saved: dict, wanted: dict, prefix: str = "") -> str:
    """"key: saved X, now Y" for every leaf that differs, nested keys dotted."""
    parts = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_diff(a, b, f"{prefix}{key}.")
            if inner:
                parts.append(inner)
        elif a != b:
            parts.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return "; ".join(parts)
