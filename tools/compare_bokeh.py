#!/usr/bin/env python
"""Physics vs learned bokeh, side by side: PSNR, SSIM (LPIPS when available), K-calibration error, baselines.

    python tools/compare_bokeh.py --generator runs/stage1/<run> --out compare/            # synthetic test split
    python tools/compare_bokeh.py --generator runs/stage1/<run> --out compare/ --rgbd data.jsonl
    python tools/compare_bokeh.py --generator runs/stage1/<run> --out compare/ \
        --aperture-pairs /path/to/aperture_pairs                                            # real photos

For every sample and strength K (px*m at the evaluated width) it compares, against the physics render
(physics.render.render_bokeh with the scene's depth at the focus the generator was trained on: its generator.json
``focus_m``, e.g. a fixed 100 m, or each scene's nearest subject when that is null):
- ``learned``: the Stage-1 generator (guidance off), ``learned_guided``: with physics guidance (flux conservation +
  stack consistency, strengths ``--flux-guidance`` / ``--stack-guidance``);
- ``identity``: output = input; ``uniform_disk``: one disk blur of the frame's mean |CoC radius| over the image (an
  oracle: it is told each scene's depth through that radius); ``uniform_disk_population``: one disk blur per K at
  the population-mean radius K * mean |1/focus - 1/depth| over every pixel of every evaluated sample, the same for
  all scenes -- the best a depth-free constant blur can know from the data distribution (on scenes whose appearance
  hides depth, the ceiling of a depth-free uniform blur).
K-calibration error: the K that best explains an output under the physics renderer (1-D fit with the known focus:
log-K grid + parabola refinement; 2-D fit over focus x K on the first ``--fit2d-scenes`` scenes), as
|K_fit - K| / K. Real aperture pairs (vabd: Canon 70D, APS-C 22.5 mm, 50 mm, f/16 input vs f/2.8, f/1.8; ebb:
Canon 7D, 22.3 mm, 50 mm f/1.8 vs a wide-DoF input): K from physics.camera at an assumed focus distance
(``--assumed-focus-m``, default 2 m: the focus is not recorded; K changes by s1/(s1 - f), < 3% beyond 2 m), the
learned frame vs the real photo next to identity and a uniform disk blur whose radius is fitted to the real photo
(an oracle the generator does not get). Writes ``<out>/index.html`` (grids: input | physics or real | learned |
learned+guidance | |learned - target| x4) and ``<out>/results.json``. For a generator with the layered head, the
learned rows also get its defocus map against the true |1/focus - 1/depth| (``defocus_corr``, ``defocus_mean_ratio``
pred/true, ``defocus_mae_inv_m``) and the grids two grey maps (learned, true) on one scale.

``--map-oracles`` (layered generators) splits the learned frames' K error into its parts, each row rendered through
the generator's own head (``render_defocus``) with a map it is told: ``map_true`` the scene's true defocus map (the
fit's own floor: ~0); ``map_true_lowres`` the true map at the resolution the head predicts it (area-averaged over the
UNet's space-to-depth blocks, bilinearly upsampled as the head does: the floor of the head's resolution);
``map_learned_true_scale`` the learned map multiplied by the scene's mean true / mean learned defocus (the learned
map's shape at the true scale: what is left once the per-scene scale error is removed).

Bad input (a missing generator, manifest or pairs folder, an unreadable or negative depth, a depth of another size
than its image or without one valid (> 0) pixel, K <= 0, a non-empty ``--out`` without ``--overwrite``) is one line
``error: ...`` on stderr and exit code 2 (``cli``), checked before the output folder is touched; a run that fails
later leaves the folder as it was (bokeh.io.output_dir). Invalid depth pixels (0, NaN, inf) are counted in a warning
(the physics references put them at 1000 m).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import _bootstrap  # noqa: F401
from _cli import (add_guidance_arguments, check_strengths, guidance_from_args, positive_int,  # noqa: E402
                  run_reporting_errors)

import kornia  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bokeh.generation import GuidanceConfig  # noqa: E402
from bokeh.io import image_grid, output_dir, read_image, write_image, write_json, write_text  # noqa: E402
from physics.k_fit import fit_k, fit_k_focus, fit_range, k_measurability  # noqa: E402

METHODS = ("learned", "learned_guided", "identity", "uniform_disk", "uniform_disk_population", "map_true",
           "map_true_lowres", "map_learned_true_scale")
MAP_ORACLES = METHODS[-3:]


# ------------------------------------------------------------------------------------------------------ metrics
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(kornia.metrics.ssim(a[None].float(), b[None].float(), window_size=7).mean())


def make_lpips() -> tuple[Callable[[torch.Tensor, torch.Tensor], float] | None, str]:
    """LPIPS only when it runs here without downloading anything (torchmetrics + torchvision + cached weights)."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    except Exception as error:  # ImportError (torchvision) or a failed weight download (offline)
        return None, f"LPIPS skipped: not available locally ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
    return (lambda a, b: float(metric(a[None].clamp(0, 1), b[None].clamp(0, 1)))), "LPIPS (alex) computed"


