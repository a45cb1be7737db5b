# Sourced by the scripts/device_*.sh scripts: offline Hugging Face, unbuffered Python, and on a bare GPU image the
# wheels carried in .whl/ (scripts/device_wheels.sh) installed into /tmp/site -- only where the packages are missing
# (a set-up machine keeps its own). Expects PY (the Python to use).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if ! "$PY" -c "import diffusers, kornia, omegaconf" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
