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
calibration.png (median K_fit / K against K, before and after).
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--out", default=None, help="report folder (default <generator dir>/calibration)")
    p.add_argument("--remove", action="store_true", help="remove the calibration from generator.json and exit")
    return p.parse_args(argv)  # the settings are checked by lightning_modules.calibration


def generator_json(path: str | Path) -> Path:
    path = Path(path)
    meta = (path / "generator.json") if path.is_dir() else path.with_suffix(".json")
    if not meta.is_file():
        raise SystemExit(f"no generator.json at {meta}: give a Stage-1 run dir or its generator.safetensors")
    return meta


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    from bokeh.io import write_json
    from lightning_modules.calibration import calibrate_generator, summary_line, write_calibration
    from lightning_modules.stage1 import load_generator

    args = parse_args(argv)
    meta_path = generator_json(args.generator)
    if args.remove:
        meta = json.loads(meta_path.read_text())
        meta.pop("k_calibration", None)
        write_json(meta_path, meta)
        print(f"removed the K calibration from {meta_path}")
        return meta
    gen, meta = load_generator(meta_path.with_suffix(".safetensors"))
    if meta.get("trained_on", "synthetic") != "synthetic":
        tqdm.write(f"warning: {meta_path} was trained on {meta.get('trained_on')!r} data; it is calibrated on synthetic "
                   f"scenes ({meta.get('scene_options') or 'default options'}), whose look may differ from its data")
    out = Path(args.out) if args.out else meta_path.parent / "calibration"
    bar = tqdm(total=(args.iterations + 1) * args.num_scenes, desc="calibrate", unit="stack")
    try:
        calibration, report = calibrate_generator(gen, meta, num_scenes=args.num_scenes, knots=args.knots,
                                                  iterations=args.iterations, seed=args.seed, min_scenes=args.min_scenes,
                                                  progress=tqdm.write,
                                                  on_stack=lambda: bar.update(1))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        bar.close()
    report["generator"] = str(args.generator)
    write_calibration(meta_path, calibration, report, out)
    print(f"{summary_line(calibration, report)}; wrote {meta_path}, {out / 'calibration.json'}, "
          f"{out / 'calibration.png'}")
    return report


if __name__ == "__main__":
    main()
