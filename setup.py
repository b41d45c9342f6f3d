"""Builds unseen_fast._C: CPU kernels always, CUDA kernels whenever nvcc and a
CUDA build of torch are present (no GPU needed). UNSEEN_FAST_CUDA=0|1 forces it."""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# CUDA architectures built when no GPU is visible (so no device query); one
# file shared with CMakeLists.txt.
with open(os.path.join(ROOT, "csrc", "cuda_archs.txt")) as handle:
    DEFAULT_ARCHS = handle.read().strip()


def find_cuda_home():
    # nvcc may be reached through /usr/local/bin; torch would then guess
    # CUDA_HOME=/usr/local. Prefer an explicit setting, then the real toolkit.
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


# Settle CUDA_HOME before torch.utils.cpp_extension reads it at import.
CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def want_cuda(cuda_home):
    forced = os.environ.get("UNSEEN_FAST_CUDA")
    available = cuda_home is not None and torch.version.cuda is not None
    if forced == "0":
        return False
    if forced == "1":
        if not available:
            raise RuntimeError(
                f"UNSEEN_FAST_CUDA=1 but CUDA cannot be built: nvcc under CUDA_HOME={cuda_home!r}, "
                f"torch CUDA version {torch.version.cuda!r}")
        return True
    return available


def build_extension():
    cuda_home = CUDA_HOME
    with_cuda = want_cuda(cuda_home)
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # torch supplies the C++ standard (C++20). -fopenmp: at::parallel_for is an
    # inline OpenMP loop, single-threaded when the extension lacks it.
    cxx = ["-O3", "-fopenmp"]
    define_macros = []
    archs = ""
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "detected from the visible GPU")
        # host files (checks, allocation) by the C++ compiler, kernels by nvcc
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("UNSEEN_FAST_WITH_CUDA", None))
    define_macros.append(("UNSEEN_FAST_CUDA_ARCHS", f'"{archs}"'))
    print(f"unseen_fast build: torch {torch.__version__}, CUDA kernels "
          f"{'ON' if with_cuda else 'OFF'} (CUDA_HOME={cuda_home}, archs={archs or '-'}), "
          f"sources: {', '.join(sources)}", flush=True)
    ext_type = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    extra = {"cxx": cxx}
    if with_cuda:
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    return ext_type("unseen_fast._C", sources, define_macros=define_macros,
                    extra_compile_args=extra, extra_link_args=["-fopenmp"],
                    include_dirs=[os.path.join(ROOT, "csrc")])


setup(
    ext_modules=[build_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
