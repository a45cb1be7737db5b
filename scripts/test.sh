#!/usr/bin/env bash
# Sets up (idempotent), lints (ruff: pyflakes checks) and runs the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# unused imports / variables and undefined names fail the run before the tests start
.venv/bin/python -m ruff check --quiet .
exec .venv/bin/python -m pytest -q "$@"
