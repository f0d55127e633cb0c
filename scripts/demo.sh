#!/usr/bin/env bash
# Install (once) and run the demo: a synthetic scene, imported and fused into a mesh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh cpu
exec .venv/bin/labelmaker demo "$@"
