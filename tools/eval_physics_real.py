#!/usr/bin/env python
"""Real-data check of the physics: render f/2.8 from f/8 + depth and compare with the real f/2.8 photo.

    python tools/eval_physics_real.py --data ../shared/data/dfd_indoor --out out/physics_real

Data: a folder with ``index.csv`` (id, rgb_f2_8, rgb_f8, depth_mm; paths relative to it), e.g. the DFD-indoor
sample (Nikon D200, 35 mm lens, APS-C 23.6 mm wide, f/8 and f/2.8 of the same view, depth in mm PNGs).
Per scene:

1. register the f/2.8 photo onto the f/8 photo (phase correlation + Lucas-Kanade, Fourier shift);
2. fit the focus distance through the differentiable renderer (on a ``--fit-scale`` copy, for speed) with the
   thin-lens strength of the EXTRA blur
   ``K_rel = sqrt(K_2.8^2 - K_8^2)`` (the f/8 photo already carries ``K_8 |Delta|`` of blur; disk on disk adds in
   quadrature, second-moment match); the focus grid runs 0.2-100 m, not limited to the scene's depths;
3. render f/2.8 from f/8 + depth with ``physics.render.render_bokeh`` at (K_rel, fitted focus), and, as a second
   variant, with focus AND K fitted freely;
4. baselines on the same footing (the same registration, a closed-form exposure gain in linear light for every
   method, the same interior crop): the f/8 photo unchanged; the order-free BokehMe scatter
   (``render_scatter_bokehme``) at the same (K_rel, focus); and a depth-blind uniform disk blur with the best single
   radius (does the depth map help at all?); and ours followed by the best uniform disk (a depth-independent
   residual blur of the wide aperture: aberrations, softness);
5. PSNR / SSIM (kornia) against the registered real f/2.8 photo; also closed-form depth from the pair
   (``physics.dfd.depth_from_aperture_pair``) vs the sensor depth (AbsRel on 0.5-4 m, confident pixels).

Outputs in ``--out`` (new or empty unless ``--overwrite``): ``results.json`` (per scene and mean, every camera
value), ``grid.png`` (f/8, ours, scatter, real f/2.8, |ours - real| x4, depth; first ``--grid-rows`` scenes).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401

import kornia  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bokeh.io import (  # noqa: E402
    ImageReadError,
    colorize_depth,
    image_grid,
    check_output_dir,
    output_dir,
    read_depth,
    read_image,
    write_image,
    write_json,
)
from physics.camera import k_from_lens  # noqa: E402
from physics.dfd import blur_bank, depth_from_aperture_pair, relative_k  # noqa: E402
from physics.focus_fit import (  # noqa: E402
    apply_gain,
    exposure_gain,
    fit_focus,
    phase_correlation,
    psnr_db,
    shift_image,
    ssim,
)
from physics.render import render_bokeh, render_scatter_bokehme  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="folder with index.csv (id, rgb_f2_8, rgb_f8, depth_mm)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--limit", type=int, default=None, help="first N scenes only")
    p.add_argument("--f-mm", type=float, default=35.0, help="focal length (mm)")
    p.add_argument("--sensor-width-mm", type=float, default=23.6, help="sensor width (mm)")
    p.add_argument("--f-sharp", type=float, default=8.0, help="f-number of the sharp photo")
    p.add_argument("--f-wide", type=float, default=2.8, help="f-number of the defocused photo")
    p.add_argument("--focus-prior-m", type=float, default=1.7, help="focus used to compute K before the fit (m)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="depth PNG units per metre")
    p.add_argument("--crop-px", type=int, default=16, help="border excluded from every metric (px)")
    p.add_argument("--steps", type=int, default=10, help="L-BFGS iterations of the focus fit")
    p.add_argument("--grid-focus", type=int, default=24, help="focus grid size")
    p.add_argument("--fit-scale", type=float, default=0.5,
                   help="fit focus (and K) on images downscaled by this factor (K scaled with it); score at full size")
    p.add_argument("--no-fit-k", action="store_true", help="skip the variant that also fits K")
    p.add_argument("--grid-rows", type=int, default=4, help="scenes shown in grid.png")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return p


def _read_index(data: Path) -> list[dict[str, str]]:
    index = data / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: --data must be a folder with index.csv "
                                f"(id, rgb_f2_8, rgb_f8, depth_mm)")
    with open(index, newline="") as handle:
        rows = list(csv.DictReader(handle))
    need = {"id", "rgb_f2_8", "rgb_f8", "depth_mm"}
    if not rows:
        raise ValueError(f"{index} lists no scene")
    if not need <= set(rows[0]):
        raise ValueError(f"{index} must have columns {sorted(need)}; got {sorted(rows[0])}")
    return rows


def _uniform_blur_best(sharp: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, max_radius: float = 5.0
                       ) -> tuple[torch.Tensor, float]:
    """Depth-blind baseline: the single disk radius (0..max, 0.25 px steps, linear light) that best explains target."""
    radii = [0.25 * i for i in range(int(max_radius / 0.25) + 1)]
    lin = kornia.color.rgb_to_linear_rgb(sharp)
    bank = kornia.color.linear_rgb_to_rgb(blur_bank(lin, radii)[:, 0].clamp(0, 1))  # [C,3,H,W]
    best, best_err, best_img = 0.0, math.inf, sharp
    for r, img in zip(radii, bank):
        pred = apply_gain(img[None], exposure_gain(img[None], target, mask))
        err = float(((pred - target) ** 2 * mask).sum())
        if err < best_err:
            best, best_err, best_img = r, err, pred
    return best_img, best


def evaluate_scene(row: dict[str, str], data: Path, args: argparse.Namespace) -> tuple[dict, list]:
    sharp = read_image(data / row["rgb_f8"])[None]
    wide = read_image(data / row["rgb_f2_8"])[None]
    depth = read_depth(data / row["depth_mm"], depth_scale=args.depth_scale)[None]
    if sharp.shape != wide.shape or depth.shape[-2:] != sharp.shape[-2:]:
        raise ValueError(f"scene {row['id']}: f/8 {tuple(sharp.shape)}, f/2.8 {tuple(wide.shape)} and depth "
                         f"{tuple(depth.shape)} sizes differ")
    valid = depth > 0
    if not valid.any():
        raise ValueError(f"scene {row['id']}: depth has no valid pixel")
    depth_filled = torch.where(valid, depth, depth[valid].max()).clamp_min(0.2)
    h, w = sharp.shape[-2:]
    c = args.crop_px
    mask = torch.zeros(1, 1, h, w)
    mask[..., c:h - c, c:w - c] = 1.0

    t0 = time.perf_counter()
    shift = phase_correlation(sharp, wide)[0]
    wide_reg = shift_image(wide, float(shift[0]), float(shift[1])).clamp(0, 1)

    lens = dict(sensor_width_mm=args.sensor_width_mm)
    k_sharp = float(k_from_lens(args.f_mm, args.f_sharp, args.focus_prior_m, w, **lens))
    k_wide = float(k_from_lens(args.f_mm, args.f_wide, args.focus_prior_m, w, **lens))
    k_rel = float(relative_k(k_wide, k_sharp))

    # fit on an area-downscaled copy (K scales with the width), render and score at full resolution
    fs = args.fit_scale
    small = (lambda x: torch.nn.functional.interpolate(x, scale_factor=fs, mode="area")) if fs != 1 else (lambda x: x)
    s_sharp, s_depth, s_wide = small(sharp), small(depth_filled), small(wide_reg)
    s_crop = max(2, int(round(c * fs)))
    fit = fit_focus(s_sharp, s_depth, s_wide, K_px_m=k_rel * fs, register=False, steps=args.steps,
                    grid_focus=args.grid_focus, crop_px=s_crop)
    with torch.no_grad():
        ours = render_bokeh(sharp, depth_filled, k_rel, fit.focus_m)
    ours = apply_gain(ours, exposure_gain(ours, wide_reg, mask))
    result = {"id": row["id"], "shift_px": [float(shift[0]), float(shift[1])], "K_f8_px_m": k_sharp,
              "K_f2_8_px_m": k_wide, "K_rel_px_m": k_rel, "focus_fit_m": fit.focus_m, "gain": fit.gain,
              "depth_range_m": [float(depth[valid].min()), float(depth[valid].max())]}

    def score(name: str, pred: torch.Tensor) -> None:
        result[f"{name}_psnr"] = psnr_db(pred, wide_reg, c)
        result[f"{name}_ssim"] = ssim(pred, wide_reg, c)

    score("ours", ours)
    f8_gain = apply_gain(sharp, exposure_gain(sharp, wide_reg, mask))
    score("f8", f8_gain)
    with torch.no_grad():
        scatter = render_scatter_bokehme(sharp, depth_filled, k_rel, fit.focus_m)
    scatter = apply_gain(scatter, exposure_gain(scatter, wide_reg, mask))
    score("scatter", scatter)
    uniform, r_uni = _uniform_blur_best(sharp, wide_reg, mask)
    result["uniform_radius_px"] = r_uni
    score("uniform", uniform)
    # depth-aware defocus plus a depth-independent residual blur of the wide aperture (aberrations, softness)
    soft, r_soft = _uniform_blur_best(ours, wide_reg, mask, max_radius=3.0)
    result["ours_soft_radius_px"] = r_soft
    score("ours_soft", soft)
    if not args.no_fit_k:
        fit_k = fit_focus(s_sharp, s_depth, s_wide, K_px_m=None, register=False, steps=args.steps,
                          grid_focus=max(8, args.grid_focus // 2), grid_k=6, K_range=(0.5 * fs, 20.0 * fs),
                          crop_px=s_crop)
        k_fit = fit_k.K_px_m / fs
        result.update(focus_fitK_m=fit_k.focus_m, K_fitK_px_m=k_fit)
        with torch.no_grad():
            pred = render_bokeh(sharp, depth_filled, k_fit, fit_k.focus_m)
        score("ours_fitK", apply_gain(pred, exposure_gain(pred, wide_reg, mask)))
    # closed-form depth from the aperture pair at the fitted focus, vs the sensor depth
    with torch.no_grad():
        dfd = depth_from_aperture_pair(sharp, wide_reg, k_sharp, k_wide, fit.focus_m, max_radius_px=6.0,
                                       window_px=15)
    strict = valid & (depth > 0.5) & (depth < 4.0) & (dfd["confidence"] > 0.3) & (mask > 0)
    if strict.any():
        result["dfd_absrel"] = float(((dfd["depth_m"] - depth).abs() / depth)[strict].median())
        result["dfd_pixels"] = int(strict.sum())
    result["seconds"] = time.perf_counter() - t0
    result["fit_psnr_at_fit_scale"] = fit.psnr_db
    err = ((ours - wide_reg).abs() * 4).clamp(0, 1)
    pictures = [sharp[0], ours[0], scatter[0], wide_reg[0], err[0], colorize_depth(depth[0])]
    return result, pictures


def check_options(args: argparse.Namespace) -> None:
    """The numeric options, before any scene is read (a ValueError naming the option, the value and the range)."""
    for name in ("f_mm", "sensor_width_mm", "f_sharp", "f_wide", "focus_prior_m", "depth_scale"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be finite and > 0; got {value:g}")
    if not 0 < args.fit_scale <= 1:
        raise ValueError(f"--fit-scale must be in (0, 1]; got {args.fit_scale}")
    for name, low in (("crop_px", 0), ("steps", 0), ("grid_focus", 1), ("grid_rows", 0), ("threads", 0),
                      ("limit", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}; got {value}")


def run(args: argparse.Namespace) -> dict:
    check_options(args)
    check_output_dir(args.out, args.overwrite)  # refused before any scene is read
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    rows = _read_index(data)
    if args.limit is not None:
        rows = rows[:args.limit]
    with output_dir(args.out, overwrite=args.overwrite) as out:  # a failure leaves no half-written folder
        return _evaluate_all(args, data, rows, out)


def _evaluate_all(args: argparse.Namespace, data: Path, rows: list[dict], out: Path) -> dict:
    results, grid_rows = [], []
    failed = []
    for row in tqdm(rows, desc="scenes", unit="scene"):
        try:
            res, pics = evaluate_scene(row, data, args)
        except (ValueError, ImageReadError, RuntimeError) as error:  # one bad scene must not lose the others
            print(f"scene {row.get('id')}: FAILED: {error}", file=sys.stderr)
            failed.append({"id": row.get("id"), "error": f"{type(error).__name__}: {error}"})
            continue
        results.append(res)
        if len(grid_rows) < args.grid_rows:
            grid_rows.append(pics)
        write_json(out / "results.json", {"scenes": results, "failed": failed, "partial": True})
    if not results:
        raise ValueError(f"every scene failed: {failed}")
    keys = [k for k in results[0] if k.endswith("_psnr") or k.endswith("_ssim") or k in
            ("focus_fit_m", "dfd_absrel", "uniform_radius_px", "K_fitK_px_m", "focus_fitK_m",
             "ours_soft_radius_px")]
    mean = {k: sum(r[k] for r in results if k in r) / max(1, sum(1 for r in results if k in r)) for k in keys}
    median_focus = sorted(r["focus_fit_m"] for r in results)[len(results) // 2]
    summary = {"data": str(data), "num_scenes": len(results), "mean": mean, "median_focus_fit_m": median_focus,
               "scenes": results, "failed": failed, "settings": {k: v for k, v in vars(args).items()},
               "methods": {
                   "f8": "f/8 photo unchanged (exposure gain only)",
                   "uniform": "f/8 blurred by the single best disk radius (depth-blind)",
                   "scatter": "order-free BokehMe scatter (render_scatter_bokehme) at K_rel and the fitted focus",
                   "ours": "render_bokeh (occlusion-aware) at K_rel = sqrt(K_2.8^2 - K_8^2) and the fitted focus",
                   "ours_fitK": "render_bokeh with focus and K both fitted",
                   "ours_soft": "ours, then a uniform disk blur of the best radius (depth-independent lens softness)",
               }}
    write_json(out / "results.json", summary)
    labels = ["f/8", "ours (render_bokeh)", "BokehMe scatter", "real f/2.8", "|ours - real| x4", "depth"]
    write_image(out / "grid.png", image_grid(grid_rows, labels=labels))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, ImageReadError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    m = summary["mean"]
    print(f"{summary['num_scenes']} scenes ({len(summary['failed'])} failed); median fitted focus "
          f"{summary['median_focus_fit_m']:.2f} m")
    print(f"{'method':<12} {'PSNR (dB)':>10} {'SSIM':>8}")
    for name in ("f8", "uniform", "scatter", "ours", "ours_fitK", "ours_soft"):
        if f"{name}_psnr" in m:
            print(f"{name:<12} {m[name + '_psnr']:>10.2f} {m[name + '_ssim']:>8.4f}")
    if "dfd_absrel" in m:
        print(f"closed-form depth from the pair: median AbsRel {m['dfd_absrel']:.3f} (mean over scenes)")
    print(f"wrote {Path(args.out) / 'results.json'} and grid.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
