"""Command-line pieces the tools share.

:func:`config_errors_exit` -- what the tools do with a bad setting: one line naming it, exit status 2, no traceback.
A :class:`lightning_modules.config.ConfigError` (an unknown or mistyped config key, a value out of range, a data
kind a tool cannot use) is the user's to fix, so a script prints ``config error: <message>`` on stderr and exits
with status 2, before anything is written. Called in-process (tests, notebooks), the functions behind the scripts
still raise the ConfigError itself.

:func:`add_guidance_arguments` / :func:`guidance_from_args` -- the Stage-1 physics-guidance options of
make_stack.py and compare_bokeh.py (bokeh.generation.guidance), a bad value being an argparse usage error;
:func:`positive_int` (an argparse type) and :func:`check_strengths` (typed --K values) -- shared by the same two;
:func:`run_reporting_errors` -- eval.py's and compare_bokeh.py's ``cli()``: bad input as ``error: ...``, exit 2;
:func:`check_out_folder` / :func:`check_out_file` -- an unusable --out as a usage error before any work;
:func:`best_checkpoint` / :func:`run_or_checkpoint` -- the checkpoint of a tools/fit.py run folder (eval.py's model
options, infer.py's --checkpoint / --base-checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence


@contextlib.contextmanager
def config_errors_exit() -> Iterator[None]:
    """``with config_errors_exit(): run(args)``: a ConfigError inside becomes ``config error: ...`` and a DataError (a
    data setting or file that cannot be used, lightning_modules.data) ``data error: ...``, both exit 2."""
    from lightning_modules.config import ConfigError
    from lightning_modules.data import DataError

    try:
        yield
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except DataError as error:
        print(f"data error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def add_guidance_arguments(parser: argparse.ArgumentParser, *, flux: float, stack: float, note: str = "") -> None:
    """--flux-guidance / --stack-guidance (strengths, 0 = off) and --stack-estimator, with these defaults."""
    from bokeh.generation.guidance import STACK_ESTIMATORS

    parser.add_argument("--flux-guidance", type=float, default=flux, help="flux-conservation guidance strength (0 = off)")
    parser.add_argument("--stack-guidance", type=float, default=stack,
                        help="stack-consistency guidance strength (0 = off)" + note)
    parser.add_argument("--stack-estimator", choices=STACK_ESTIMATORS, default="physics",
                        help="blur measurement of the stack guidance: physics.dfd's estimator or the gradient proxy")


def guidance_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The GuidanceConfig of the parsed options; an invalid one is ``parser.error`` (usage line, exit 2)."""
    from bokeh.generation.guidance import GuidanceConfig

    try:
        return GuidanceConfig(flux_strength=args.flux_guidance, stack_strength=args.stack_guidance,
                              stack_estimator=args.stack_estimator)
    except ValueError as error:
        parser.error(str(error))


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a usage error naming the value otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def check_out_folder(parser: argparse.ArgumentParser, path: Any, overwrite: bool) -> None:
    """A usage error, before any work, for an output folder :func:`bokeh.io.output_dir` would refuse (a file, a
    non-empty folder without --overwrite, a path under a file)."""
    from bokeh.io import check_output_dir

    try:
        check_output_dir(path, overwrite)
    except FileExistsError as error:
        parser.error(str(error))


def check_out_file(parser: argparse.ArgumentParser, path: Any, option: str = "--out") -> None:
    """A usage error, before any work, for an output file path that is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir() or any(parent.exists() and not parent.is_dir() for parent in path.absolute().parents):
        parser.error(f"{option} {path}: expected a file path (not a folder, not under a file)")


def check_strengths(Ks: Sequence[float] | None) -> None:
    """The typed ``--K`` values: finite and > 0 px*m (ValueError naming them); None (not given) passes."""
    bad = [k for k in Ks or () if not (math.isfinite(k) and k > 0)]
    if bad:
        raise ValueError(f"--K values must be finite strengths > 0 px*m; got {', '.join(f'{k:g}' for k in bad)}"
                         f" (in --K {' '.join(f'{k:g}' for k in Ks)})")


def run_reporting_errors(main: Any, argv: list[str] | None) -> int:
    """``main(argv)`` as a command: 0 when it returns; bad input (a ConfigError, a missing / existing file, a bad
    value, or a SystemExit carrying a message) is one line ``error: ...`` on stderr and 2; argparse's own exits (a
    numeric code) pass through."""
    from lightning_modules.config import ConfigError

    try:
        main(argv)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        print(f"error: {stop.code}", file=sys.stderr)
        return 2
    return 0


def best_checkpoint(run_dir: Any) -> Any:
    """The checkpoint of a fit.py model folder (``<run>/bokehdepth``, ``<run>/base`` or a single-model run): the one
    its result.json names as best, else the last ``checkpoints/best*.ckpt``, else ``checkpoints/last.ckpt``
    (FileNotFoundError naming the folder when there is none). Shared by eval.py and infer.py."""
    run_dir = Path(run_dir)
    result = run_dir / "result.json"
    if result.is_file():
        best = json.loads(result.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    bests = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
    if bests:
        return bests[-1]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'} (expected best*.ckpt or last.ckpt)")


def run_or_checkpoint(path: Any, sub: str) -> Any:
    """A checkpoint path: a .ckpt as given; of a run folder, its ``sub``/ model's (``bokehdepth`` or ``base`` of a
    fit.py comparison run) or its own (:func:`best_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        return best_checkpoint(path / sub if (path / sub / "checkpoints").is_dir() else path)
    if not path.exists():
        raise FileNotFoundError(f"{'base' if sub == 'base' else 'BokehDepth'} model {path} does not exist")
    return path