def uniform_disk(image: torch.Tensor, radius_px: float) -> torch.Tensor:
    """One disk blur of the whole image in linear light (physics.dfd.blur_bank), sRGB in/out, [3,H,W]."""
    from physics.dfd import blur_bank

    if radius_px <= 0.05:
        return image.clone()
    lin = kornia.color.rgb_to_linear_rgb(image[None].clamp(0, 1))
    out = blur_bank(lin, [float(radius_px)])[0]
    return kornia.color.linear_rgb_to_rgb(out.clamp(0, 1))[0]


def population_radius_px(samples: Sequence[dict[str, Any]], Ks: Sequence[float]) -> list[float]:
    """Depth-free baseline radius (px) per K: the mean |r| = |K (1/focus_m - 1/depth_m)| over all pixels of all
    ``samples`` (each with depth_m [1,H,W] in m and focus_m in m), pixel-weighted; K in px*m."""
    total, count = 0.0, 0
    for s in samples:
        # |r| is K times |1/focus - 1/depth| (K >= 0): average that once, in float64 over possibly many pixels
        delta = defocus_magnitude_inv_m(s["depth_m"], float(s["focus_m"])).double()
        total += float(delta.sum())
        count += delta.numel()
    if count == 0:
        raise ValueError("population_radius_px needs at least one sample with a depth map")
    return [abs(float(K)) * total / count for K in Ks]


def fit_disk_radius(image: torch.Tensor, target: torch.Tensor, max_radius_px: float) -> float:
    """Oracle uniform-disk radius: the grid radius whose blur of ``image`` is closest to ``target``."""
    from physics.dfd import blur_bank

    radii = torch.linspace(0.0, max_radius_px, 33).tolist()
    lin = kornia.color.rgb_to_linear_rgb(image[None].clamp(0, 1))
    bank = kornia.color.linear_rgb_to_rgb(blur_bank(lin, radii)[:, 0].clamp(0, 1))
    err = (bank - target[None]).pow(2).flatten(1).mean(1)
    return float(radii[int(err.argmin())])


def defocus_magnitude_inv_m(depth_m: torch.Tensor, focus_m: float) -> torch.Tensor:
    """|1/focus - 1/depth| [1,H,W] (1/m): the CoC radius per unit K, both sides of the focal plane, unclamped (the
    metric; the training target ``lightning_modules.stage1.true_defocus_inv_m`` is one-sided and clamped)."""
    from physics.camera import signed_coc_radius_px

    return signed_coc_radius_px(depth_m[None], 1.0, float(focus_m))[0].abs()


def defocus_agreement(pred_inv_m: torch.Tensor, true_inv_m: torch.Tensor) -> dict[str, float | None]:
    """A generator's defocus map [1,h,w] (1/m) against the scene's true one [1,H,W] (:func:`defocus_magnitude_inv_m`,
    resized to the map, area-averaged): Pearson correlation (None for a constant map), mean ratio pred / true (1 = the
    right overall blur; < 1 under-blurs), mean absolute error (1/m)."""
    true = true_inv_m.double()[None]
    if true.shape[-2:] != pred_inv_m.shape[-2:]:
        true = F.interpolate(true, size=pred_inv_m.shape[-2:], mode="area")
    true, pred = true.flatten(), pred_inv_m.double().flatten()
    corr = None
    if float(pred.std()) > 1e-9 and float(true.std()) > 1e-9:
        corr = float(torch.corrcoef(torch.stack([pred, true]))[0, 1])
    return {"defocus_corr": corr, "defocus_mean_ratio": float(pred.mean() / true.mean().clamp_min(1e-12)),
            "defocus_mae_inv_m": float((pred - true).abs().mean())}


