#!/usr/bin/env python
"""Depth map(s) -> coloured point clouds (PLY), offscreen renders, side-by-side views and 3-D errors.

Examples::

    # one depth map, coloured by its photo, intrinsics given on the command line
    python tools/lift3d.py --depth out/depth.npy --image photo.jpg --fx 957 --fy 957 --cx 322 --cy 215.5 --out lift/

    # base vs BokehDepth vs ground truth of one sample of a dataset folder (NYU/KITTI/RGB-D/aperture pairs)
    python tools/lift3d.py --dataset ../shared/data/nyu_kitti/nyu_demo --sample rgb_00000 \\
        --depth base=runs/base/rgb_00000.npy --depth BokehDepth=runs/bd/rgb_00000.npy --out lift/ --overwrite

Writes into ``--out``: ``cloud_<label>.ply`` per depth map (and the ground truth), ``render_<label>_<view>.png``,
``side_by_side.png`` (a row per cloud, a column per view), ``metrics.json`` (per depth map against the ground truth:
Chamfer distance, point-to-point RMSE to the nearest ground-truth point, per-pixel 3-D RMSE; metres) and
``summary.json`` (every argument, camera values, cleaning, the renderer used). Renders use Open3D's
OffscreenRenderer, else its legacy hidden Visualizer, else a numpy point splat; the summary and the console say
which. ``--out`` must be new or empty unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401

from bokeh.datasets import DatasetError, Intrinsics, open_dataset  # noqa: E402
from bokeh.io import output_dir, read_depth, read_image, write_json  # noqa: E402
from bokeh.pointcloud import DEFAULT_VIEWS, RENDER_BACKENDS, lift_compare_render  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", action="append", required=True, metavar="[LABEL=]PATH",
                        help="depth map (.npy metres, or 16-bit PNG with --depth-scale); repeat with labels to compare")
    parser.add_argument("--image", help="photo colouring the clouds (same size as the depth)")
    parser.add_argument("--gt", help="ground-truth depth (.npy metres or PNG with --gt-scale)")
    parser.add_argument("--dataset", help="dataset folder giving image, intrinsics and ground truth of --sample")
    parser.add_argument("--sample", help="sample name (or index) in --dataset")
    parser.add_argument("--intrinsics", help="JSON with fx, fy, cx, cy (pixels), cam_in or K")
    for key in ("fx", "fy", "cx", "cy"):
        parser.add_argument(f"--{key}", type=float, help=f"intrinsics {key} in pixels of the depth map")
    parser.add_argument("--depth-scale", type=float, help="units per metre of PNG depth maps (1000 for mm)")
    parser.add_argument("--gt-scale", type=float, help="units per metre of a PNG ground truth (1000 for mm, 256 KITTI)")
    parser.add_argument("--min-depth", type=float, default=1e-3, help="metres; nearer pixels are dropped")
    parser.add_argument("--max-depth", type=float, help="metres; farther pixels are dropped")
    parser.add_argument("--voxel-size", type=float, help="voxel downsampling size in metres (default: none)")
    parser.add_argument("--outlier-std", type=float, default=2.0,
                        help="statistical outlier removal std ratio (default 2.0; 0 disables)")
    parser.add_argument("--outlier-neighbors", type=int, default=20)
    parser.add_argument("--views", default=",".join(DEFAULT_VIEWS),
                        help=f"comma-separated views from {list(DEFAULT_VIEWS)}")
    parser.add_argument("--render-size", default="480x360", help="WxH of each render")
    parser.add_argument("--point-size", type=int, default=2)
    parser.add_argument("--backend", default="auto", choices=("auto",) + RENDER_BACKENDS)
    parser.add_argument("--out", required=True, help="output folder (new or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def _labelled(specs: list[str]) -> dict[str, str]:
    depths: dict[str, str] = {}
    for i, spec in enumerate(specs):
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = ("depth" if len(specs) == 1 else f"depth{i}"), spec
        if label in depths:
            raise ValueError(f"--depth label {label!r} given twice; give each depth map its own label")
        depths[label] = path
    return depths


def resolve_intrinsics(args: argparse.Namespace, fallback: Intrinsics | None = None) -> Intrinsics:
    """--fx/--fy/--cx/--cy, else --intrinsics JSON, else the dataset sample's; an error when none is given."""
    given = [getattr(args, k) for k in ("fx", "fy", "cx", "cy")]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise DatasetError("give all four of --fx --fy --cx --cy (pixels), or --intrinsics JSON")
        return Intrinsics(*map(float, given))
    if args.intrinsics:
        path = Path(args.intrinsics)
        if not path.is_file():
            raise DatasetError(f"intrinsics file not found: {path}")
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(f"{path}: not valid JSON ({error})") from None
        return Intrinsics.from_any(content, str(path))
    if fallback is not None:
        return fallback
    raise DatasetError("intrinsics missing: give --fx --fy --cx --cy (pixels), --intrinsics JSON, or --dataset")


def _range_text(min_depth: float, max_depth: float | None) -> str:
    """'>= 0.001 m (--min-depth)' / '0.5-4 m (--min-depth, --max-depth)': the depth range points are kept in."""
    if max_depth is None:
        return f">= {min_depth:g} m (--min-depth)"
    return f"{min_depth:g}-{max_depth:g} m (--min-depth, --max-depth)"


