#!/usr/bin/env bash
# The CPU-scale CIFAR-10 replication of docs/RESULTS.md: extract CIFAR-10 from
# ../shared, run the grid (resumable: re-run this script to continue), then the
# analyses. Usage: bash scripts/replicate_cifar10.sh [EXP_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exp="${1:-runs/cifar10-cpu}"
py=.venv/bin/python
[ -x "$py" ] || py=python
PYTHONPATH=. "$py" -c "import sys; sys.path.insert(0, 'tests'); from data_fixtures import cifar10_root; print(cifar10_root())"
start=$(date +%s)
PYTHONPATH=. "$py" -m unseen_fast.cli experiment experiments/cifar10_cpu.yaml --out "$exp"
PYTHONPATH=. "$py" -m unseen_fast.cli analyze "$exp" --out "$exp/analysis"
echo "wall time: $(( $(date +%s) - start )) s"