# ------------------------------------------------------------------------------------------------------ samples
def synthetic_samples(count: int, size: int, seed: int, focus_m: float | None = None,
                      scene_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The Stage-1 synthetic test split (same seeds as lightning_modules.stage1_data 'test'); focus_m: the generator's
    training focus (None: each scene's nearest subject); scene_options: keyword arguments of make_scene."""
    from lightning_modules.stage1_data import SyntheticSplit

    split = SyntheticSplit("test", count, size, size, seed, dict(scene_options or {}), focus_m)
    return [dict(split[i], name=f"synthetic_{i:03d}") for i in range(count)]


def rgbd_samples(manifest: Path, size: int, focus_m: float | None = None) -> list[dict[str, Any]]:
    """The rows of an RGB-D manifest at ``size`` x ``size``. A depth that is unreadable, negative, of another size than
    its image or without a valid pixel is an error (lightning_modules.stage1_data.RGBDManifest); holes are counted in a
    warning (the physics reference puts them at 1000 m)."""
    from lightning_modules.stage1_data import RGBDManifest

    ds = RGBDManifest(manifest, size, size, focus_m)
    samples = []
    for i, row in enumerate(ds.rows):
        sample = ds[i]
        invalid, total = (int(v) for v in sample.pop("invalid_depth_px"))
        if invalid:
            warnings.warn(f"depth {row['depth']}: {invalid} of {total} pixels are invalid (0, NaN or inf: no depth); "
                          "the physics reference puts them at 1000 m", stacklevel=2)
        samples.append(dict(sample, name=f"rgbd_{i:03d}"))
    return samples


def aperture_pair_samples(root: Path, width: int, assumed_focus_m: float) -> list[dict[str, Any]]:
    """vabd (f16_input vs f2.8 / f1.8) and ebb (input_wide_dof vs target_bokeh) pairs, resized to ``width``."""
    from physics.camera import k_from_lens

    cameras = {"vabd": {"f_mm": 50.0, "sensor_width_mm": 22.5, "input_f": 16.0,
                        "targets": {"f2.8": 2.8, "f1.8": 1.8}, "input": "f16_input"},
               "ebb": {"f_mm": 50.0, "sensor_width_mm": 22.3, "input_f": None,
                       "targets": {"target_bokeh": 1.8}, "input": "input_wide_dof"}}
    out = []
    for name, cam in cameras.items():
        folder = root / name
        if not folder.is_dir():
            continue
        if not (folder / cam["input"]).is_dir():
            raise FileNotFoundError(f"{folder} has no {cam['input']}/ folder; expected {name}/{cam['input']}/ with the "
                                    f"sharp inputs beside {' or '.join(f'{t}/' for t in cam['targets'])} with the "
                                    f"photos of the same names")
        for path in sorted((folder / cam["input"]).iterdir()):
            image = read_image(path)
            h0, w0 = image.shape[-2:]
            size = (max(8, round(h0 * width / w0)), width)
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            for sub, f_number in cam["targets"].items():
                target_path = folder / sub / path.name
                if not target_path.is_file():
                    continue
                target = read_image(target_path)
                target = F.interpolate(target[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
                K = float(k_from_lens(cam["f_mm"], f_number, assumed_focus_m, width, sensor_width_mm=cam["sensor_width_mm"]))
                K_in = (float(k_from_lens(cam["f_mm"], cam["input_f"], assumed_focus_m, width,
                                          sensor_width_mm=cam["sensor_width_mm"])) if cam["input_f"] else None)
                out.append({"name": f"{name}_{path.stem}_{sub}", "image": image.clamp(0, 1), "target": target.clamp(0, 1),
                            "K_px_m": K, "K_input_px_m": K_in, "f_number": f_number})
    return out


# ------------------------------------------------------------------------------------------------------- compare
def summarize(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in METHODS:
        entry = {}
        for key in keys:
            vals = [r[method][key] for r in rows if method in r and r[method].get(key) is not None]
            if vals:
                entry[key] = sum(vals) / len(vals)
                entry[f"{key}_n"] = len(vals)
        if entry:
            summary[method] = entry
    return summary


def summarize_by_k(rows: Sequence[dict[str, Any]], keys: Sequence[str], Ks: Sequence[float]) -> dict[str, Any]:
    """:func:`summarize` over the rows of each asked K separately: {"<K>": summary} (K formatted with 4 digits)."""
    return {f"{K:.4g}": summarize([r for r in rows if r["K_px_m"] == K], keys) for K in Ks}


def map_oracle_frames(gen: Any, image: torch.Tensor, Ks: Sequence[float], learned_inv_m: torch.Tensor,
                      true_inv_m: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``--map-oracles`` outputs: {name: frames [N,3,H,W]} rendered by ``gen.render_defocus`` at K (px*m at the
    image width) from maps it is told. image [3,H,W]; learned_inv_m [N,1,h,w] (the generator's map per K, working
    size); true_inv_m [1,H,W] (|1/focus - 1/depth|, 1/m). See the module docstring for the three maps."""
    n, (H, W) = len(Ks), image.shape[-2:]
    K = torch.tensor([float(k) for k in Ks], dtype=image.dtype)
    sharp = image[None].expand(n, -1, -1, -1)
    learned = F.interpolate(learned_inv_m.to(image.dtype), size=(H, W), mode="bilinear", align_corners=False)
    true = true_inv_m.to(image.dtype)[None].expand(n, -1, -1, -1)
    s = int(getattr(getattr(gen, "net", None), "space_to_depth", 1))
    lowres = true if s == 1 or H % s or W % s else F.interpolate(
        F.avg_pool2d(true, s), size=(H, W), mode="bilinear", align_corners=False)
    scale = true.flatten(1).mean(1) / learned.flatten(1).mean(1).clamp_min(1e-12)
    with torch.no_grad():
        return {name: gen.render_defocus(sharp, K, m).clamp(0, 1).cpu()
                for name, m in (("map_true", true), ("map_true_lowres", lowres),
                                ("map_learned_true_scale", learned * scale.view(n, 1, 1, 1)))}


def run_synthetic(gen: Any, samples: list[dict[str, Any]], Ks: list[float], guidance: GuidanceConfig, steps: int,
                  k_bounds: tuple[float, float], fit2d_scenes: int, lpips: Callable | None, out: Path, tag: str,
                  max_grids: int, map_oracles: bool = False) -> dict[str, Any]:
    from physics.camera import signed_coc_radius_px
    from physics.render import render_bokeh

    rows, grids = [], []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    population = population_radius_px(samples, Ks)  # one radius per K for every scene: no per-scene depth
    for idx, s in enumerate(tqdm(samples, desc=tag, unit="scene")):
        image, depth, focus = s["image"], s["depth_m"], float(s["focus_m"])
        n = len(Ks)
        with torch.no_grad():
            physics = render_bokeh(image[None].expand(n, -1, -1, -1), depth[None].expand(n, -1, -1, -1),
                                   torch.tensor(Ks), torch.full((n,), focus)).clamp(0, 1)
        result = gen.generate_stack(image, Ks, num_steps=steps, seed=idx)
        learned = result.frames[0]
        defocus = result.info.get("defocus_inv_m")  # layered head: the map it rendered, [1, N, 1, h, w]
        true_defocus = defocus_magnitude_inv_m(depth, focus) if defocus is not None else None
        guided = (gen.generate_stack(image, Ks, num_steps=steps, seed=idx, guidance=guidance).frames[0]
                  if guidance.enabled else None)
        oracles = (map_oracle_frames(gen, image, Ks, defocus[0], true_defocus)
                   if map_oracles and defocus is not None else {})
        grid_rows = []
        for j, K in enumerate(Ks):
            radius = signed_coc_radius_px(depth[None], K, focus).abs()
            outputs = {"learned": learned[j], "identity": image,
                       "uniform_disk": uniform_disk(image, float(radius.mean())),
                       "uniform_disk_population": uniform_disk(image, population[j])}
            if guided is not None:
                outputs["learned_guided"] = guided[j]
            outputs.update({name: frames[j] for name, frames in oracles.items()})
            sensitivity, measurable = k_measurability(image, depth, focus, K)
            row: dict[str, Any] = {"name": s["name"], "K_px_m": K, "focus_m": focus,
                                   "mean_radius_px": float(radius.mean()), "population_radius_px": population[j],
                                   "k_sensitivity_rms": sensitivity, "k_measurable": measurable}
            for method, pred in outputs.items():
                m = {"psnr": psnr(pred, physics[j]), "ssim": ssim(pred, physics[j])}
                if lpips is not None:
                    m["lpips"] = lpips(pred, physics[j])
                k_fit = fit_k(image, depth, focus, pred, *fit_range(*k_bounds))
                m["K_fit_px_m"] = k_fit
                m["k_cal_err"] = abs(k_fit - K) / K
                m["k_cal_err_measurable"] = m["k_cal_err"] if measurable else None
                if method.startswith("learned") and idx < fit2d_scenes:
                    k2, f2 = fit_k_focus(image, depth, focus, pred, *fit_range(*k_bounds))
                    m.update(K_fit2d_px_m=k2, focus_fit2d_m=f2, k_cal_err_2d=abs(k2 - K) / K)
                row[method] = m
            if defocus is not None:
                row["learned"].update(defocus_agreement(defocus[0, j], true_defocus))
            rows.append(row)
            cells = [image, physics[j], learned[j]] + ([guided[j]] if guided is not None else []) + \
                    [((learned[j] - physics[j]).abs() * 4).clamp(0, 1)]
            if defocus is not None:  # grey maps on one scale: predicted and true |1/focus - 1/depth|
                pred = F.interpolate(defocus[0, j][None].float(), size=true_defocus.shape[-2:], mode="bilinear",
                                     align_corners=False)[0]
                top = float(torch.maximum(true_defocus.max(), pred.max()).clamp_min(1e-6))
                cells += [(pred / top).expand(3, -1, -1), (true_defocus / top).expand(3, -1, -1)]
            grid_rows.append(cells)
        if len(grids) < max_grids:
            labels = ["input", "physics", "learned"] + (["learned+guidance"] if guided is not None else []) + \
                ["|diff| x4"] + (["defocus (learned)", "defocus (true)"] if defocus is not None else [])
            path = write_image(out / "grids" / f"{s['name']}.png", image_grid(grid_rows, labels=labels))
            grids.append((s["name"], path.relative_to(out).as_posix(), [round(k, 3) for k in Ks]))
    keys = ["psnr", "ssim", "k_cal_err_measurable", "k_cal_err", "k_cal_err_2d", "defocus_corr",
            "defocus_mean_ratio", "defocus_mae_inv_m"] + (["lpips"] if lpips else [])
    return {"rows": rows, "summary": summarize(rows, keys), "summary_by_K": summarize_by_k(rows, keys, Ks),
            "grids": grids, "population_radius_px": population}


def run_pairs(gen: Any, samples: list[dict[str, Any]], guidance: GuidanceConfig, steps: int, lpips: Callable | None,
              out: Path) -> dict[str, Any]:
    rows, grids = [], []
    for idx, s in enumerate(samples):
        image, target, K = s["image"], s["target"], float(s["K_px_m"])
        learned = gen.generate_stack(image, [K], num_steps=steps, seed=idx).frames[0, 0]
        guided = gen.generate_stack(image, [K], num_steps=steps, seed=idx, guidance=guidance).frames[0, 0] \
            if guidance.enabled else None
        r_fit = fit_disk_radius(image, target, max_radius_px=max(2.0, image.shape[-1] / 32))
        outputs = {"learned": learned, "identity": image, "uniform_disk": uniform_disk(image, r_fit)}
        if guided is not None:
            outputs["learned_guided"] = guided
        row: dict[str, Any] = {"name": s["name"], "K_px_m": K, "K_input_px_m": s.get("K_input_px_m"),
                               "f_number": s["f_number"], "uniform_disk_radius_px": r_fit}
        for method, pred in outputs.items():
            m = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
            if lpips is not None:
                m["lpips"] = lpips(pred, target)
            row[method] = m
        rows.append(row)
        cells = [image, target, learned] + ([guided] if guided is not None else []) + [((learned - target).abs() * 4).clamp(0, 1)]
        labels = ["input", "real photo", "learned"] + (["learned+guidance"] if guided is not None else []) + ["|diff| x4"]
        path = write_image(out / "grids" / f"{s['name']}.png", image_grid([cells], labels=labels))
        grids.append((s["name"], path.relative_to(out).as_posix(), [round(K, 3)]))
    keys = ["psnr", "ssim"] + (["lpips"] if lpips else [])
    return {"rows": rows, "summary": summarize(rows, keys), "grids": grids}


def html_page(results: dict[str, Any]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Stage-1: physics vs learned bokeh</title>",
             "<style>body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
             "padding:3px 8px;text-align:right}img{image-rendering:pixelated;max-width:100%}</style></head><body>",
             "<h1>Stage-1: physics vs learned bokeh</h1>", f"<p>{results['notes']}</p>"]
    for section, data in results["sections"].items():
        parts.append(f"<h2>{section}</h2><table><tr><th>method</th>")
        keys = sorted({k for v in data["summary"].values() for k in v if not k.endswith("_n")})
        parts += [f"<th>{k}</th>" for k in keys] + ["</tr>"]
        for method, vals in data["summary"].items():
            parts.append(f"<tr><td>{method}</td>" + "".join(
                f"<td>{vals[k]:.4g}</td>" if k in vals else "<td>-</td>" for k in keys) + "</tr>")
        parts.append("</table>")
        for K, by_method in data.get("summary_by_K", {}).items():
            parts.append(f"<h3>K = {K} px*m</h3><table><tr><th>method</th>" + "".join(f"<th>{k}</th>" for k in keys)
                         + "</tr>")
            for method, vals in by_method.items():
                parts.append(f"<tr><td>{method}</td>" + "".join(
                    f"<td>{vals[k]:.4g}</td>" if k in vals else "<td>-</td>" for k in keys) + "</tr>")
            parts.append("</table>")
        if "population_radius_px" in data:
            radii = ", ".join(f"{r:.3g}" for r in data["population_radius_px"])
            parts.append(f"<p>uniform_disk_population radius (px) per K {results['K_px_m']}: {radii}</p>")
        for name, rel, Ks in data["grids"]:
            parts.append(f"<h3>{name} (K = {Ks} px*m)</h3><img src='{rel}' width='{min(1200, 220 * 5)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def parse_scene_options(text: str | None, meta: dict[str, Any]) -> dict[str, Any]:
    """--scene-options JSON (an object), else the generator's recorded ``scene_options``, else {}."""
    from physics.scenes import scene_options_from_json

    if text is None:
        return dict(meta.get("scene_options") or {})
    try:
        return scene_options_from_json(text, "--scene-options")
    except ValueError as error:
        raise SystemExit(str(error)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="run dir, generator.safetensors, or a Stage-1 .ckpt")
    p.add_argument("--out", required=True)
    p.add_argument("--num-scenes", type=int, default=16,
                   help="synthetic test scenes (0 = skip); 16 gives K-cal to about +-0.03, use 64 to compare "
                        "generators whose K-cal differs by less")
    p.add_argument("--size", type=int, default=None, help="synthetic scene size (default: the generator's width)")
    p.add_argument("--seed", type=int, default=0, help="data seed of the Stage-1 splits")
    p.add_argument("--scene-options", default=None,
                   help='JSON keyword arguments of physics.scenes.make_scene, e.g. \'{"appearance_cues": 1.0}\' '
                        "(default: generator.json's scene_options when it records them, else none)")
    p.add_argument("--K", type=float, nargs="+", default=None, help="strengths (px*m at --size); default: eval K")
    p.add_argument("--rgbd", default=None, help="JSONL manifest {image, depth, depth_scale?, focus_m?}")
    p.add_argument("--aperture-pairs", default=None, help="folder with vabd/ and/or ebb/ real aperture pairs")
    p.add_argument("--pair-width", type=int, default=384, help="width the real pairs are compared at")
    p.add_argument("--assumed-focus-m", type=float, default=2.0)
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps, >= 1 (default: the generator's)")
    add_guidance_arguments(p, flux=0.5, stack=0.5)
    p.add_argument("--fit2d-scenes", type=int, default=4)
    p.add_argument("--max-grids", type=int, default=8)
    p.add_argument("--uncalibrated", action="store_true",
                   help="ignore the generator's K calibration (generator.json k_calibration, tools/calibrate_k.py)")
    p.add_argument("--map-oracles", action="store_true",
                   help="layered generators: also render the true map, the true map at the head's resolution and the "
                        "learned map at the true scale (splits the K error into scale and shape)")
    p.add_argument("--flip-average", action="store_true",
                   help="compact generator: every sampling step also reads the mirrored image and averages the two "
                        "(twice the network's cost)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    args.guidance = guidance_from_args(p, args)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Compare; returns the results (also results.json). Bad input raises (FileNotFoundError, FileExistsError,
    ValueError, ImageReadError...) before the output folder is touched; :func:`cli` turns it into exit code 2."""
    args = parse_args(argv)
    from lightning_modules.stage1 import load_generator

    check_strengths(args.K)
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be a width in px >= 1, got {args.size}")
    if args.aperture_pairs and args.pair_width < 8:
        raise ValueError(f"--pair-width must be a width in px >= 8, got {args.pair_width}")
    if args.num_scenes < 0:
        raise ValueError(f"--num-scenes must be >= 0, got {args.num_scenes}")
    if args.num_scenes == 0 and not args.rgbd and not args.aperture_pairs:
        raise ValueError("nothing to compare: --num-scenes is 0 and neither --rgbd nor --aperture-pairs is given")
    gen, meta = load_generator(args.generator)
    if args.uncalibrated:
        gen.k_calibration = None
    gen.use_flip_average(args.flip_average)
    calibration = gen.k_calibration.to_dict() if gen.k_calibration is not None else None
    size = int(args.size or meta["resolution"])
    k_lo, k_hi = float(meta["k"]["min"]), float(meta["k"]["max"])
    scale = size / float(meta["resolution"])
    Ks = [float(k) for k in (args.K or meta.get("eval_K_px_m") or [k_lo, (k_lo + k_hi) / 2, k_hi])]
    if args.K is None:
        Ks = [k * scale for k in Ks]
    steps = int(args.steps or gen.default_steps)
    guidance = args.guidance
    scene_options = parse_scene_options(args.scene_options, meta)
    # the inputs are read and checked before the output folder is touched
    rgbd = rgbd_samples(Path(args.rgbd), size, meta.get("focus_m")) if args.rgbd else None
    pairs = None
    if args.aperture_pairs:
        if not Path(args.aperture_pairs).is_dir():
            raise FileNotFoundError(f"--aperture-pairs folder not found: {args.aperture_pairs}")
        pairs = aperture_pair_samples(Path(args.aperture_pairs), args.pair_width, args.assumed_focus_m)
        if not pairs:
            raise FileNotFoundError(f"no aperture pairs found under {args.aperture_pairs} (expected vabd/ or ebb/)")
    with output_dir(args.out, overwrite=args.overwrite) as out:
        return _compare(args, gen, meta, out, Ks, size, steps, guidance, scene_options, calibration, rgbd, pairs)


def _compare(args: argparse.Namespace, gen: Any, meta: dict[str, Any], out: Path, Ks: list[float], size: int,
             steps: int, guidance: GuidanceConfig, scene_options: dict[str, Any], calibration: dict[str, Any] | None,
             rgbd: list[dict[str, Any]] | None, pairs: list[dict[str, Any]] | None) -> dict[str, Any]:
    k_lo, k_hi = float(meta["k"]["min"]), float(meta["k"]["max"])
    scale = size / float(meta["resolution"])
    lpips, lpips_note = make_lpips()
    print(lpips_note)
    t0 = time.perf_counter()
    sections: dict[str, Any] = {}
    bounds = (k_lo * scale, k_hi * scale)
    if args.num_scenes > 0:
        samples = synthetic_samples(args.num_scenes, size, args.seed, meta.get("focus_m"), scene_options)
        sections["synthetic test split"] = run_synthetic(gen, samples, Ks, guidance, steps, bounds, args.fit2d_scenes,
                                                         lpips, out, "synthetic", args.max_grids, args.map_oracles)
    if rgbd is not None:
        sections["RGB-D manifest"] = run_synthetic(gen, rgbd, Ks, guidance, steps, bounds, args.fit2d_scenes, lpips,
                                                   out, "rgbd", args.max_grids, args.map_oracles)
    if pairs is not None:
        sections["real aperture pairs"] = run_pairs(gen, pairs, guidance, steps, lpips, out)
    focus = meta.get("focus_m")
    focus_text = f"{focus:g} m" if focus is not None else "each scene's nearest subject"
    notes = (f"generator {args.generator} (trained width {meta['resolution']} px, K range [{k_lo}, {k_hi}] px*m, "
             f"physics references at focus {focus_text}); "
             f"{steps} sampling steps{' (flip-averaged)' if gen.flip_average else ''}; guidance {guidance.to_dict()}; K calibration "
             f"{calibration or 'none'}; {lpips_note}. K-calibration error = |K_fit - K|/K, "
             "K_fit by a 1-D log-K grid fit (coarse, then fine, then a parabola) through physics.render with the true "
             "focus (2-D: focus x K); k_cal_err over every row, k_cal_err_measurable over the rows where the physics "
             "renders at K +- 15% differ by >= 1/255 RMS (else no image can tell K to 15%; count in _n). "
             "Baselines: uniform_disk = one disk blur at each scene's true mean |r| (an oracle: told the depth); "
             "uniform_disk_population = one disk blur at the mean |r| over all evaluated scenes, per K (depth-free). "
             f"Synthetic scene options: {scene_options or 'defaults'}.")
    results = {"notes": notes, "K_px_m": Ks, "size": size, "flip_average": gen.flip_average, "scene_options": scene_options, "k_calibration": calibration,
               "seconds": time.perf_counter() - t0, "sections": sections}
    write_json(out / "results.json", results)
    write_text(out / "index.html", html_page(results))
    for section, data in sections.items():
        print(f"== {section}")
        for method, vals in data["summary"].items():
            print(f"  {method:24s} " + "  ".join(f"{k}={v:.4g}" for k, v in vals.items() if not k.endswith("_n")))
        flags = [row["k_measurable"] for row in data["rows"] if "k_measurable" in row]
        if flags:
            print(f"  K measurable to 15% (physics renders at K +- 15% differ by >= 1/255 RMS) in {sum(flags)} of "
                  f"{len(flags)} rows: k_cal_err_measurable averages those, k_cal_err all rows")
        for K, by_method in data.get("summary_by_K", {}).items():
            print(f"  K={K}: " + "  ".join(
                f"{method} psnr={vals['psnr']:.4g} k_cal_err_measurable="
                + (f"{vals['k_cal_err_measurable']:.3g}" if "k_cal_err_measurable" in vals else "-")
                for method, vals in by_method.items()
                if method in ("learned", "uniform_disk") + MAP_ORACLES and "psnr" in vals))
        if "population_radius_px" in data:
            print("  uniform_disk_population radius (px) per K: "
                  + ", ".join(f"K={k:.3g}: {r:.3g}" for k, r in zip(Ks, data["population_radius_px"])))
    print(f"wrote {out / 'index.html'} and {out / 'results.json'}")
    return results


def cli(argv: list[str] | None = None) -> int:
    """main() as a command: 0 done; bad input is one line ``error: ...`` on stderr and exit code 2 (no traceback)."""
    return run_reporting_errors(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
