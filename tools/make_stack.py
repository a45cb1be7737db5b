#!/usr/bin/env python
"""Sharp image(s) -> bokeh stacks from a trained Stage-1 generator, plus a JSONL manifest Stage-2 can read.

    python tools/make_stack.py --generator runs/stage1/<run> --input photo.jpg --out stacks/ --K 2 4 6
    python tools/make_stack.py --generator runs/stage1/<run> --input folder/ --out stacks/
    python tools/make_stack.py --generator runs/stage1/<run> --input rgbd.jsonl --out stacks/   # keeps depth, intrinsics

- ``--K`` is in px*m for each input image at its own width (one K axis: radius = K (1/focus - 1/depth) px). By
  default (``--K-at-width`` unset) the values are the generator's eval strengths at its training width, scaled to
  each image's width. K outside the trained range is clamped with a warning (``--k-policy error`` refuses).
- Output: ``<out>/frames/<name>_k<i>.png`` (the input size, aspect kept), ``<out>/images/<name>.png`` (the sharp
  reference as read), ``<out>/stacks.jsonl`` with rows {image, stack: [...], K_px_m: [...], depth?, intrinsics?,
  focus_m?, K_run_px_m? (a calibrated generator's run strengths: tools/calibrate_k.py)} (paths relative to the
  manifest), and ``<out>/run.json`` (settings). Every file is written atomically.
  A generator with the layered head (``model.compact.head: layered``) also writes the defocus map it rendered from,
  ``<out>/defocus/<name>.npy`` (1/m, input size, mean over the stack) and a colour map ``.png`` (rows get
  ``defocus_inv_m`` and ``defocus_png``): where the generator believes the blur lies, a by-product worth inspecting.
- ``focus_m``: the generator draws the focus it was trained on (its ``generator.json`` ``focus_m``; the default
  Stage-1 config trains at a fixed 100 m, Stage-2's default stack), so a generator with a fixed training focus writes
  that focus into every row (an input row's different focus_m is replaced, with a warning); a generator trained on
  each scene's nearest subject keeps the input row's focus_m, if any.
- Images are read with bokeh.io.read_image: grayscale and RGBA are converted to RGB with a warning; an unreadable
  file is reported and skipped (exit code 1 if any was skipped). A manifest row's depth is read with
  bokeh.io.read_depth_for_image and checked: unreadable, negative, another shape than the image's, or without one valid (> 0)
  pixel skips the row; invalid pixels (0, NaN, inf: read as 0, no depth) are counted in a warning.
- Bad input (a missing input or generator, an empty folder, a broken manifest, K <= 0, K outside the trained range
  with ``--k-policy error``, a non-empty ``--out`` without ``--overwrite``, no input processed) is one line
  ``error: ...`` on stderr and exit code 2; the output folder is then left as it was (a previous output is kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401
from _cli import add_guidance_arguments, check_strengths, guidance_from_args, positive_int  # noqa: E402

import torch  # noqa: E402

from bokeh.generation import KRangeError  # noqa: E402
from bokeh.io import (list_images, output_dir, read_depth_for_image, read_image, write_image, write_json,  # noqa: E402
                      write_npy, write_text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="run dir, generator.safetensors, or a Stage-1 .ckpt")
    p.add_argument("--input", required=True, help="an image, a folder of images, or a JSONL manifest {image, depth?, intrinsics?}")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--K", type=float, nargs="+", default=None, help="strengths, px*m (see --K-at-width)")
    p.add_argument("--K-at-width", type=float, default=None,
                   help="the image width the --K values refer to (default: each input's own width)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps, >= 1 (default: the generator's)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale on K (1 = off)")
    add_guidance_arguments(p, flux=0.0, stack=0.0, note="; 0.5 helps free-form generators, BENCHMARKS.md")
    p.add_argument("--color-transfer", action="store_true", help="LAB mean/std transfer back to the reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uncalibrated", action="store_true",
                   help="ignore the generator's K calibration (generator.json k_calibration: tools/calibrate_k.py)")
    p.add_argument("--k-policy", choices=["clamp", "error"], default=None, help="K outside the trained range")
    p.add_argument("--flip-average", action="store_true",
                   help="compact generator: every sampling step also reads the mirrored image and averages the two "
                        "(twice the network's cost)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    args.guidance = guidance_from_args(p, args)
    return args


def check_k_options(args: argparse.Namespace) -> None:
    """The typed ``--K`` values and ``--K-at-width``: finite and > 0 (ValueError naming the option and its values)."""
    check_strengths(args.K)
    if args.K_at_width is not None and not (math.isfinite(args.K_at_width) and args.K_at_width > 0):
        raise ValueError(f"--K-at-width must be an image width in px, finite and > 0; got {args.K_at_width:g}")
    if not math.isfinite(args.cfg):
        raise ValueError(f"--cfg must be a finite guidance scale (1 = off); got {args.cfg:g}")


def collect_inputs(path: Path) -> list[dict[str, Any]]:
    """Rows {image: Path, name, depth?: Path, intrinsics?, focus_m?} from an image, a folder or a JSONL manifest."""
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path} (expected an image, a folder of images or a .jsonl manifest)")
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise ValueError(f"no images found in {path}")
        return [{"image": p, "name": p.stem} for p in images]
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{n}: not valid JSON ({error})") from error
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object {{image, depth?, intrinsics?, focus_m?}}, "
                                 f"got {type(rec).__name__}")
            if not isinstance(rec.get("image"), str) or not rec["image"]:
                raise ValueError(f"{path}:{n}: missing field 'image' (the image path, relative to the manifest)")
            row = {"image": (path.parent / rec["image"]).resolve(), "name": f"{n:05d}_{Path(rec['image']).stem}"}
            if rec.get("depth"):
                row["depth"] = (path.parent / rec["depth"]).resolve()
            for key in ("intrinsics", "focus_m", "depth_scale"):
                if key in rec:
                    row[key] = rec[key]
            check_row_fields(row, f"{path}:{n}")
            rows.append(row)
        if not rows:
            raise ValueError(f"manifest {path} lists no image")
        return rows
    return [{"image": path, "name": path.stem}]


def check_row_fields(row: dict[str, Any], where: str) -> None:
    """A manifest row's camera fields, copied into stacks.jsonl for Stage-2, checked here rather than there:
    intrinsics as Stage-2 reads them ([fx, fy, cx, cy] or 3x3), focus_m a distance in metres (ValueError naming the
    row otherwise)."""
    from lightning_modules.data import parse_intrinsics

    if row.get("intrinsics") is not None:
        parse_intrinsics(row["intrinsics"], name=f"{where}: intrinsics")  # Stage-2's reader: its DataError names it
    focus = row.get("focus_m")
    if focus is not None and (isinstance(focus, bool) or not isinstance(focus, (int, float))
                              or not math.isfinite(focus) or focus <= 0):
        raise ValueError(f"{where}: focus_m must be a distance in metres, finite and > 0; got {focus!r}")


def check_depth(row: dict[str, Any], image_hw: tuple[int, int]) -> None:
    """A manifest row's depth, read as Stage-2 will (bokeh.io.read_depth_for_image): a ValueError when it is
    unreadable, negative, of another shape than the image ``image_hw`` or without one valid (> 0) pixel; a warning
    counting the invalid pixels (0, NaN, inf: read as 0, no depth) otherwise."""
    depth, invalid = read_depth_for_image(row["depth"], image_hw, image_name=f"its image {row['image']}",
                                          depth_scale=row.get("depth_scale"))
    if invalid:
        warnings.warn(f"depth {row['depth']}: {invalid} of {depth.numel()} pixels are invalid (0, NaN or inf: no "
                      "depth)", stacklevel=2)


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def write_defocus(out: Path, name: str, defocus_inv_m: torch.Tensor, size: tuple[int, int],
                  max_inv_m: float) -> dict[str, str]:
    """Save a layered-head generator's defocus map (1/m, the mean over the stack's frames, resized to the image):
    ``defocus/<name>.npy`` (float32 [H,W]) and ``defocus/<name>.png`` (turbo over [0, max_inv_m], warm = more blur)."""
    import torch.nn.functional as F

    from bokeh.io import colorize_depth

    mean = F.interpolate(defocus_inv_m.mean(0, keepdim=True).float(), size=tuple(size), mode="bilinear",
                         align_corners=False)[0, 0]
    npy = write_npy(out / "defocus" / f"{name}.npy", mean)
    png = write_image(out / "defocus" / f"{name}.png",
                      colorize_depth(mean.clamp_min(1e-6), vmin=1e-6, vmax=max_inv_m, inverse=False))
    return {"defocus_inv_m": _rel(npy, out), "defocus_png": _rel(png, out)}


def run(args: argparse.Namespace) -> int:
    """Make the stacks; returns 0, or 1 when some input was skipped. Bad input raises (FileNotFoundError,
    FileExistsError, ValueError, KRangeError...) before the output folder is touched, or inside it: then the folder
    is left as it was (bokeh.io.output_dir)."""
    from lightning_modules.stage1 import load_generator

    check_k_options(args)
    rows = collect_inputs(Path(args.input))
    gen, meta = load_generator(args.generator, k_policy=args.k_policy)
    if args.uncalibrated:
        gen.k_calibration = None
    gen.use_flip_average(args.flip_average)
    with output_dir(args.out, overwrite=args.overwrite) as out:
        lines, skipped = _write_stacks(args, rows, gen, meta, out)
    print(f"wrote {len(lines)} stack(s) to {out / 'stacks.jsonl'}" + (f"; skipped {len(skipped)}" if skipped else ""))
    return 1 if skipped else 0


def _write_stacks(args: argparse.Namespace, rows: list[dict[str, Any]], gen: Any, meta: dict[str, Any],
                  out: Path) -> tuple[list[str], list[dict[str, str]]]:
    train_width = float(meta["resolution"])
    default_k = [float(k) for k in (meta.get("eval_K_px_m") or [meta["k"]["min"], meta["k"]["max"]])]
    guidance = args.guidance
    train_focus = meta.get("focus_m")  # None: the generator's focus varied per scene (nearest subject)
    replaced_focus = []
    lines, skipped = [], []
    t0 = time.perf_counter()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    for row in tqdm(rows, desc="stacks", unit="image"):
        try:
            image = read_image(row["image"])
        except (ValueError, OSError) as error:
            print(f"skipped {row['image']}: {error}", file=sys.stderr)
            skipped.append({"image": str(row["image"]), "error": str(error)})
            continue
        if "depth" in row:
            try:
                check_depth(row, tuple(image.shape[-2:]))
            except (ValueError, OSError) as error:
                print(f"skipped {row['image']}: {error}", file=sys.stderr)
                skipped.append({"image": str(row["image"]), "depth": str(row["depth"]), "error": str(error)})
                continue
        width = image.shape[-1]
        if args.K is not None:
            ref_width = args.K_at_width or width
            K = [k * width / ref_width for k in args.K]
        else:
            K = [k * width / train_width for k in default_k]
        try:
            res = gen.generate_stack(image, K, num_steps=args.steps, cfg_scale=args.cfg, guidance=guidance,
                                     color_transfer=args.color_transfer, seed=args.seed)
        except KRangeError as error:  # the library's advice names its argument; the tool's user types the flag
            advice = str(error).replace("pass K inside the range or use k_policy='clamp'",
                                        "pass --K values inside the range, or --k-policy clamp to clamp them (with a "
                                        "warning)")
            raise KRangeError(f"{row['image']} ({width} px wide), K {[round(k, 4) for k in K]} px*m at its width: "
                              f"{advice}") from error
        ref_path = write_image(out / "images" / f"{row['name']}.png", image)
        frame_paths = [write_image(out / "frames" / f"{row['name']}_k{i}.png", res.frames[0, i]) for i in range(len(K))]
        rec: dict[str, Any] = {"image": _rel(ref_path, out), "stack": [_rel(p, out) for p in frame_paths],
                               "K_px_m": [round(float(k), 6) for k in K],
                               "K_work_px_m": [round(float(k), 6) for k in res.K_work_px_m]}
        if gen.k_calibration is not None:  # the strengths the generator was run at for those K (working width)
            rec["K_run_px_m"] = [round(float(k), 6) for k in res.info["K_run_px_m"]]
        if "defocus_inv_m" in res.info:  # the layered head's defocus map: where the generator put the blur
            rec.update(write_defocus(out, row["name"], res.info["defocus_inv_m"][0], image.shape[-2:],
                                     float(gen.net.defocus_max_inv_m)))
        for key in ("intrinsics", "focus_m", "depth_scale"):
            if key in row:
                rec[key] = row[key]
        if train_focus is not None:
            given = row.get("focus_m")
            try:
                same = given is None or math.isclose(float(given), float(train_focus), rel_tol=1e-6)
            except (TypeError, ValueError):
                same = False
            if not same:
                replaced_focus.append(row["name"])
            rec["focus_m"] = float(train_focus)
        if "depth" in row:
            rec["depth"] = _rel(Path(row["depth"]), out)
        lines.append(json.dumps(rec))
    if replaced_focus:
        warnings.warn(f"{len(replaced_focus)} input row(s) give a focus_m other than the generator's training focus "
                      f"{train_focus:g} m (e.g. {replaced_focus[0]}); the generated frames show {train_focus:g} m, "
                      "which is what stacks.jsonl records", stacklevel=2)
    if not lines:  # raised inside output_dir: no half-made folder is left, a previous output is restored
        names = ", ".join(s["image"] for s in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        raise ValueError(f"no input could be processed: skipped all {len(skipped)} ({names}); first error: "
                         f"{skipped[0]['error']}")
    write_text(out / "stacks.jsonl", "\n".join(lines) + "\n")
    write_json(out / "run.json", {"generator": str(args.generator), "input": str(args.input), "images": len(lines),
                                  "skipped": skipped, "steps": args.steps or gen.default_steps, "flip_average": gen.flip_average, "cfg": args.cfg,
                                  "guidance": guidance.to_dict(), "color_transfer": args.color_transfer,
                                  "seed": args.seed, "focus_m": train_focus,
                                  "k_calibration": gen.k_calibration.to_dict() if gen.k_calibration else None,
                                  "focus_policy": meta.get("focus_policy", "unknown (generator.json predates it)"),
                                  "seconds": time.perf_counter() - t0})
    return lines, skipped


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 done, 1 some input skipped, 2 bad input (one line ``error: ...`` on stderr)."""
    from lightning_modules.config import ConfigError

    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
