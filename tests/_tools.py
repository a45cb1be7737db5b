"""Load a ``tools/*.py`` script as a module (tools are scripts, not a package) for in-process tests, and read a
tool's one-line ``error:`` report.

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


def error_line(capsys, skip: str | None = None) -> str:
    """The single ``error: ...`` line a tool printed on stderr (lines containing ``skip``, e.g. a progress bar's
    label, left aside); asserts there is exactly one such line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and (skip is None or skip not in line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
