"""check-data: decode every image of a dataset and report what is wrong."""
from __future__ import annotations

from collections import Counter

import numpy as np

from unseen_fast.data.decode import decode_every_image
from unseen_fast.data.index import ImageIndex


def _size(image) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[2])


def check_data(index: ImageIndex, *, workers: int | None = None, progress: bool = False) -> dict:
    """Decode every image of ``index`` (in parallel) and describe the dataset.

    Returns
    -------
    dict with ``root``, ``num_samples``, ``classes`` ({name: count}),
    ``image_sizes`` (min/max height and width and the most common (h, w)),
    ``ignored_files`` (non-image files found while scanning), ``bad_files``
    ([{"path", "sample_id", "reason"}]) and ``ok`` (no bad files).
    """
    sizes: list[tuple[int, int]] = []
    bad = []
    if index.in_memory:
        sizes = [tuple(index.images.shape[1:3])] * len(index)
    else:
        for _, results, failed in decode_every_image(index, _size, workers=workers, progress=progress,
                                                     desc="checking images"):
            sizes.extend(size for size in results if size is not None)
            bad.extend(dict(path=index.file(i), sample_id=i, reason=reason) for i, reason in failed)
    report = dict(
        root=index.root,
        num_samples=len(index),
        num_classes=index.num_classes,
        classes=dict(zip(index.classes, index.class_counts().tolist())),
        image_sizes=_size_summary(sizes),
        ignored_files=index.ignored,
        bad_files=bad,
        ok=not bad,
    )
    return report


def _size_summary(sizes) -> dict:
    if not sizes:
        return {}
    array = np.asarray(sizes)
    common = Counter(map(tuple, sizes)).most_common(5)
    return dict(min_height=int(array[:, 0].min()), max_height=int(array[:, 0].max()),
                min_width=int(array[:, 1].min()), max_width=int(array[:, 1].max()),
                median_height=float(np.median(array[:, 0])), median_width=float(np.median(array[:, 1])),
                most_common=[dict(height=h, width=w, count=c) for (h, w), c in common])


def format_report(report: dict) -> str:
    """The human-readable form of :func:`check_data`'s report."""
    where = report["root"] if report["root"] is not None else "builtin:digits (in memory)"
    lines = [f"dataset {where}: {report['num_samples']} images in {report['num_classes']} classes"]
    counts = list(report["classes"].values())
    lines.append(f"  images per class: min {min(counts)}, max {max(counts)}")
    sizes = report["image_sizes"]
    if sizes:
        common = ", ".join(f"{s['height']}x{s['width']} ({s['count']})" for s in sizes["most_common"])
        lines.append(f"  image sizes (HxW): {sizes['min_height']}-{sizes['max_height']} x "
                     f"{sizes['min_width']}-{sizes['max_width']}; most common {common}")
    if report["ignored_files"]:
        shown = ", ".join(report["ignored_files"][:5])
        lines.append(f"  ignored {len(report['ignored_files'])} non-image file(s): {shown}"
                     + (" ..." if len(report["ignored_files"]) > 5 else ""))
    if report["bad_files"]:
        lines.append(f"  {len(report['bad_files'])} unreadable image(s):")
        lines.extend(f"    {b['path']}: {b['reason']}" for b in report["bad_files"])
    else:
        lines.append("  every image decoded")
    return "\n".join(lines)
