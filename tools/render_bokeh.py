#!/usr/bin/env python
"""Physics bokeh from an image + metric depth: one frame, a bokeh stack (several K) or a focal stack.

    python tools/render_bokeh.py --image photo.png --depth depth.npy --K 6 12 24 --focus-m 1.5 --out out/bokeh
    python tools/render_bokeh.py --image photo.jpg --depth depth.png --depth-scale 1000 \\
        --f-mm 50 --f-number 1.4 2.8 --sensor-width-mm 36 --focus-m 2 --out out/lens
    python tools/render_bokeh.py --image photo.png --depth depth.npy --K 8 --focus-stack 1 2 4 --out out/focal

Strength: ``--K`` (px*m at the image's width: r_px = K * (1/focus_m - 1/depth_m)), or a thin lens: ``--f-mm`` with
``--f-number`` (one or more) and ``--sensor-width-mm`` or ``--f35-mm`` (35 mm-equivalent focal) or ``--fx-px``
(intrinsics: pinhole K = f/(2N) * fx, as Blender). Focus: ``--focus-m`` or ``--focus-stack`` (several), default the
nearest subject (the 2nd percentile of the depth). Depth: ``.npy`` in metres or a 16-bit PNG with
``--depth-scale`` (units per metre); invalid (0) pixels are an error unless ``--fill-invalid`` (then they take the
largest valid depth: treated as far background).

Outputs in ``--out`` (new or empty unless ``--overwrite``), all written atomically:
``frame_<i>.png`` (sRGB), ``coc_<i>.npy`` (float32 [H,W] signed CoC radius, px, > 0 behind the focal plane),
``coc_<i>.png`` (colour map, blue in front / red behind), ``grid.png`` (image, depth, frames, CoC maps) and
``camera.json`` (every frame's K, focus, lens fields and the render options).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bokeh.io import (  # noqa: E402
    ImageReadError,
    colorize_depth,
    colorize_signed,
    image_grid,
    output_dir,
    read_depth,
    read_image,
    write_image,
    write_json,
    write_npy,
)
from physics.camera import ThinLensCamera, check_depth_m  # noqa: E402
from physics.stacks import render_frames  # noqa: E402
from physics.render import check_blur_radius  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image", required=True, help="sharp image (PNG/JPEG), sRGB")
    p.add_argument("--depth", required=True, help="metric depth: .npy (metres) or 16-bit PNG with --depth-scale")
    p.add_argument("--depth-scale", type=float, default=None, help="PNG depth units per metre (1000 for mm)")
    p.add_argument("--fill-invalid", action="store_true", help="fill invalid (0) depth with the largest valid depth")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    g = p.add_argument_group("strength")
    g.add_argument("--K", type=float, nargs="+", default=None, help="K values in px*m (one frame each)")
    g.add_argument("--f-mm", type=float, default=None, help="focal length (mm)")
    g.add_argument("--f-number", type=float, nargs="+", default=None, help="f-numbers (one frame each)")
    g.add_argument("--sensor-width-mm", type=float, default=None, help="sensor width (mm)")
    g.add_argument("--f35-mm", type=float, default=None, help="35 mm-equivalent focal length (mm)")
    g.add_argument("--fx-px", type=float, default=None, help="focal length in pixels (pinhole K = f/2N * fx)")
    g.add_argument("--no-focus-breathing", action="store_true",
                   help="keep the pinhole field of view while focusing (K without the s1/(s1-f) factor)")
    f = p.add_argument_group("focus")
    f.add_argument("--focus-m", type=float, default=None, help="focus distance (m); default: nearest subject")
    f.add_argument("--focus-stack", type=float, nargs="+", default=None, help="several focus distances (m)")
    r = p.add_argument_group("renderer")
    r.add_argument("--aperture", default="disk", help="aperture: disk (default) or another name the renderer knows")
    r.add_argument("--highlight-gain", type=float, default=0.0, help="bokeh-ball highlight boost (0 = off)")
    r.add_argument("--color-space", choices=("srgb", "linear"), default="srgb", help="colour space of the image")
    r.add_argument("--batch", type=int, default=4, help="frames rendered per renderer call")
    return p




def _invalid_depth_kinds(path: str, invalid: torch.Tensor) -> str:
    """'NaN' / '3 NaN, 2 zero' ...: what the invalid pixels of the depth file were before read_depth zeroed them."""
    counts: dict[str, int] = {}
    raw = None
    if Path(path).suffix.lower() == ".npy":
        try:
            raw = np.asarray(np.load(path, mmap_mode="r"), dtype=np.float64).reshape(invalid.shape)
        except (ValueError, OSError, EOFError):
            raw = None
    if raw is not None:
        counts = {"NaN": int(np.isnan(raw).sum()), "inf": int(np.isinf(raw).sum()), "zero": int((raw == 0).sum())}
    else:
        counts = {"zero": int(invalid.sum())}
    kinds = [(kind, n) for kind, n in counts.items() if n]
    if len(kinds) == 1:
        return f"{sum(n for _, n in kinds)} invalid ({kinds[0][0]}) pixels"
    return f"{int(invalid.sum())} invalid pixels ({', '.join(f'{n} {kind}' for kind, n in kinds)})"


def _load(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    image = read_image(args.image, name="--image")
    depth = read_depth(args.depth, depth_scale=args.depth_scale, name="--depth")
    if depth.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"--depth is {depth.shape[-2]}x{depth.shape[-1]} (HxW) but --image is "
                         f"{image.shape[-2]}x{image.shape[-1]} (HxW); they must have the same size")
    invalid = depth <= 0
    if invalid.any():
        if not args.fill_invalid:
            raise ValueError(f"--depth has {_invalid_depth_kinds(args.depth, invalid)}; expected metres > 0 "
                             f"everywhere, or pass --fill-invalid to treat them as far background")
        if invalid.all():
            raise ValueError("--depth has no valid pixel")
        depth = torch.where(invalid, depth[~invalid].max(), depth)
    check_depth_m(depth, name="--depth")
    return image, depth


def _strengths(args: argparse.Namespace, width: int, height: int, focus: list[float]) -> tuple[list[list[float]],
                                                                                              list[dict]]:
    """K per (focus, frame) and a camera record per frame."""
    if args.K is not None and args.f_number is not None:
        raise ValueError("give either --K or a lens (--f-mm with --f-number), not both")
    if args.K is not None:
        if any(not (math.isfinite(k) and k >= 0) for k in args.K):
            raise ValueError(f"--K values must be >= 0 px*m and finite; got {args.K}")
        return [list(args.K) for _ in focus], [{"K_px_m": k} for k in args.K]
    if args.f_mm is None or args.f_number is None:
        raise ValueError("give --K, or a lens: --f-mm and --f-number with --sensor-width-mm, --f35-mm or --fx-px")
    if args.sensor_width_mm is None and args.f35_mm is None and args.fx_px is None:
        raise ValueError("a lens (--f-mm, --f-number) needs --sensor-width-mm, --f35-mm (35 mm-equivalent focal "
                         "length) or --fx-px to relate millimetres to pixels (camera.json: sensor_width_mm, f35_mm, "
                         "fx_px); e.g. --sensor-width-mm 36 for full frame")
    ks, records = [], []
    for s1 in focus:
        row = []
        for n in args.f_number:
            cam = ThinLensCamera(f_mm=args.f_mm, f_number=n, focus_m=s1, image_width_px=width,
                                 image_height_px=height, sensor_width_mm=args.sensor_width_mm, f35_mm=args.f35_mm,
                                 fx_px=args.fx_px, focus_breathing=not args.no_focus_breathing)
            row.append(cam.K_px_m)
            records.append(cam.to_dict())
        ks.append(row)
    return ks, records


def run(args: argparse.Namespace) -> dict:
    if args.focus_m is not None and args.focus_stack is not None:
        raise ValueError("give --focus-m or --focus-stack, not both")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1; got {args.batch}")
    if args.depth_scale is not None and not (math.isfinite(args.depth_scale) and args.depth_scale > 0):
        raise ValueError(f"--depth-scale must be finite and > 0 (depth PNG units per metre); got {args.depth_scale:g}")
    if not (math.isfinite(args.highlight_gain) and args.highlight_gain >= 0):
        raise ValueError(f"--highlight-gain must be a finite number >= 0 (0 = off); got {args.highlight_gain:g}")
    image, depth = _load(args)
    h, w = image.shape[-2:]
    if args.focus_stack is not None:
        focus = list(args.focus_stack)
    elif args.focus_m is not None:
        focus = [args.focus_m]
    else:
        focus = [float(torch.quantile(depth.flatten()[:: max(1, depth.numel() // 100_000)], 0.02))]
    for s1 in focus:
        if not (math.isfinite(s1) and s1 > 0):
            raise ValueError(f"focus distances must be > 0 m and finite; got {s1}")
    ks, records = _strengths(args, w, h, focus)
    pairs = [(s1, k) for s1, row in zip(focus, ks) for k in row]  # one frame per (focus, K)
    d_min, d_max = float(depth.min()), float(depth.max())
    for s1, k in pairs:
        check_blur_radius(k, s1, d_min, d_max, h, w, name="--K" if args.K is not None else "lens K")
    with output_dir(args.out, overwrite=args.overwrite) as out:
        return _render_and_write(args, out, image, depth, pairs, records)


def _render_and_write(args: argparse.Namespace, out: Path, image: torch.Tensor, depth: torch.Tensor,
                      pairs: list[tuple[float, float]], records: list[dict]) -> dict:
    """Render every (focus, K) frame and write the outputs into ``out`` (inside output_dir: a failure restores it)."""
    h, w = image.shape[-2:]
    render_kwargs = {"aperture": args.aperture, "color_space": args.color_space,
                     "highlight_gain": args.highlight_gain}
    frames, cocs = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in tqdm(range(0, len(pairs), args.batch), desc="rendering", unit="batch"):
            chunk = pairs[start:start + args.batch]
            K = torch.tensor([[k for _, k in chunk]])
            s1 = torch.tensor([[s for s, _ in chunk]])
            f, c = render_frames(image[None], depth[None], K, s1, **render_kwargs)
            frames += list(f[0])
            cocs += list(c[0])
    seconds = time.perf_counter() - t0
    limit = max(float(c.abs().max()) for c in cocs) or 1.0
    frame_records = []
    for i, ((s1, k), frame, coc) in enumerate(zip(pairs, frames, cocs)):
        write_image(out / f"frame_{i:02d}.png", frame.clamp(0, 1))
        write_npy(out / f"coc_{i:02d}.npy", coc[0].float())
        write_image(out / f"coc_{i:02d}.png", colorize_signed(coc[0], limit=limit))
        rec = {"index": i, "focus_m": s1, "K_px_m": k, "coc_radius_px_min": float(coc.min()),
               "coc_radius_px_max": float(coc.max()), "frame": f"frame_{i:02d}.png", "coc": f"coc_{i:02d}.npy"}
        if args.K is None:
            rec["lens"] = records[i]
        frame_records.append(rec)
    labels = [["image", "depth"] + [f"s1={s:.2f} K={k:.2f}" for s, k in pairs]]
    rows = [[image, colorize_depth(depth)] + [f.clamp(0, 1) for f in frames],
            [image * 0 + 1, image * 0 + 1] + [colorize_signed(c[0], limit=limit) for c in cocs]]
    labels.append(["", ""] + ["CoC px (blue front, red behind)"] + [""] * (len(pairs) - 1))
    write_image(out / "grid.png", image_grid(rows, labels=labels))
    summary = {"image": str(args.image), "depth": str(args.depth), "size_hw": [h, w],
               "depth_range_m": [float(depth.min()), float(depth.max())], "frames": frame_records,
               "render": render_kwargs, "render_seconds": seconds,
               "K_units": "px*m; r_px = K * (1/focus_m - 1/depth_m), > 0 behind the focal plane"}
    write_json(out / "camera.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, ImageReadError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(summary['frames'])} frame(s) to {args.out} in {summary['render_seconds']:.2f} s")
    for rec in summary["frames"]:
        print(f"  frame {rec['index']}: focus {rec['focus_m']:.3f} m, K {rec['K_px_m']:.3f} px*m, CoC radius "
              f"{rec['coc_radius_px_min']:.2f} .. {rec['coc_radius_px_max']:.2f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
