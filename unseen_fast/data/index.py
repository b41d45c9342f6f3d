"""The dataset index: which files (or in-memory images) exist, their labels,
and the sample id of each (its position in a fixed, sorted order)."""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from unseen_fast.data.errors import DataError
from unseen_fast.data.order import as_id_array
from unseen_fast.data.scan import IMAGE_EXTENSIONS, scan_folder
from unseen_fast.rundir import make_folder, read_json, reading, write_text

INDEX_LIST = "index.txt"  # "relative/path label" lines: DALI's file_list format
INDEX_META = "index.json"


BUILTIN_DATASETS = ("builtin:digits",)


def open_index(data, *, file_list=None) -> "ImageIndex":
    """The index a user names on the command line: "builtin:digits", an
    ImageFolder root, or (with ``file_list``) a file list under ``data``."""
    if str(data).startswith("builtin:"):
        if str(data) not in BUILTIN_DATASETS:
            raise DataError(f"unknown built-in dataset {data!r}; known: {', '.join(BUILTIN_DATASETS)}")
        if file_list is not None:
            raise DataError(f"--file-list {file_list} names files under a folder; the built-in dataset {data} "
                            f"has none (drop --file-list, or give --data the folder the list is under)")
        return ImageIndex.digits()
    if file_list is not None:
        return ImageIndex.from_file_list(file_list, root=data)
    return ImageIndex.from_folder(data)


