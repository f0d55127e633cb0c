#!/usr/bin/env bash
# Install (once) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh cpu,test,mmseg-cpu
echo "[test] ruff check (pyproject.toml [tool.ruff])"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
