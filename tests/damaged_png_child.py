"""Run by tests/test_data_loaders.py in a child process, because the failure
it guards against is a segfault (torchvision's decode_png on any libpng
error, DALI's decoder on a PNG cut short), which would end the whole pytest
run instead of failing one test.

Usage: python damaged_png_child.py FOLDER BACKEND [BACKEND ...]
Prints one JSON line: the fuzzed decodes' outcomes and, per backend, the ids
delivered and the (id, reason) of the files skipped."""
import io
import json
import sys

import numpy as np
import torch
from PIL import Image

from data_fixtures import png16_bytes
from unseen_fast.data import ImageIndex, make_loader
from unseen_fast.data.decode import decode_bytes
from unseen_fast.data.errors import BadImageError


def damaged_pngs(count: int, seed: int = 0):
    """8-bit RGB / gray / palette and 16-bit RGB PNGs with 1-5 random bytes changed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:40, :40]
    smooth = Image.fromarray(np.stack([x * 6, y * 6, (x + y) * 3], -1).astype(np.uint8))
    for trial in range(count):
        if trial % 4 == 3:
            data = bytearray(png16_bytes(rng.integers(0, 65536, (20, 20, 3), dtype=np.uint16)))
        else:
            buffer = io.BytesIO()
            smooth.convert(["RGB", "L", "P"][trial % 4]).save(buffer, "PNG")
            data = bytearray(buffer.getvalue())
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(8, len(data)))] = int(rng.integers(0, 256))
        yield data


def main(folder: str, backends: list[str]) -> dict:
    outcomes = {"decoded": 0, "bad": 0}
    for data in damaged_pngs(200):
        try:
            pixels = decode_bytes(torch.frombuffer(data, dtype=torch.uint8), "fuzzed.png")
            assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3
            outcomes["decoded"] += 1
        except BadImageError:
            outcomes["bad"] += 1
    index = ImageIndex.from_folder(folder)
    delivered = {}
    for backend in backends:
        batches = make_loader(index, np.arange(len(index)), train=True, batch_size=256, image_size=32,
                              backend=backend, cache_dir=f"{folder}-cache-{backend}", skip_bad=True)
        ids = sorted(int(i) for _, _, batch_ids in batches for i in batch_ids)
        delivered[backend] = {"ids": ids, "skipped": sorted((err.sample_id, err.reason) for err in batches.skipped)}
    return {"fuzzed": outcomes, "backends": delivered}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