class ImageIndex:
    """Every sample of a dataset in a stable order: sample id = position.

    Attributes
    ----------
    root : str or None
        Folder the relative ``paths`` are under (None for in-memory images).
    paths : list of str
        (N,) relative paths with "/" separators (names only for in-memory data).
    labels : numpy.ndarray
        (N,) int64 class of each sample, in ``range(len(classes))``.
    classes : list of str
        Class names; label ``c`` is ``classes[c]``.
    images : numpy.ndarray or None
        (N, H, W, 3) uint8 RGB pixels for in-memory datasets, else None.
    source : str
        "folder", "file_list" or "digits".
    ignored : list of str
        Files under ``root`` that were skipped because they are not images.
    """

    def __init__(self, *, root, paths, labels, classes, source, images=None, ignored=()):
        self.root = None if root is None else str(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.source = source
        self.images = images
        self.ignored = list(ignored)
        if len(self.labels) != len(self.paths):
            raise DataError(f"index has {len(self.paths)} paths but {len(self.labels)} labels")
        if images is not None and len(images) != len(self.paths):
            raise DataError(f"index has {len(self.paths)} paths but {len(images)} images")
        # validated once here, so the ops on the GPU need no per-call label check (a host sync)
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(self.classes)))
        if len(bad):
            raise DataError(f"sample {self.paths[bad[0]]!r} has label {self.labels[bad[0]]}, outside "
                            f"[0, {len(self.classes)}) for {len(self.classes)} classes")
        self._fingerprint = None
        self._content_fingerprint = None

    # ----------------------------------------------------------- constructors
    @classmethod
    def from_folder(cls, root, *, workers: int | None = None) -> "ImageIndex":
        """Scan an ImageFolder tree: ``root/<class>/**/<image>``.

        Classes are the sorted sub-folder names, files are sorted within each
        class, and only image extensions count (case-insensitive). Class
        folders are scanned in parallel (``workers`` threads).
        """
        root_path = Path(root)
        classes, paths, labels, ignored = scan_folder(root_path, workers=workers)
        return cls(root=str(root_path), paths=paths, labels=labels, classes=classes,
                   source="folder", ignored=ignored)

    @classmethod
    def from_file_list(cls, list_file, *, root=None, classes=None, check_files: bool = True) -> "ImageIndex":
        """Read "relative/path label" lines (DALI's file_list format).

        ``root`` defaults to the list file's folder; blank lines and lines
        starting with "#" are skipped. ``classes`` (names for labels 0..C-1)
        defaults to the label numbers as strings. With ``check_files`` every
        listed file must exist.
        """
        list_path = Path(list_file)
        if not list_path.is_file():
            raise DataError(f"file list {list_file} {'is a folder, not a file' if list_path.is_dir() else 'does not exist'}")
        root = Path(root) if root is not None else list_path.parent
        paths, labels, first_line = [], [], {}
        for lineno, path, label in read_file_list(list_path):
            if label is None:
                raise DataError(f"{list_file}:{lineno}: expected 'relative/path label', got {path!r}")
            if label < 0:
                raise DataError(f"{list_file}:{lineno}: label must be >= 0, got {label}")
            if path in first_line:  # one image twice: one sample in two folds, scored by a model that saw it
                raise DataError(f"{list_file}:{lineno}: {path!r} is listed again (first on line {first_line[path]})")
            first_line[path] = lineno
            paths.append(path)
            labels.append(label)
        if not paths:
            raise DataError(f"file list {list_file} lists no images")
        num_classes = max(labels) + 1
        if classes is None:
            # the labels that occur, in order, become ids 0..C-1 and their numbers the class names
            # (label 1e9 is one class, not 1e9; coreset.txt writes the numbers back: listed_labels)
            numbers = sorted(set(labels))
            compact = {number: i for i, number in enumerate(numbers)}
            labels = [compact[label] for label in labels]
            classes = [str(number) for number in numbers]
        elif len(classes) < num_classes:
            raise DataError(f"file list {list_file} uses label {num_classes - 1} but only {len(classes)} class names were given")
        if check_files:
            with ThreadPoolExecutor(16) as pool:
                exists = list(pool.map(lambda p: (root / p).is_file(), paths, chunksize=4096))
            missing = [p for p, ok in zip(paths, exists) if not ok]
            if missing:
                raise DataError(f"{len(missing)} file(s) in {list_file} do not exist under {root}, "
                                f"first: {root / missing[0]}")
        return cls(root=str(root), paths=paths, labels=labels, classes=classes, source="file_list")

    @classmethod
    def digits(cls) -> "ImageIndex":
        """scikit-learn's handwritten digits: 1,797 8x8 images in 10 classes,
        shipped inside scikit-learn (no download), as in-memory RGB images."""
        from sklearn.datasets import load_digits

        data = load_digits()
        gray = np.rint(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        images = np.repeat(gray[..., None], 3, axis=3)
        labels = data.target.astype(np.int64)
        paths = [f"digits/{label}/{i:04d}" for i, label in enumerate(labels)]
        return cls(root=None, paths=paths, labels=labels, classes=[str(d) for d in range(10)],
                   source="digits", images=np.ascontiguousarray(images))

    def subset(self, ids) -> "ImageIndex":
        """A new index of the samples ``ids`` (in that order), same classes:
        sample id i of the subset is ``ids[i]`` here."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise DataError(f"subset id out of range [0, {len(self)})")
        return ImageIndex(root=self.root, paths=[self.paths[i] for i in ids.tolist()], labels=self.labels[ids],
                          classes=self.classes, source=self.source,
                          images=None if self.images is None else np.ascontiguousarray(self.images[ids]))

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (f"ImageIndex({self.source}, {len(self)} samples, {len(self.classes)} classes, "
                f"root={self.root!r})")

    @property
    def name(self) -> str:
        """The dataset as messages name it: its folder, or which built-in one."""
        return dataset_name(self.root, self.source)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def file(self, sample_id: int) -> str:
        """The absolute path of one sample (its name for in-memory data)."""
        if self.root is None:
            return self.paths[sample_id]
        return os.path.join(self.root, self.paths[sample_id])

    def native_size(self, samples: int = 256) -> tuple[int, int]:
        """Median (height, width) over up to ``samples`` evenly spaced files,
        read from their headers: one odd image does not change it."""
        if self.images is not None:
            return tuple(self.images.shape[1:3])
        ids = np.unique(np.linspace(0, len(self) - 1, min(samples, len(self))).astype(int))
        sizes = self.image_sizes(ids, skip_unreadable=True)  # unreadable files are reported by the header pass
        if not len(sizes):
            raise DataError(f"none of {len(ids)} sampled images of {self.name} can be read, e.g. "
                            f"{self.file(int(ids[0]))}")
        height, width = np.median(sizes, axis=0)
        return int(height), int(width)

    def image_sizes(self, ids, *, skip_unreadable: bool = False) -> np.ndarray:
        """(n, 2) (height, width) of the given samples, from their file headers."""
        from unseen_fast.data.decode import image_size

        sizes = []
        for i in ids:
            try:
                sizes.append(image_size(self.file(int(i))))
            except Exception as err:  # Pillow raises several types for unreadable headers
                if not skip_unreadable:
                    raise DataError(f"cannot read the size of {self.file(int(i))}: {err}") from None
        return np.array(sizes, dtype=np.int64).reshape(-1, 2)

    def listed_labels(self, ids) -> list[str]:
        """The label of each of ``ids`` as a text file list should give it:
        the number a file list used (its class name) for a file-list index
        whose classes are those numbers, else the class id."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.source == "file_list" and all(name.isdigit() for name in self.classes):
            return [self.classes[label] for label in self.labels[ids].tolist()]
        return [str(label) for label in self.labels[ids].tolist()]

    def class_counts(self) -> np.ndarray:
        """(C,) int64 number of samples per class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    @property
    def fingerprint(self) -> str:
        """sha256 of the listing (classes, paths, labels; pixels for in-memory
        data): equal fingerprints mean equal sample ids."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(("\n".join(self.classes) + "\n\n").encode())
            digest.update("".join(f"{p}\t{l}\n" for p, l in zip(self.paths, self.labels.tolist())).encode())
            if self.images is not None:
                digest.update(self.images.tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @property
    def content_fingerprint(self) -> str:
        """The listing's fingerprint plus every file's size and modification
        time: it changes when an image is replaced under the same name, so
        what is derived from the pixels (the decoded cache, shared stage-1
        models and scores) is keyed by it. One stat per file, on threads."""
        if self._content_fingerprint is None:
            digest = hashlib.sha256(self.fingerprint.encode())
            if self.root is not None:  # in-memory data: the fingerprint holds the pixels
                chunks = [range(start, min(start + 4096, len(self))) for start in range(0, len(self), 4096)]
                with ThreadPoolExecutor(16) as pool:
                    for packed in pool.map(self._stat_chunk, chunks):
                        digest.update(packed)
            self._content_fingerprint = digest.hexdigest()
        return self._content_fingerprint

    def _stat_chunk(self, ids: range) -> bytes:
        values = []
        for i in ids:
            try:
                status = os.stat(self.file(i))
            except OSError as err:
                raise DataError(f"cannot read {self.file(i)}: {err.strerror}") from None
            values.extend((status.st_size, status.st_mtime_ns))
        return np.array(values, dtype=np.int64).tobytes()

    # ------------------------------------------------------- run directory
    def save(self, run_dir, *, images_may_change: bool = False) -> None:
        """Write ``index.txt`` (file_list format) and ``index.json`` into
        ``run_dir``. An index already saved there must be the same listing
        (a different one raises instead of being overwritten) and the same
        images (check_images)."""
        run_dir = Path(run_dir)
        self.refuse_inside(run_dir)
        make_folder(run_dir)
        meta_path = run_dir / INDEX_META
        if meta_path.exists():
            saved = read_json(meta_path)
            if saved.get("fingerprint") != self.fingerprint:
                raise DataError(f"{meta_path} holds a different dataset index ({saved.get('num_samples')} samples "
                                f"from {dataset_name(saved.get('root'), saved.get('source'))}); refusing to "
                                f"overwrite it: use a new run directory")
            self.check_images(run_dir, may_change=images_may_change)
            return
        meta = dict(source=self.source, root=self.root, classes=self.classes,
                    num_samples=len(self), fingerprint=self.fingerprint, content_fingerprint=self.content_fingerprint)
        write_text(run_dir / INDEX_LIST,
                      "".join(f"{p} {l}\n" for p, l in zip(self.paths, self.labels.tolist())))
        write_text(meta_path, json.dumps(meta, indent=1))

    def check_images(self, run_dir, *, may_change: bool) -> None:
        """Raise a DataError when the files of this listing are not the ones
        the run in ``run_dir`` saved (another folder with the same names, an
        image replaced: its models came from the old pixels), unless
        ``may_change`` (nothing derived from the pixels yet, e.g. a run that
        stopped on an undecodable image, now replaced): then the run's
        index takes the new images. By size and modification time."""
        meta_path = Path(run_dir) / INDEX_META
        saved = read_json(meta_path)
        if saved.get("content_fingerprint", self.content_fingerprint) == self.content_fingerprint:
            return  # (an index saved before the field existed is not checked)
        if not may_change:
            raise DataError(f"the images under {self.name} are not the ones the run in {run_dir} started from (a "
                            f"file's size or modification time differs: an image replaced, another folder with "
                            f"the same names, or a copy that did not keep modification times); use a new run "
                            f"directory")
        write_text(meta_path, json.dumps(dict(saved, content_fingerprint=self.content_fingerprint), indent=1))

    def refuse_inside(self, folder, option: str = "the output folder") -> None:
        """Raise a DataError if ``folder`` (an output folder, named by
        ``option``) lies inside the dataset's root: listed again, its files
        would become a class. (A file list names its files: any folder will
        do there.)"""
        if self.source != "folder":
            return
        root, inside = Path(self.root).resolve(), Path(folder).resolve()
        if inside.is_relative_to(root):
            where = inside.relative_to(root).parts
            became = f"images of a class {where[0]!r}" if where else "a class folder"
            raise DataError(f"{option} {folder} lies inside the dataset {self.root}: listed again, its "
                            f"files would be {became}; put it outside")

    @classmethod
    def load(cls, run_dir) -> "ImageIndex":
        """Read an index saved by :meth:`save`, checking its fingerprint."""
        run_dir = Path(run_dir)
        meta_path = run_dir / INDEX_META
        if not meta_path.exists():
            raise DataError(f"no saved dataset index in {run_dir} (missing {INDEX_META})")
        meta = read_json(meta_path)
        paths, labels = [], []
        with reading(run_dir / INDEX_LIST), open(run_dir / INDEX_LIST, encoding="utf-8") as handle:
            for line in handle:
                path, label = line.rstrip("\n").rsplit(" ", 1)
                paths.append(path)
                labels.append(int(label))
        if meta["source"] == "digits":  # names "digits/<label>/<id>": the full set or a subset of it
            index = cls.digits()
            if len(paths) != len(index):
                index = index.subset([int(path.rsplit("/", 1)[1]) for path in paths])
            # the pixels are built in; the labels are the run's (a user may have relabelled them)
            index = cls(root=None, paths=paths, labels=labels, classes=index.classes, source=index.source,
                        images=index.images)
        else:
            index = cls(root=meta["root"], paths=paths, labels=labels, classes=meta["classes"],
                        source=meta["source"])
        if index.fingerprint != meta["fingerprint"]:
            raise DataError(f"the dataset index in {run_dir} does not match its fingerprint "
                            f"(files edited or truncated)")
        return index

    def assert_listed_as_in(self, run_dir) -> None:
        """assert_same_listing against the index saved in ``run_dir``, if any."""
        if (Path(run_dir) / INDEX_META).exists():
            ImageIndex.load(run_dir).assert_same_listing(self)

    def assert_same_listing(self, other: "ImageIndex") -> None:
        """Raise a DataError describing the first difference if ``other`` (for
        example a fresh scan at resume time) lists different samples."""
        if self.fingerprint == other.fingerprint:
            return
        if self.classes != other.classes:
            diff = sorted(set(self.classes) ^ set(other.classes))[:5]
            raise DataError(f"the dataset changed: classes differ ({len(self.classes)} saved, "
                            f"{len(other.classes)} now; e.g. {diff})")
        saved, now = set(self.paths), set(other.paths)
        gone, new = sorted(saved - now), sorted(now - saved)
        if gone or new:  # named, not "sample 17 was a, is now b" for every later sample
            raise DataError(f"the dataset changed: {len(gone)} file(s) gone{f', first {gone[0]!r}' if gone else ''}, "
                            f"{len(new)} new{f', first {new[0]!r}' if new else ''}")
        for i, (a, b) in enumerate(zip(self.paths, other.paths)):
            if a != b or self.labels[i] != other.labels[i]:
                raise DataError(f"the dataset changed: sample {i} was {a!r} (label {self.labels[i]}), is now {b!r} "
                                f"(label {other.labels[i]})")


def dataset_name(root, source) -> str:
    """A dataset as messages name it: its folder, or which built-in one."""
    return root or f"the built-in {source} dataset"


def read_file_list(path):
    """(line number, relative path, label or None) of every line of a
    "relative/path label" file list (DALI's file_list format; the label is
    optional here), skipping blank lines and lines starting with "#"."""
    with open(path, encoding="utf-8-sig") as handle:  # a BOM (Windows editors) is not part of the first path
        for lineno, line in enumerate(handle, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                yield lineno, parts[0], int(parts[1])
            else:
                yield lineno, text, None
