#!/usr/bin/env python
"""Calibrate a Stage-1 generator's K axis against the physics renderer, on held-out synthetic scenes.

    python tools/calibrate_k.py --generator runs/stage1                  # 32 validation scenes, 5 knots
    python tools/calibrate_k.py --generator runs/stage1 --num-scenes 64 --knots 1 2 4 8
    python tools/calibrate_k.py --generator runs/stage1 --remove         # back to the uncalibrated generator

Asked for K, a generator should produce the frame physics renders at K. This tool measures, on scenes of the
generator's own kind (its generator.json ``scene_options`` and ``focus_m``) drawn from the Stage-1 *validation*
split (never the test split that tools/compare_bokeh.py scores), the K whose physics render best explains each
generated frame (physics.k_fit.fit_k) and fits ``bokeh.generation.calibration.KCalibration``: the strength to run
the generator at so that the median of K_fit / K is 1 at each knot (default: 5 knots log-spaced over the trained
range). The calibration is written into ``generator.json`` (``k_calibration``), where load_generator, make_stack
and compare_bokeh pick it up (compare_bokeh --uncalibrated ignores it). Outputs in ``<generator dir>/calibration/``
(or --out): calibration.json (per knot and iterate: gains, median K_fit / K, mean |K_fit / K - 1|) and
calibration.png (median K_fit / K against K, before and after). The default folder is replaced by a new fit (as
generator.json's calibration is); an explicit --out must be new or empty unless --overwrite. A bad setting or an
unreadable generator is one ``error:`` line on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="Stage-1 run dir or generator.safetensors (with generator.json)")
    p.add_argument("--num-scenes", type=int, default=32, help="validation-split scenes (default 32)")
    p.add_argument("--knots", type=float, nargs="+", default=None,
                   help="K knots (px*m at the generator's width; default 5 log-spaced over the trained range)")
    p.add_argument("--min-scenes", type=int, default=5,
                   help="drop a knot fewer scenes than this can measure K at (default 5)")
    p.add_argument("--iterations", type=int, default=3, help="fixed-point steps after the uncalibrated pass")
    p.add_argument("--seed", type=int, default=0, help="data seed of the Stage-1 splits")
    p.add_argument("--out", default=None,
                   help="report folder (default <generator dir>/calibration, replaced by each fit); an explicit "
                        "folder must be new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--remove", action="store_true", help="remove the calibration from generator.json and exit")
    return p.parse_args(argv)  # the settings are checked by lightning_modules.calibration


def fail(message: str) -> None:
    """The tools' bad-input exit: one ``error:`` line on stderr, status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def generator_json(path: str | Path) -> Path:
    """generator.json of a Stage-1 run folder or beside its generator.safetensors; exit 2 naming what is missing."""
    path = Path(path)
    if path.is_dir():
        meta = path / "generator.json"
        if not meta.is_file():
            fail(f"--generator folder {path} holds no generator.json; expected a Stage-1 run folder (with "
                 f"generator.json and generator.safetensors) or its generator.safetensors")
        return meta
    if not path.exists():
        fail(f"--generator {path} not found; expected a Stage-1 run folder holding generator.json (and "
             f"generator.safetensors), or its generator.safetensors")
    meta = path.with_suffix(".json")
    if not meta.is_file():
        fail(f"--generator {path}: no generator config {meta.name} beside it in {path.parent}; expected a Stage-1 "
             f"run folder or its generator.safetensors with generator.json beside it")
    return meta


def read_meta(meta_path: Path) -> dict[str, Any]:
    """generator.json as a dict (lightning_modules.stage1.read_generator_meta); exit 2 naming the file when it is
    unreadable, not a JSON object, or lacks the trained K range."""
    from lightning_modules.stage1 import read_generator_meta

    try:
        return read_generator_meta(meta_path)
    except ValueError as error:
        fail(str(error))


def check_out(out: Path, overwrite: bool, generator_dir: Path) -> None:
    """Refuse an --out that is a file, a non-empty folder without ``overwrite`` (bokeh.io.check_output_dir), or
    holds the generator itself."""
    from bokeh.io import check_output_dir

    try:
        check_output_dir(out, overwrite)
    except FileExistsError as error:
        fail(f"--out: {error}")
    resolved, gen_dir = out.resolve(), generator_dir.resolve()
    if resolved == gen_dir or resolved in gen_dir.parents:
        fail(f"--out {out} holds the generator ({generator_dir}); give a separate report folder")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    from bokeh.io import output_dir, write_json
    from lightning_modules.calibration import (calibrate_generator, check_calibration_settings, summary_line,
                                               write_calibration)
    from lightning_modules.stage1 import load_generator

    args = parse_args(argv)
    meta_path = generator_json(args.generator)
    meta = read_meta(meta_path)
    if args.remove:
        meta.pop("k_calibration", None)
        write_json(meta_path, meta)
        print(f"removed the K calibration from {meta_path}")
        return meta
    out = Path(args.out) if args.out else meta_path.parent / "calibration"
    overwrite = args.overwrite or args.out is None  # the default folder is the previous fit's: replaced
    check_out(out, overwrite, meta_path.parent)
    try:
        check_calibration_settings(float(meta["k"]["min"]), float(meta["k"]["max"]), args.knots, args.num_scenes,
                                   args.iterations, args.min_scenes)
    except ValueError as error:
        fail(str(error))
    weights = meta_path.with_suffix(".safetensors")
    try:
        gen, meta = load_generator(weights)
    except ValueError as error:  # load_generator's own message names the file and what is wrong
        fail(str(error))
    except Exception as error:  # noqa: BLE001 - anything else while building it: still a bad generator
        fail(f"cannot read generator {weights} ({type(error).__name__}: {error})")
    if meta.get("trained_on", "synthetic") != "synthetic":
        tqdm.write(f"warning: {meta_path} was trained on {meta.get('trained_on')!r} data; it is calibrated on synthetic "
                   f"scenes ({meta.get('scene_options') or 'default options'}), whose look may differ from its data")
    bar = tqdm(total=(args.iterations + 1) * args.num_scenes, desc="calibrate", unit="stack")
    try:
        calibration, report = calibrate_generator(gen, meta, num_scenes=args.num_scenes, knots=args.knots,
                                                  iterations=args.iterations, seed=args.seed, min_scenes=args.min_scenes,
                                                  progress=tqdm.write,
                                                  on_stack=lambda: bar.update(1))
    except ValueError as error:
        fail(str(error))
    finally:
        bar.close()
    report["generator"] = str(args.generator)
    try:
        with output_dir(out, overwrite=overwrite) as out:
            write_calibration(meta_path, calibration, report, out)
    except FileExistsError as error:
        fail(str(error))
    print(f"{summary_line(calibration, report)}; wrote {meta_path}, {out / 'calibration.json'}, "
          f"{out / 'calibration.png'}")
    return report


if __name__ == "__main__":
    main()
