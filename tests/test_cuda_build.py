"""The CUDA sources, checked on any machine with nvcc (no GPU needed):
kernels keep their state in registers (no stack frame, no spill), the row
kernels' hot loops issue their loads 16 bytes wide and spend few
instructions per logit (read off the SASS), no C++ exception can be thrown
in nvcc-compiled code, and the extension refuses a torch it was not built
against. `python tests/test_cuda_build.py` prints the SASS figures."""
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


def ptxas_report(source, arch, cubin=os.devnull):
    from torch.utils.cpp_extension import include_paths

    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    command = [nvcc, f"-arch=sm_{arch}", "-std=c++20", "-O3", "--expt-relaxed-constexpr",
               "-Xptxas", "-v", "-cubin", "-o", str(cubin), f"-I{ROOT / 'csrc'}",
               *(f"-I{path}" for path in include_paths()), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def find_cuobjdump():
    """The toolkit's, else the one triton ships beside torch (the CUDA 13.0
    toolkit here has none)."""
    nvcc = find_nvcc()
    candidates = [Path(nvcc).parent / "cuobjdump"] if nvcc else []
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    found = next((str(c) for c in candidates if c.exists()), shutil.which("cuobjdump"))
    if found is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton) on this machine")
    return found


# The unit-stride row kernels whose loops with 16-byte global loads are
# counted: kernel name fragment -> logits per 16-byte load.
ROW_KERNELS = {"score_kernelIf": 4, "score_kernelI13__nv_bfloat16": 8, "score_kernelI6__half": 8,
               "loss_kernelIf": 4, "loss_kernelI13__nv_bfloat16": 8, "loss_kernelI6__half": 8}
# 16-byte chunks a thread loads before it folds them, as row_reduce.cuh sets it
FOLD_CHUNKS = int(re.search(r"constexpr int kFoldChunks = (\d+);",
                            (ROOT / "csrc" / "cuda" / "row_reduce.cuh").read_text()).group(1))


