"""Data layer: dataset index, loaders (DALI, torchvision, decoded cache) and
data checks. Sample id = position in an ImageIndex; every batch carries ids."""
from unseen_fast.data.errors import BadImageError, DataError
from unseen_fast.data.index import BUILTIN_DATASETS, IMAGE_EXTENSIONS, ImageIndex, open_index
from unseen_fast.data.loader import BACKENDS, check_backend, choose_backend, make_loader, prepare_cache
from unseen_fast.data.resident import release_resident

__all__ = ["BACKENDS", "BUILTIN_DATASETS", "BadImageError", "DataError", "IMAGE_EXTENSIONS", "ImageIndex",
           "check_backend", "choose_backend", "make_loader", "open_index", "prepare_cache", "release_resident"]
