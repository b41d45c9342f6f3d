"""The CUDA sources, checked on any machine with nvcc (no GPU needed):
kernels keep their state in registers (no stack frame, no spill), no C++
exception can be thrown in nvcc-compiled code, and the extension refuses a
torch it was not built against."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def ptxas_report(source, arch):
    from torch.utils.cpp_extension import include_paths

    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    command = [nvcc, f"-arch=sm_{arch}", "-std=c++20", "-O3", "--expt-relaxed-constexpr",
               "-Xptxas", "-v", "-cubin", "-o", os.devnull, f"-I{ROOT / 'csrc'}",
               *(f"-I{path}" for path in include_paths()), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_there_are_cuda_sources():
    assert {p.name for p in CUDA_SOURCES} >= {"score_kernels.cu"}


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_kernels_use_no_stack_and_no_spills(source):
    archs = (ROOT / "csrc" / "cuda_archs.txt").read_text().strip().split(";")
    for arch in (a.replace(".", "").split("+")[0] for a in archs):
        report = ptxas_report(source, arch)
        frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                            report)
        assert frames, f"no ptxas resource report for {source.name}:\n{report[-2000:]}"
        # a kernel name precedes each report: name the offenders
        offenders = [line for line in report.splitlines()
                     if re.search(r"([1-9]\d*) bytes (stack frame|spill)", line)]
        assert not offenders, (f"{source.name} sm_{arch}: kernels with local memory "
                               f"(stack frame or spills):\n{report[-3000:]}")


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_nvcc_compiled_code_cannot_throw(source):
    """Checks and allocation live in the host *_ops.cpp files; a .cu file only
    exports noexcept launchers returning cudaError_t (an exception thrown in
    nvcc-compiled code crashed the process on the GPU machine)."""
    text = source.read_text()
    for banned in ("TORCH_CHECK", "ATen/", "torch/", "throw ", "C10_CUDA_CHECK",
                   "C10_CUDA_KERNEL_LAUNCH_CHECK", "at::Tensor"):
        assert banned not in text, f"{source.name} contains {banned!r}"
    launchers = re.findall(r"cudaError_t (\w+)\(", (ROOT / "csrc" / "cuda" / "launch.h").read_text())
    defined = {name: signature for name, signature in
               re.findall(r"^cudaError_t (\w+)(\([^{]*)\{", text, re.M) if name in launchers}
    assert defined, f"{source.name} defines none of launch.h's launchers"
    for name, signature in defined.items():
        assert "noexcept" in signature, f"{source.name}: {name} must be noexcept"


def test_extension_refuses_another_torch_version():
    code = ("import torch; torch.__version__ = '1.0.0'\n"
            "try:\n    import unseen_fast.ops\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    from unseen_fast._extension import _BUILT_FOR as built

    assert f"built against torch {built} but torch 1.0.0 is loaded; rebuild it" in out
