"""The ImageFolder walk: class folders, image files, what is ignored, and
the names a text file list could not give back."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from unseen_fast.data.errors import DataError

log = logging.getLogger("unseen_fast.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def scan_folder(root: Path, *, workers: int | None = None):
    """(classes, paths, labels, ignored) of ``root/<class>/**/<image>``:
    classes are the sorted sub-folder names, files sorted within each class,
    only image extensions count (case-insensitive); class folders are
    scanned in parallel (``workers`` threads)."""
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot read dataset folder {root}: {err.strerror}") from None
    classes = [e.name for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")]
    if not classes:
        loose = sum(1 for e in entries if e.is_file())
        raise DataError(
            f"no class folders in {root}: expected the ImageFolder layout "
            f"{root}/<class>/<image> (found {loose} files and no sub-folders)")
    with ThreadPoolExecutor(workers or min(32, len(classes))) as pool:
        walked = list(pool.map(lambda name: _scan_class(root, name), classes))
    _report_shared_folders(root, classes, [folders for _, _, folders in walked])
    scanned = [(files, skipped) for files, skipped, _ in walked]
    empty = [name for name, (files, _) in zip(classes, scanned) if not files]
    if empty:
        shown = ", ".join(repr(name) for name in empty[:20])
        more = f" and {len(empty) - 20} more" if len(empty) > 20 else ""
        raise DataError(
            f"{len(empty)} class folder(s) under {root} contain no images "
            f"({', '.join(IMAGE_EXTENSIONS)}): {shown}{more}")
    paths, labels, ignored = [], [], []
    for label, (files, skipped) in enumerate(scanned):
        paths.extend(files)
        labels.extend([label] * len(files))
        ignored.extend(skipped)
    _check_names_round_trip(root, paths)
    return classes, paths, labels, ignored


def _check_names_round_trip(root, paths: list[str]) -> None:
    """Refuse names that a "path label" text list (coreset.txt, index.txt,
    DALI's file_list) cannot give back: line breaks, leading or trailing
    whitespace (lines are stripped), a leading "#" (a comment)."""
    bad = [p for p in paths if "\n" in p or "\r" in p or p != p.strip() or p.startswith("#")
           or any(part != part.strip() for part in p.split("/"))]
    if bad:
        shown = ", ".join(repr(p) for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} file name(s) under {root} cannot be written to a text file list and read "
                        f"back (a line break, spaces at the start or end of a name, or a leading #): {shown}; rename them")


def _report_shared_folders(root: Path, classes: list[str], folders: list[dict]) -> None:
    """Warn about a folder reached from two classes (a directory link): its
    images are listed under both labels."""
    owner = {}
    for name, seen in zip(classes, folders):
        for key, rel in seen.items():
            if key in owner:
                log.warning("folder %s is reached from class %r (as %s) and class %r (as %s): its images are "
                            "listed under both labels", root / rel, owner[key][0], owner[key][1], name, rel)
            else:
                owner[key] = (name, rel)


def _scan_class(root: Path, name: str) -> tuple[list[str], list[str], dict]:
    """Image files (sorted relative paths), ignored non-image files and the
    folders walked ({(device, inode): relative path}) of one class folder,
    recursing into sub-folders. Symlinked files and folders are followed; a
    folder reached twice (a symlink loop, or two links to one folder) is
    scanned once and the repeat listed as ignored."""
    images, ignored = [], []
    stack = [name]
    seen = {}
    while stack:
        rel = stack.pop()
        try:
            status = os.stat(root / rel)
            if (status.st_dev, status.st_ino) in seen:
                ignored.append(f"{rel}/ (folder already scanned: a symlink loop or a second link)")
                continue
            seen[(status.st_dev, status.st_ino)] = rel
            with os.scandir(root / rel) as it:
                entries = list(it)
        except OSError as err:
            raise DataError(f"cannot read folder {root / rel}: {err.strerror}") from None
        for entry in entries:
            child = f"{rel}/{entry.name}"
            if entry.is_dir(follow_symlinks=True):
                stack.append(child)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(child)
            else:
                ignored.append(child)
    images.sort()
    ignored.sort()
    return images, ignored, seen


