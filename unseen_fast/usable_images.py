"""Which images a prune run can use: the header pass before anything is
written (or, on --resume, its verdict read back from the run folder), and
the images the decoded cache could not decode; --skip-bad leaves both out
and lists them in skipped_images.txt, otherwise they stop the run naming
the files."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from unseen_fast.baselines import FEATURE_SCORES
from unseen_fast.data import DataError, ImageIndex, open_index
from unseen_fast.data.decode import unreadable_headers
from unseen_fast.data.index import INDEX_META
from unseen_fast.errors import UserError
from unseen_fast.rundir import RunDir, write_text

log = logging.getLogger("unseen_fast.pipeline")  # lines of the prune run's log, as before this module split

SKIPPED_LIST = "skipped_images.txt"


def readable_images(index: ImageIndex, skip_bad: bool) -> tuple[ImageIndex, dict[str, str]]:
    """The index without files whose header does not open (only with
    ``skip_bad``; else they stop the run before anything is written) and
    {path: reason} of those left out."""
    bad = unreadable_headers(index)
    if not bad:
        return index, {}
    listed, more = _some_files(index, bad)
    if not skip_bad:
        raise UserError(f"{len(bad)} unreadable image(s): {listed}{more}. Fix or remove them, or pass --skip-bad "
                        f"to leave them out")
    log.warning("leaving out %d unreadable image(s) (--skip-bad): %s%s", len(bad), listed, more)
    keep = np.setdiff1d(np.arange(len(index)), np.fromiter(bad, dtype=np.int64))
    return index.subset(keep), {index.paths[i]: reason for i, reason in bad.items()}


def checked_before(out: Path, index: ImageIndex, skip_bad: bool):
    """On --resume: what the first invocation's header pass left out, read
    back from the run folder (the saved index and skipped_images.txt)
    instead of opening every file again (2.2 s for CIFAR-10's 50,000 files
    on the 2-core test machine; ImageNet has 25x as many). None when they do
    not account for this index exactly: then the pass runs."""
    if index.in_memory or not (out / INDEX_META).exists():
        return None
    try:
        saved = ImageIndex.load(out)
    except DataError:  # an unreadable or edited saved index: check the files instead
        return None
    if saved.root != index.root:  # another folder
        return None
    listing = out / SKIPPED_LIST
    reasons = dict(line.split("\t", 1) for line in listing.read_text(encoding="utf-8").splitlines()
                   if "\t" in line) if listing.exists() else {}
    kept = set(saved.paths)
    keep = np.array([path in kept for path in index.paths], dtype=bool)
    left_out = [index.paths[i] for i in np.flatnonzero(~keep)]
    if int(keep.sum()) != len(saved) or (left_out and not skip_bad) or not set(left_out) <= set(reasons):
        return None
    if left_out:
        log.info("resuming: leaving out the %d unreadable image(s) found before (skipped_images.txt)", len(left_out))
    return index.subset(np.flatnonzero(keep)), {path: reasons[path] for path in left_out}


def usable_mask(run: RunDir, index: ImageIndex, bad: dict[int, str], skip_bad: bool, score: str) -> np.ndarray:
    """(N,) bool: False for images the decoded cache could not decode (cut
    short or corrupt after a valid header). Without ``skip_bad`` they stop
    the run before any training; with it they are listed in
    skipped_images.txt and never trained on, scored or selected."""
    usable = np.ones(len(index), dtype=bool)
    if not bad:
        return usable
    listed, more = _some_files(index, bad)
    if not skip_bad:
        raise UserError(f"{len(bad)} image(s) could not be decoded: {listed}{more}. Replace them and --resume, or "
                        f"--resume with --skip-bad to leave them out")
    if score in FEATURE_SCORES:
        raise UserError(f"--score {score} reads the features of every image; {len(bad)} cannot be decoded: "
                        f"{listed}{more}")
    log.warning("leaving out %d image(s) that could not be decoded (--skip-bad): %s%s", len(bad), listed, more)
    listing = run / SKIPPED_LIST
    before = listing.read_text() if listing.exists() else ""
    lines = [f"{index.paths[i]}\t{reason}\n" for i, reason in bad.items()]
    write_text(listing, before + "".join(line for line in lines if line not in before))
    usable[np.fromiter(bad, dtype=np.int64)] = False
    return usable


def _some_files(index: ImageIndex, bad: dict[int, str]) -> tuple[str, str]:
    """("path (reason); ..." for up to 10 of ``bad``, "; and N more" or "")."""
    listed = "; ".join(f"{index.file(i)} ({reason})" for i, reason in list(bad.items())[:10])
    return listed, f"; and {len(bad) - 10} more" if len(bad) > 10 else ""


def validation_index(folder, index: ImageIndex) -> ImageIndex:
    """train's --val-data, checked before the training: it opens, has
    ``index``'s classes and every image's header opens (a bad image would
    otherwise stop the run after the training)."""
    try:
        val_index = open_index(folder)
    except DataError as err:
        raise DataError(f"--val-data: {err}") from None
    if val_index.classes != index.classes:
        raise UserError(f"--val-data classes {val_index.classes[:5]}... differ from --data's")
    bad = unreadable_headers(val_index)
    if bad:
        raise DataError(f"--val-data {folder}: {len(bad)} unreadable image(s), first {val_index.file(min(bad))}; "
                        f"fix or remove them")
    return val_index
