import pytest
import torch

from unseen_fast import _C

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


CPU_PATHS = ["avx512", "avx2", "portable"]  # best first: a CPU runs every path after its best


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request):
    """Runs a test once per CPU score path this CPU can run (portable on
    every machine, so a vector-capable development machine cannot hide a
    failure of the path other users get)."""
    if request.param != "portable" and not _C.build_info()[f"cpu_{request.param}"]:
        pytest.skip(f"this CPU has no {request.param.upper()}")
    before = _C.cpu_path()  # portable under UNSEEN_FAST_CPU_SIMD=0
    _C.set_cpu_path(request.param)
    yield request.param
    _C.set_cpu_path(before)


@pytest.fixture
def gen():
    """A fresh seeded generator per test; the seed is printed on failure."""
    seed = torch.randint(0, 2**31 - 1, ()).item()
    print(f"generator seed {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory):
    """130 real CIFAR-10 JPEGs (13 per class): sizes that divide nothing."""
    from data_fixtures import copy_subset

    return copy_subset(tmp_path_factory.mktemp("small") / "train", per_class=13)


@pytest.fixture(scope="session")
def square_folder(tmp_path_factory):
    """36 CIFAR images upscaled to 96x96 JPEGs (large-image transforms)."""
    from data_fixtures import upscaled_folder

    return upscaled_folder(tmp_path_factory.mktemp("square") / "train", (96, 96), per_class=12)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def small_index(small_folder):
    from unseen_fast.data import ImageIndex

    return ImageIndex.from_folder(small_folder)
