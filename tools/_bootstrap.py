"""The common start of every ``tools/*.py`` script: ``import _bootstrap  # noqa: F401`` before any project import.

Tools are run as scripts (``python tools/eval.py ...``), not imported from an installed package: the repository root
is not on ``sys.path`` and nothing has chosen offline mode yet. Python puts the script's folder (``tools/``) first on
``sys.path``, so this module is found; importing it

- sets ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` (unless the caller set them): weights load from local folders,
  nothing is downloaded, before any Hugging Face library is imported;
- puts the repository root on ``sys.path`` so ``physics``, ``bokeh`` and ``lightning_modules`` import;
- checks that ``import bokeh`` is this project's package, not the Bokeh plotting library
  (:func:`bokehdepth_guard.require_bokehdepth`), so a shadowed install fails with a clear message;
- prints this project's warnings (raised from a file under the repository) as one line ``warning: ...``, without
  Python's file, line number and source line, which say nothing to a user of the tool; other libraries' warnings
  keep Python's format.

Tests loading a tool in-process (``tests/_tools.py:load_tool``) put ``tools/`` on ``sys.path`` for the same import.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: The repository root (the folder holding ``tools/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bokehdepth_guard import require_bokehdepth  # noqa: E402

require_bokehdepth()

_python_format = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    """One line ``warning: ...`` for the project's own warnings; Python's format for everyone else's."""
    try:
        ours = Path(filename).resolve().is_relative_to(REPO_ROOT) and ".venv" not in Path(filename).parts
    except (OSError, ValueError):
        ours = False
    return f"warning: {message}\n" if ours else _python_format(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning
