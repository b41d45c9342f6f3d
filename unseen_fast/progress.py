"""Progress of long loops (training epochs): a bar where one can be drawn,
else a log line every PROGRESS_LOG_EVERY_S seconds."""
from __future__ import annotations

import logging
import time

from unseen_fast.constants import can_draw_bars

log = logging.getLogger("unseen_fast.train")

PROGRESS_LOG_EVERY_S = 30.0  # progress lines in logs that are not a terminal


def progress_of(loader, enabled: bool, desc: str):
    """A bar where one can be drawn (a terminal, a Jupyter notebook), else a
    log line every PROGRESS_LOG_EVERY_S seconds; nothing when not enabled."""
    if not enabled:
        return loader
    if can_draw_bars():
        from tqdm.auto import tqdm  # a notebook widget in Jupyter, a text bar on a terminal

        return tqdm(loader, desc=desc, unit="batch", leave=False)
    return logged_progress(loader, desc, PROGRESS_LOG_EVERY_S)


def logged_progress(loader, desc: str, every_s: float):
    """Yield the batches of ``loader``, logging batches and samples done,
    img/s and the time left at most every ``every_s`` seconds (for logs
    that are not a terminal: minutes without a line look like a hang)."""
    total, seen = len(loader), 0
    start = last = time.perf_counter()
    for done, batch in enumerate(loader, 1):
        yield batch
        seen += len(batch[1])  # a shape, not a value: no wait for the device
        now = time.perf_counter()
        if now - last >= every_s and done < total:
            log.info("%s: %d/%d batches, %d samples, %.0f img/s, about %.0f s left", desc, done, total, seen,
                     seen / (now - start), (now - start) / done * (total - done))
            last = now