def check_depth_range(depth: Any, option: str, min_depth: float, max_depth: float | None,
                      scale_option: str = "--depth-scale") -> None:
    """Refuse a depth map without a pixel to lift: none finite and > 0, or none in --min-depth .. --max-depth (the
    range bokeh.pointcloud keeps); the message names ``option`` and, when there are valid pixels, where they lie."""
    import torch

    valid = torch.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise ValueError(f"{option} has no valid pixel: all {depth.numel()} are 0, NaN or inf; expected depths in "
                         f"metres, {_range_text(min_depth, max_depth)}")
    kept = valid & (depth >= min_depth)
    if max_depth is not None:
        kept &= depth <= max_depth
    if not kept.any():
        values = depth[valid]
        raise ValueError(f"{option} has no pixel at {_range_text(min_depth, max_depth)}: its valid depths lie in "
                         f"{float(values.min()):.4g}-{float(values.max()):.4g} m; widen the range, or check the units "
                         f"(metres; {scale_option} for a PNG)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load inputs, lift, compare, render and write; returns the summary that is also written as JSON."""
    width, _, height = args.render_size.lower().partition("x")
    try:
        render_size = (int(width), int(height))
    except ValueError:
        raise ValueError(f"--render-size must be WIDTHxHEIGHT in pixels such as 480x360, got {args.render_size!r}"
                         ) from None
    if min(render_size) < 1:
        raise ValueError(f"--render-size must be at least 1x1 pixels, got {args.render_size!r}")
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    unknown = [v for v in views if v not in DEFAULT_VIEWS]
    if unknown or not views:
        raise ValueError(f"--views: unknown view(s) {unknown or [args.views]}; expected a comma-separated list of "
                         f"{list(DEFAULT_VIEWS)}")
    if args.point_size < 1:
        raise ValueError(f"--point-size must be >= 1 pixel, got {args.point_size}")
    if not (math.isfinite(args.outlier_std) and args.outlier_std >= 0):
        raise ValueError(f"--outlier-std must be a finite number >= 0 (0 disables), got {args.outlier_std}")
    if args.voxel_size is not None and not (math.isfinite(args.voxel_size) and args.voxel_size > 0):
        raise ValueError(f"--voxel-size must be a finite size in metres > 0 (or left out), got {args.voxel_size}")
    image, gt, camera, sample_info = None, None, None, {}
    if args.dataset:
        dataset = open_dataset(args.dataset)
        names = [r.name for r in dataset.records]
        if args.sample is None:
            index = 0
        elif args.sample in names:
            index = names.index(args.sample)
        elif args.sample.isdigit() and int(args.sample) < len(names):
            index = int(args.sample)
        else:
            raise DatasetError(f"sample {args.sample!r} not in {args.dataset} (has {names[:5]}...)")
        sample = dataset[index]
        image, gt, camera = sample["image"], sample["depth_m"], Intrinsics(sample["fx"], sample["fy"],
                                                                             sample["cx"], sample["cy"])
        sample_info = {"dataset": dataset.summary(), "sample": sample["name"]}
    if args.image:
        image = read_image(args.image, name="--image")
    if args.gt:
        gt = read_depth(args.gt, depth_scale=args.gt_scale, name="--gt")
    camera = resolve_intrinsics(args, camera)
    labelled = _labelled(args.depth)
    depths = {label: read_depth(path, depth_scale=args.depth_scale, name="--depth") for label, path in labelled.items()}
    size = tuple(next(iter(depths.values())).shape[-2:])
    for label, depth in list(depths.items()) + ([("image", image)] if image is not None else []) + (
            [("ground truth", gt)] if gt is not None else []):
        if tuple(depth.shape[-2:]) != size:
            raise DatasetError(f"{label} is {depth.shape[-1]}x{depth.shape[-2]} but the depth map is "
                               f"{size[1]}x{size[0]} (WxH); they must have one size")
    camera.check_image(size[1], size[0], where="intrinsics")
    checks = [(depth, f"--depth {labelled[label]}", "--depth-scale") for label, depth in depths.items()]
    if gt is not None:
        checks.append((gt, f"--gt {args.gt}" if args.gt else f"the ground truth of --dataset sample "
                           f"{sample_info.get('sample')}", "--gt-scale"))
    for depth, option, scale_option in checks:  # here, not in bokeh.pointcloud: the message names the option
        check_depth_range(depth, option, args.min_depth, args.max_depth, scale_option)
    with output_dir(args.out, overwrite=args.overwrite) as out:
        result = lift_compare_render(
            depths, camera.matrix(), image=image, gt_depth_m=gt, out_dir=out, views=views, render_size=render_size,
            backend=args.backend, point_size=args.point_size, voxel_size_m=args.voxel_size,
            outlier_std_ratio=args.outlier_std or None, outlier_neighbors=args.outlier_neighbors,
            min_depth_m=args.min_depth, max_depth_m=args.max_depth, overwrite=True)
        result.pop("renders")
        summary = {"arguments": vars(args), "intrinsics": camera.as_dict(), "depth_size_hw": list(size),
                   **sample_info, **result}
        if result["metrics"]:
            write_json(out / "metrics.json", result["metrics"])
        write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (DatasetError, OSError, ValueError) as error:  # OSError: FileExistsError, cannot create --out, ...
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary["renderer"])
    for label, info in summary["clouds"].items():
        print(f"{label}: {info['points_out']} points")
    for label, metrics in summary["metrics"].items():
        print(f"{label} vs ground truth: Chamfer {metrics['chamfer_m']:.4f} m, RMSE to nearest GT point "
              f"{metrics['rmse_m']:.4f} m, per-pixel 3-D RMSE {metrics['pixel_rmse_m']:.4f} m")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
