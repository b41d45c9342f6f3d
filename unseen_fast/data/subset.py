"""train --subset: the sample ids a .npy of ids or a file list of paths
names, in an index (a run's own .npy read through the run's saved index)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from unseen_fast.data.errors import DataError
from unseen_fast.data.index import INDEX_META, ImageIndex, read_file_list
from unseen_fast.data.order import as_id_array


def subset_ids(index: ImageIndex, path) -> np.ndarray:
    """Sample ids of ``index`` named by a .npy file of ids, or by a file list
    of paths (labels, if present, are ignored)."""
    if not Path(path).is_file():
        raise DataError(f"--subset {path}: {'a folder, not a file' if Path(path).is_dir() else 'no such file'}")
    if str(path).endswith(".npy"):
        try:
            ids = np.load(path)  # no pickles: a .npy of ids is plain integers
        except (ValueError, OSError, EOFError) as err:  # EOFError: an empty file
            raise DataError(f"--subset {path} is not a .npy array of sample ids: {err}") from None
        if (Path(path).parent / INDEX_META).exists():  # a run's coreset: its ids number that run's index
            return _ids_of_run(index, Path(path), ids)
        return as_id_array(ids, len(index))
    position = {p: i for i, p in enumerate(index.paths)}
    ids = []
    try:
        for lineno, rel, _ in read_file_list(path):
            if rel not in position:
                raise DataError(f"{path}:{lineno}: {rel!r} is not a sample of {index.name}")
            ids.append(position[rel])
    except UnicodeDecodeError:
        raise DataError(f"--subset {path} is neither a .npy of sample ids nor a UTF-8 file list") from None
    return as_id_array(ids, len(index))


def _ids_of_run(index: ImageIndex, path: Path, ids) -> np.ndarray:
    """Ids of a run folder's .npy (a coreset) translated into ``index``: the
    run's index may leave out unreadable files (--skip-bad) or list another
    dataset, and its ids would then name other samples here."""
    saved = ImageIndex.load(path.parent)
    ids = as_id_array(ids, len(saved))
    if saved.fingerprint == index.fingerprint:
        return ids
    position = {p: i for i, p in enumerate(index.paths)}
    missing = [saved.paths[i] for i in ids.tolist() if saved.paths[i] not in position]
    if missing:
        raise DataError(f"--subset {path}: {len(missing)} of its samples are not in {index.name}, first "
                        f"{missing[0]!r} (the run pruned {saved.name})")
    return np.array([position[saved.paths[i]] for i in ids.tolist()], dtype=np.int64)
