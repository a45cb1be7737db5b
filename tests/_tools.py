"""Load a ``tools/*.py`` script as a module (tools are scripts, not a package) for in-process tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"


def load_tool(name: str, module_name: str | None = None) -> ModuleType:
    """Execute ``tools/<name>.py`` as a fresh module named ``module_name`` (default ``bokehdepth_tool_<name>``)."""
    module_name = module_name or f"bokehdepth_tool_{name}"
    spec = importlib.util.spec_from_file_location(module_name, TOOLS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module