def sass_functions(source, tmp_dir, arch="90"):
    """{kernel name, namespace prefix removed: its SASS} of `source`,
    compiled for sm_`arch` and read by cuobjdump."""
    cubin = Path(tmp_dir) / f"{source.stem}_sm{arch}.cubin"
    ptxas_report(source, arch, cubin)
    sass = subprocess.run([find_cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    functions = {}
    for function in re.split(r"\n\s*Function : ", sass)[1:]:
        name = function.split("\n", 1)[0].strip()
        functions[re.sub(r"_ZN11unseen_fast4cuda\d+_GLOBAL__N__\w+?_cu_\w{8}\d+", "", name)] = function
    return functions


def wide_loops(source, tmp_dir, arch="90"):
    """{kernel: [(instructions, 16-byte loads, logits per 16-byte load)]}:
    the loops of each unit-stride row kernel of `source` that load only 16
    bytes wide (no scalar global load: the whole folds of row_state, the
    whole chunks of the loss kernel's gradient sweep), read off cuobjdump's
    SASS, most 16-byte loads first. Their only branches skip rare rows
    (NaN, +-inf), so a body's length is what an iteration issues on the
    common path, give or take those few instructions. The guarded loops
    for the rest of a row (at most one fold or chunk per row here) are not
    listed."""
    loops = {}
    for name, function in sass_functions(source, tmp_dir, arch).items():
        width = next((w for fragment, w in ROW_KERNELS.items() if fragment in name), None)
        if width is None or not re.search(r"Li\d+ELb1E", name):  # unit stride only
            continue
        code = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", function)
        addresses = [int(a, 16) for a, _ in code]
        found = []
        for end, (_, text) in enumerate(code):
            jump = re.search(r"BRA 0x([0-9a-f]+)", text)
            if jump and int(jump.group(1), 16) < addresses[end]:  # a backward branch closes a loop
                body = [t for _, t in code[addresses.index(int(jump.group(1), 16)):end + 1]]
                wide = sum("LDG.E.128" in t for t in body)
                scalar = sum("LDG" in t and "LDG.E.128" not in t for t in body)
                if wide and not scalar:
                    found.append((len(body), wide, width))
        loops[name] = sorted(found, key=lambda loop: (-loop[1], -loop[0]))
    return loops


def test_tile_kernel_folds_only_the_row_and_reads_it_wide(tmp_path):
    """score_tile_kernel (one thread per row of at most kOneThreadMaxCols
    columns whose pitch is not a multiple of 16 bytes) is instantiated per
    fold length, 1 to 4 float32 chunks or 1 to 2 16-bit ones, and the
    launcher picks the shortest that holds the row: a C = 10 row folds 12
    float32 or 16 bfloat16 values, not a whole fold's 16 or 32 (that
    padding was most of the per-row work). The fold's second pass is one
    MUFU.EX2 per value, so an instantiation one chunk longer issues exactly
    one chunk's more of them. Rows are read from the tile as wide as their
    pitch allows: 8-byte shared loads (LDS.64), two per chunk."""
    max_cols = int(re.search(r"constexpr int kOneThreadMaxCols = (\d+);",
                             (ROOT / "csrc" / "cuda" / "launch.h").read_text()).group(1))
    tiles = {}
    for name, function in sass_functions(ROOT / "csrc" / "cuda" / "score_kernels.cu", tmp_path).items():
        found = re.search(r"score_tile_kernelI(f|13__nv_bfloat16|6__half)Li(\d+)E", name)
        if found:
            tiles.setdefault(found.group(1), {})[int(found.group(2))] = function
    for dtype, by_chunks in tiles.items():
        per_chunk = 4 if dtype == "f" else 8
        assert sorted(by_chunks) == list(range(1, -(-max_cols // per_chunk) + 1)), (dtype, sorted(by_chunks))
        exps = {k: len(re.findall(r"\bMUFU\.EX2\b", f)) for k, f in by_chunks.items()}
        for k in sorted(exps)[1:]:
            assert exps[k] - exps[k - 1] == per_chunk, f"{dtype}: MUFU.EX2 by chunks {exps}"
        for k, function in by_chunks.items():
            wide = len(re.findall(r"\bLDS\.64\b", function))
            assert wide >= 2 * k, f"{dtype}, {k} chunks: {wide} 8-byte shared loads"
    assert sorted(tiles) == ["13__nv_bfloat16", "6__half", "f"], sorted(tiles)


@pytest.mark.parametrize("source", ["score_kernels.cu", "loss_kernels.cu"])
def test_row_kernels_hot_loops_load_wide_and_stay_short(source, tmp_path):
    """These kernels are issue-bound before they are memory-bound: an H200
    (132 SMs x 4 schedulers x ~1.98 GHz, about 1.05e12 warp instructions a
    second; 4.8 TB/s HBM, spec figures) streams at its rate only if a loop
    issues at most ~110 instructions per 16-byte load (512 bytes a warp):
    ~28 per float32 logit, ~14 per 16-bit one. Before the folds the loops
    took 62 instructions per float32 logit and 51 per 16-bit one with one
    16-byte load per iteration (static counts, scalar tail path included);
    the guard-free whole-fold loops take about 19 and 18 with a fold's 4
    loads in flight, the loss kernel's gradient sweep about 10. Fails on
    fewer loads in flight, on no guard-free loop, or on 24 instructions per
    logit in a fold (16 in the sweep); one-thread rows are folded at their
    length, so there a shorter row must issue a shorter fold."""
    loops = wide_loops(ROOT / "csrc" / "cuda" / source, tmp_path)
    # 3 dtypes x 3 shared widths (8, 32, 256 threads a row), plus one-thread
    # rows per fold length (launch_one_thread_rows: 1-4 float32 chunks, 1-2 16-bit)
    assert len(loops) == 3 * 3 + 4 + 2 * 2, sorted(loops)
    one_thread_folds = {}  # dtype -> {chunks: instructions of that fold}
    for name, found in loops.items():
        assert found, f"{name}: no loop of 16-byte loads only"
        tpr, chunks = map(int, re.search(r"Li(\d+)ELi(\d+)ELb1E", name).groups())
        assert chunks == FOLD_CHUNKS or tpr == 1, name
        if tpr == 1:
            one_thread_folds.setdefault(name.split("Li1ELi")[0], {})[chunks] = max(
                n for n, wide, _ in found if wide == chunks)
        if chunks < FOLD_CHUNKS:
            continue  # a one-thread row's fold at its length: checked below, per row
        instructions, wide, width = found[0]  # the fold of row_state: the most loads
        assert wide >= chunks, f"{name}: {wide} 16-byte loads per iteration"
        assert instructions / (wide * width) < 24, f"{name}: {instructions} instructions per {wide * width} logits"
        if name.startswith("loss"):
            assert len(found) == 2, f"{name}: no guard-free gradient sweep"
            instructions, wide, width = found[1]
            assert instructions / (wide * width) < 16, f"{name}: sweep, {instructions} per {wide * width} logits"
    # one-thread rows (C <= 16) fold their own length: each chunk less is a
    # shorter fold (C = 4 float32: 130 instructions a row against a whole
    # fold's 309 when every row folded 4 chunks)
    for dtype, folds in one_thread_folds.items():
        lengths = [folds[k] for k in sorted(folds)]
        assert len(lengths) > 1 and lengths == sorted(set(lengths)), f"{dtype}: fold instructions by chunks {folds}"


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


if __name__ == "__main__":  # the SASS figures: python tests/test_cuda_build.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for source in ("score_kernels.cu", "loss_kernels.cu"):
            for name, found in sorted(wide_loops(ROOT / "csrc" / "cuda" / source, tmp).items()):
                print(f"{name[:56]:56s}", "; ".join(f"{n} instructions, {wide} x 16 B, {n / (wide * width):.1f} per logit"
                                                    for n, wide, width in found))
