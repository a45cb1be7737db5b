"""Fail loudly when ``import bokeh`` finds the Bokeh plotting library instead of BokehDepth's models."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


class WrongBokehPackageError(ImportError):
    """Raised when the module imported as ``bokeh`` is not BokehDepth's ``bokeh`` package."""


def require_bokehdepth() -> ModuleType:
    """Import ``bokeh`` and check it is this project's package.

    Returns:
        The imported ``bokeh`` module.

    Raises:
        WrongBokehPackageError: if ``bokeh`` resolves to another distribution (e.g. the plotting library).
    """
    try:
        module = importlib.import_module("bokeh")
    except ImportError as error:  # pragma: no cover - broken installs
        raise WrongBokehPackageError(
            "Cannot import BokehDepth's 'bokeh' package. Run `bash scripts/setup.sh` from the repository root "
            f"(or `pip install -e .`). Original error: {error}"
        ) from error
    if not getattr(module, "IS_BOKEHDEPTH", False):
        location = getattr(module, "__file__", None) or "<namespace package>"
        version = getattr(module, "__version__", "unknown version")
        raise WrongBokehPackageError(
            f"'import bokeh' resolved to {location} (version {version}), which is not BokehDepth's model package: "
            "most likely the Bokeh plotting library is installed in this environment and shadows ours. "
            "Fix: `pip uninstall bokeh` in this environment, or use the project's own virtual environment "
            "(`bash scripts/setup.sh`, then `.venv/bin/python ...`) from the repository root. "
            f"sys.path[0:3] = {sys.path[0:3]}"
        )
    return module
