#!/usr/bin/env bash
# One-time (and idempotent) set-up: a virtual environment in .venv with the
# pinned dependencies and the compiled extension. CUDA kernels are compiled
# whenever nvcc is found (no GPU needed); UNSEEN_FAST_CUDA=0 skips them.
# A stamp keyed by everything the set-up depends on makes a second run with
# nothing changed take about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda  # nvcc may be reached via /usr/local/bin
fi

# What the environment and the build depend on: the pins, the build files,
# the C++/CUDA sources, the interpreter and the build switches.
stamp_key() {
  {
    cat requirements.txt setup.py pyproject.toml CMakeLists.txt scripts/setup.sh 2>/dev/null
    find csrc -type f | LC_ALL=C sort | xargs cat
    python3 --version
    echo "CUDA_HOME=${CUDA_HOME:-} nvcc=$(command -v nvcc || true) UNSEEN_FAST_CUDA=${UNSEEN_FAST_CUDA:-} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-}"
  } | sha256sum | cut -d' ' -f1
}
key="$(stamp_key)"
stamp=.venv/.setup-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && .venv/bin/python -c "import unseen_fast._extension" 2>/dev/null; then
  echo "set-up is up to date (.venv; the requirements and csrc/ are unchanged)"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
echo "installing the pinned requirements into .venv"
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt
# --no-build-isolation: build against the torch installed above, not a fresh
# download of another build. The compiler steps are shown as they finish
# (the CUDA files take minutes); the whole log is in .venv/build.log.
echo "building the extension (MAX_JOBS=${MAX_JOBS:-2}; the CUDA kernels take longest)"
set +e
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -v --no-build-isolation --no-deps -e . 2>&1 \
  | tee .venv/build.log \
  | sed -nE -u 's#^.*unseen_fast build: (.*)$#  \1#p; s#^.*(\[[0-9]+/[0-9]+\]).* -c [^ ]*(csrc/[^ ]+\.(cpp|cu)).*$#  \1 compiling \2#p' \
  | awk '!seen[$0]++ { print; fflush() }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  tail -n 40 .venv/build.log
  echo "the build failed (exit $status); the whole log is in .venv/build.log" >&2
  exit "$status"
fi
python -c "import unseen_fast; info = unseen_fast.build_info(); print('unseen_fast built: CUDA kernels', info['cuda_compiled'], '| CPU score path', info['cpu_score_path'])"
echo "$key" > "$stamp"
