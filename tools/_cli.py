"""What the tools do with a bad setting: one line naming it, exit status 2, no traceback.

A :class:`lightning_modules.config.ConfigError` (an unknown or mistyped config key, a value out of range, a data
kind a tool cannot use) is the user's to fix, so a script prints ``config error: <message>`` on stderr and exits
with status 2, before anything is written. Called in-process (tests, notebooks), the functions behind the scripts
still raise the ConfigError itself.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def config_errors_exit() -> Iterator[None]:
    """``with config_errors_exit(): run(args)``: a ConfigError inside becomes ``config error: ...`` and exit 2."""
    from lightning_modules.config import ConfigError

    try:
        yield
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
