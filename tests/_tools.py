"""Load a ``tools/*.py`` script as a module (tools are scripts, not a package) for in-process tests.

Run as a script, a tool finds ``tools/_bootstrap.py`` because Python puts the script's folder first on ``sys.path``;
loaded here, ``tools/`` is appended to ``sys.path`` for the same ``import _bootstrap``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"


def load_tool(name: str, module_name: str | None = None) -> ModuleType:
    """Execute ``tools/<name>.py`` as a fresh module named ``module_name`` (default ``bokehdepth_tool_<name>``)."""
    module_name = module_name or f"bokehdepth_tool_{name}"
    if str(TOOLS_DIR) not in sys.path:
        sys.path.append(str(TOOLS_DIR))  # appended: tool names (eval, report...) must not shadow other modules
    spec = importlib.util.spec_from_file_location(module_name, TOOLS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module
