"""Op registration: opcheck, torch.compile, build facts, the CLI."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import unseen_fast
from unseen_fast import ops


def sample_calls(device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(33, 17, generator=g).to(device)
    labels = torch.randint(0, 17, (33,), generator=g).to(device)
    scores = torch.rand(500, generator=g).to(device)
    classes = torch.randint(0, 5, (500,), generator=g).to(device)
    exclude = (torch.rand(500, generator=g) < 0.2).to(device)
    codes = ops.method_codes(ops.METHODS)
    calls = [
        (torch.ops.unseen_fast.score.default, (logits, labels, codes, True)),
        (torch.ops.unseen_fast.score.default, (logits.to(torch.bfloat16), None, [0, 2, 3], True)),
        (torch.ops.unseen_fast.normalize.default, (scores,)),
        (torch.ops.unseen_fast.select_topk.default, (scores, 120, None, False, None, False)),
        (torch.ops.unseen_fast.select_topk.default, (scores, 120, classes, True, exclude, True)),
    ]
    if device.type == "cpu":
        calls.append((torch.ops.unseen_fast._score_tree.default, (logits, labels, codes, 3)))
    return calls


def test_opcheck(device):
    for op, args in sample_calls(device):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(device):
    def prune_step(logits, labels):
        scores = ops.score(logits, labels, ["entropy", "loss"])
        importance = ops.normalize(scores[:, 0].contiguous())
        return ops.select_topk(importance, 10, labels=labels, balanced=True), scores

    compiled = torch.compile(prune_step, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 5, generator=g).to(device)
    labels = torch.randint(0, 5, (64,), generator=g).to(device)
    got, got_scores = compiled(logits, labels)
    want, want_scores = prune_step(logits, labels)
    assert torch.equal(got, want) and torch.equal(got_scores, want_scores)


def test_build_info_keys():
    info = unseen_fast.build_info()
    assert isinstance(info["cuda_compiled"], bool)
    assert info["torch"] == torch.__version__ and info["cuda"] == torch.version.cuda
    assert "dali" in info and "cuda_devices" in info


@pytest.mark.skipif(os.environ.get("UNSEEN_FAST_CUDA") == "0", reason="CUDA build disabled by UNSEEN_FAST_CUDA=0")
def test_cuda_kernels_compiled_when_nvcc_is_present():
    # Where setup.py looks for nvcc: $CUDA_HOME, /usr/local/cuda, then PATH.
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    nvcc = any(h and os.path.exists(os.path.join(h, "bin", "nvcc")) for h in homes) or shutil.which("nvcc")
    if not nvcc or torch.version.cuda is None:
        pytest.skip("no nvcc or a CPU-only torch: CUDA kernels are not expected")
    assert unseen_fast.build_info()["cuda_compiled"], "nvcc is present but the CUDA kernels were not built"
    # The CUDA implementations are registered even without a visible GPU.
    for name in ("score", "normalize", "select_topk"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"unseen_fast::{name}", "CUDA")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unseen_fast.cli", *args], capture_output=True, text=True,
                          check=False)


def test_cli_info_json():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {"cuda_compiled", "torch", "cuda", "dali", "cuda_devices"} <= set(info)


def test_cli_version():
    from unseen_fast import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"unseen-fast {__version__}\n", result.stdout + result.stderr


def test_cli_demo():
    result = run_cli("demo", "--samples", "2000", "--classes", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept the 1400 highest-entropy samples of 2000 (--keep 0.7); matches the reference selection: True" \
        in result.stdout
    one = run_cli("demo", "--samples", "1", "--classes", "2")  # kept none before: int(0.7)
    assert one.returncode == 0 and "kept the highest-entropy sample of 1 " in one.stdout, one.stdout + one.stderr
