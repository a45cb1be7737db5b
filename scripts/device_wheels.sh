#!/usr/bin/env bash
# Fill .whl/ with the wheels the session tool's GPU machine lacks (its image has PyTorch, Lightning, torchmetrics,
# transformers, safetensors and huggingface_hub, but not these), for Python 3.12 on x86-64, at the versions this
# machine's .venv holds (scripts/setup.sh). Run here, where pip reaches the registry; then name .whl in the device
# call's carry (scripts/device_stage1_scale.sh installs them into /tmp/site). About 14 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
specs=$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in
               ("diffusers", "kornia", "kornia_rs", "omegaconf", "importlib_metadata")))
PYEOF
)
mkdir -p .whl
# shellcheck disable=SC2086  # one word per requirement
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $specs
ls -la .whl
