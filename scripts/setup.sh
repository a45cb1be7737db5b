#!/usr/bin/env bash
# Sets up BokehDepth on a fresh machine: system packages Open3D needs, a virtual environment in .venv,
# torch (CPU wheel unless TORCH_SPEC says otherwise), then the project and its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# Open3D links libusb-1.0, libGL and libEGL (software GL through Mesa's DRI swrast for its hidden-window renderer);
# its OffscreenRenderer (Filament) needs a Vulkan loader and a software Vulkan driver.
need_debs=()
for pkg in libusb-1.0-0 libgl1 libegl1 libgl1-mesa-dri libvulkan1 mesa-vulkan-drivers; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_debs+=("$pkg")
done
if [ ${#need_debs[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo "[setup] installing Debian packages: ${need_debs[*]}"
    (apt-get install -y --no-install-recommends "${need_debs[@]}" >/dev/null 2>&1) || {
      apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${need_debs[@]}" >/dev/null
    }
  else
    echo "[setup] WARNING: missing Debian packages ${need_debs[*]} (run: sudo apt-get install ${need_debs[*]}); Open3D tools will fall back." >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# The CPU wheel (about 0.9 GB); on a GPU machine set TORCH_SPEC to the build you want, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# pip's notes about absent local mirror folders are noise here; real errors still fail the script (pipefail).
quiet_pip() { python -m pip install -q "$@" 2>&1 | { grep -v -e "^WARNING: Location" -e "BuildBackendWarning" || true; }; }
python -c "import torch" >/dev/null 2>&1 || quiet_pip "$TORCH_SPEC"
# Re-install the project only when its requirements changed (keeps the test command quick on a set-up machine).
stamp=.venv/.bokehdepth-installed
want=$(sha256sum pyproject.toml | cut -d" " -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! python -c "import bokehdepth_guard" >/dev/null 2>&1; then
  quiet_pip -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(python -c 'import torch, lightning, diffusers, transformers; print("torch", torch.__version__, "| lightning", lightning.__version__, "| diffusers", diffusers.__version__, "| transformers", transformers.__version__)')"
