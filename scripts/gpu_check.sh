#!/usr/bin/env bash
# What a session lent the GPU machine should run. A task gets 15 minutes of
# device time in all (the machine's start, every call and every idle wait
# count), so the part that matters most is ONE call whose step limits add up
# to under 9.5 minutes (first: 120+40+200+100+110 = 570 s); a slow step
# cannot cut off the later ones. Call `second` only if status still shows
# at least 7 minutes (within 30 s of the first, the machine is still warm
# and keeps the build; otherwise it rebuilds).
#
#   1. copy the CIFAR-10 tarball into the carried folder, here:
#        mkdir -p .gpu-carry && cp ../shared/datasets/cifar10-train-jpg.tar.gz .gpu-carry/
#      (.gpu-carry/ is git-ignored; carry the file itself, 16 MB:
#      carry=[".gpu-carry/cifar10-train-jpg.tar.gz"]; never the folder once
#      something was extracted into it here, it would exceed the 64 MiB)
#   2. device call 1 (timeout_s 590): bash scripts/gpu_check.sh first
#        build; the two tests that used to kill the process; every CUDA
#        test; the ops benchmark (score / select / loss against plain
#        PyTorch); the CIFAR-10 prune with --gpus 1 (time per phase)
#   3. device call 2, if time is left: bash scripts/gpu_check.sh second
#        (build and the first prune if missing); the same prune again
#        (identical coreset?) and once with --compile; the fold-models and
#        loader benchmarks (550 s of step limits at most)
#
# Logs go to $OUT (the device tool's folder that comes back; ./gpu-check
# elsewhere), one file per step, at most 8 files per call as the tool allows.
set -u
part=${1:?usage: gpu_check.sh first|second}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}

step() {  # step NAME SECONDS COMMAND...: run under a time limit, log to $OUT/NAME.log, print its tail
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local tick=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc after $((SECONDS - tick)) s" | tee -a "$OUT/$name.log"
  tail -n 4 "$OUT/$name.log"
  return $rc
}

build() {
  if $PY -c "import unseen_fast, sys; sys.exit(0 if unseen_fast.build_info()['cuda_compiled'] else 1)" 2>/dev/null; then
    echo "== build: already built with CUDA"
    return 0
  fi
  step build 120 $PY -m pip install --no-index --no-build-isolation --no-deps -e . || exit 1
}

# the CIFAR-10 JPEGs for the prune and for the tests' and benches' data fixtures (../shared does not travel)
data=.gpu-carry/cifar10/train  # the tarball holds cifar10/train/<class>/<image>.jpg
if [ ! -f .gpu-carry/cifar10/.extracted ]; then
  tar -xzf .gpu-carry/cifar10-train-jpg.tar.gz -C .gpu-carry && touch .gpu-carry/cifar10/.extracted || exit 1
fi
export UNSEEN_FAST_DATA=$PWD/.gpu-carry

case $part in
  first)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.log" 2>&1
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/device.log" 2>&1
    build
    # each in its own process: a segfault shows as rc 139 instead of ending the script
    step former-segfaults 40 $PY -m pytest -q -p no:cacheprovider \
      "tests/test_score.py::test_empty_and_shapes" "tests/test_select.py::test_select_errors"
    # not test_cuda_build: its nvcc/ptxas checks need no GPU and run in CI; here they would eat the step's time
    step cuda-tests 200 $PY -m pytest -q -p no:cacheprovider -rs tests \
      -k "(cuda or gpu_path or resident or concurrent or sync or deferred) and not emulated and not cuda_build"
    step ops-bench 100 $PY -m pytest -q -p no:cacheprovider bench/test_gpu_ops_bench.py --benchmark-only \
      --benchmark-columns=median,iqr,rounds
    rm -rf gpu-check-prune-1
    step prune-1 110 $PY -m unseen_fast.cli prune --data "$data" --prune-rate 0.3 --gpus 1 --out gpu-check-prune-1
    $PY -c "import json; s = json.load(open('gpu-check-prune-1/summary.json')); print(json.dumps({k: s.get(k) for k in ('device', 'precision', 'wall_time_s', 'images_processed')}, indent=1))" \
      > "$OUT/prune-1-summary.log" 2>&1
    cat "$OUT/prune-1-summary.log"
    ;;
  second)
    build
    if [ ! -f gpu-check-prune-1/coreset.npy ]; then  # a fresh machine: the first call's run is gone
      step prune-1 110 $PY -m unseen_fast.cli prune --data "$data" --prune-rate 0.3 --gpus 1 --out gpu-check-prune-1
    fi
    rm -rf gpu-check-prune-2
    step prune-2 110 $PY -m unseen_fast.cli prune --data "$data" --prune-rate 0.3 --gpus 1 --out gpu-check-prune-2
    rm -rf gpu-check-prune-compile  # the same with --compile (issue 16: the GPU default if it wins)
    step prune-compile 110 $PY -m unseen_fast.cli prune --data "$data" --prune-rate 0.3 --gpus 1 --compile \
      --out gpu-check-prune-compile
    $PY - > "$OUT/prune-compare.log" 2>&1 <<'EOF'
import json
import numpy as np
a, b = (np.load(f"gpu-check-prune-{k}/coreset.npy") for k in (1, 2))
print("identical coresets:", a.shape == b.shape and bool(np.array_equal(a, b)), "sizes", len(a), len(b),
      "shared", len(np.intersect1d(a, b)))
for k in ("1", "2", "compile"):
    summary = json.load(open(f"gpu-check-prune-{k}/summary.json"))
    print(k, summary["device"], summary["precision"], summary["wall_time_s"], summary["images_processed"])
EOF
    cat "$OUT/prune-compare.log"
    step model-benches 100 env UNSEEN_FAST_BENCH_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider \
      bench/test_fold_models_bench.py bench/test_loader_bench.py --benchmark-only --benchmark-columns=median,iqr,rounds
    ;;
  *)
    echo "unknown part $part: first or second" >&2
    exit 2
    ;;
esac
