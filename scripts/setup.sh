#!/usr/bin/env bash
# One-time (and idempotent) set-up: a virtual environment in .venv with the
# pinned dependencies and the compiled extension. CUDA kernels are compiled
# whenever nvcc is found (no GPU needed); UNSEEN_FAST_CUDA=0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda  # nvcc may be reached via /usr/local/bin
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt
# --no-build-isolation: build against the torch installed above, not a fresh
# download of another build.
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation --no-deps -e . 
python -c "import unseen_fast; info = unseen_fast.build_info(); print('unseen_fast built: CUDA kernels', info['cuda_compiled'], '| CPU score path', info['cpu_score_path'])"
