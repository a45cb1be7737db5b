#!/usr/bin/env python
"""Small-radius accuracy of the physics renderer: defocus of 0.25-3 px against a supersampled reference.

    python tools/bench_subpixel.py --out runs/bench_subpixel          # ~5-20 s on 2 cores (it prints its time)

Why: a pixel image of a defocused scene is the continuous scene blurred by the disk, then integrated over each
pixel. The renderer draws each spot as a soft-rimmed kernel (physics.aperture) whose second moment is the disk's
r^2/4 (until session 6 it drew the disk from a point at the pixel centre: no blur at all under half a pixel, and
spots of 0.75-1.25 px too wide). This bench measures how close that comes at the radii where it matters.

Reference: a continuous-looking scene drawn at --supersample x the output size (1/f colour noise plus hard-edged
discs, seeded), blurred there by the disk of radius r x supersample (physics.dfd.blur_bank: the renderer's
soft-rimmed disk, FFT convolution), then box-averaged to the output size: the pixel-integrated defocused image.
Candidates, all from the box-averaged sharp image: ``renderer`` = physics.render.render_radius_map with a uniform
radius r (the layered renderer itself, linear light); ``bandlimited`` = the sharp image's spectrum times the continuous disk's MTF 2 J1(2 pi r f) / (2 pi r f)
(the discrete filter for band-limited content; hand-written: no library offers it); ``identity`` = no blur (the
baseline every ratio is measured against, in the same run). Scores on the interior (a border of 4 px dropped):
PSNR (linear, peak 1) and RMSE ratio to identity (< 1: closer to the truth than not blurring at all).
Outputs in --out (atomic): bench_subpixel.json and bench_subpixel.png (PSNR against radius).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import _bootstrap  # noqa: F401
from _cli import check_out_folder, run_reporting_errors  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bokeh.io import output_dir  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--size", type=int, default=64, help="output size (px, square)")
    p.add_argument("--supersample", type=int, default=16, help="reference resolution factor (the disk there has "
                   "radius r x this; >= 8 keeps its soft rim negligible)")
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0])
    p.add_argument("--scenes", type=int, default=4, help="seeded scenes averaged per radius")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.size < 16 or args.supersample < 2 or args.scenes < 1:
        p.error("need --size >= 16, --supersample >= 2, --scenes >= 1")
    if any(not (0 < r <= args.size / 8) for r in args.radii):
        p.error(f"radii must lie in (0, size / 8 = {args.size / 8}] px; got {args.radii}")
    check_out_folder(p, args.out, args.overwrite)  # before any scene is drawn
    return args


def supersampled_scene(size: int, factor: int, seed: int) -> torch.Tensor:
    """[3, size*factor, size*factor] linear values in [0, 1]: 1/f colour noise with hard-edged discs over it."""
    g = torch.Generator().manual_seed(seed)
    n = size * factor
    fy = torch.fft.fftfreq(n).view(-1, 1)
    fx = torch.fft.fftfreq(n).view(1, -1)
    amplitude = 1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / n)  # 1/f: natural-image-like spectrum
    phase = torch.rand(3, n, n, generator=g) * 2 * math.pi
    noise = torch.fft.ifft2(amplitude * torch.exp(1j * phase)).real
    noise = (noise - noise.mean()) / noise.std()
    image = (0.5 + 0.15 * noise).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    for _ in range(6):  # hard edges: what a camera's sharp image is made of besides texture
        cx, cy = (torch.rand(2, generator=g) * n).tolist()
        radius = float(torch.empty(1).uniform_(0.08, 0.25, generator=g)) * n
        colour = torch.rand(3, 1, 1, generator=g) * 0.9 + 0.05
        inside = ((xx - cx) ** 2 + (yy - cy) ** 2) <= radius**2
        image = torch.where(inside[None], colour.expand(3, n, n), image)
    return image


def bandlimited_disk(image: torch.Tensor, radius_px: float) -> torch.Tensor:
    """[C,H,W] times the continuous disk's MTF 2 J1(2 pi r f) / (2 pi r f) on the DFT grid (circular)."""
    h, w = image.shape[-2:]
    f = torch.sqrt(torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1) ** 2
                   + torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1) ** 2)
    x = 2 * math.pi * radius_px * f
    mtf = torch.where(x > 1e-9, 2 * torch.special.bessel_j1(x) / x.clamp_min(1e-9), torch.ones_like(x))
    return torch.fft.ifft2(torch.fft.fft2(image.double()) * mtf).real


def run(args: argparse.Namespace, out: Any) -> dict[str, Any]:
    """The bench, writing into ``out`` (main's bokeh.io.output_dir: a failure leaves no half-written folder)."""
    from tqdm import tqdm

    from bokeh.io import write_json
    from bokeh.metrics import psnr
    from physics.dfd import blur_bank
    from physics.render import render_radius_map

    start, s, border = time.time(), args.supersample, 4
    interior = (slice(None), slice(border, -border), slice(border, -border))
    scenes = [supersampled_scene(args.size, s, seed) for seed in range(args.scenes)]
    sharp = [F.avg_pool2d(hi[None].double(), s)[0] for hi in scenes]
    rows = []
    for r in tqdm(args.radii, desc="radius", unit="r"):
        scores: dict[str, list[float]] = {"renderer": [], "bandlimited": [], "identity": []}
        ratios: dict[str, list[float]] = {"renderer": [], "bandlimited": []}
        for hi, lo in zip(scenes, sharp):
            reference = F.avg_pool2d(blur_bank(hi[None].double(), [r * s])[0], s)[0]
            radius_map = torch.full((1, 1) + lo.shape[-2:], float(r), dtype=torch.float64)
            candidates = {"renderer": render_radius_map(lo[None], radius_map, color_space="linear")[0],
                          "bandlimited": bandlimited_disk(lo, r), "identity": lo}
            errors = {}
            for name, image in candidates.items():
                scores[name].append(float(psnr(image[interior][None], reference[interior][None])))
                errors[name] = float((image[interior] - reference[interior]).pow(2).mean().sqrt())
            for name in ratios:
                ratios[name].append(errors[name] / max(errors["identity"], 1e-20))
        row = {"radius_px": r}
        row.update({f"psnr_{k}": sum(v) / len(v) for k, v in scores.items()})
        row.update({f"rmse_ratio_{k}_vs_identity": sum(v) / len(v) for k, v in ratios.items()})
        rows.append(row)
    result = {"size": args.size, "supersample": s, "scenes": args.scenes, "border_px": border,
              "seconds": time.time() - start, "rows": rows,
              "notes": "reference = disk blur at supersampled resolution, box-averaged; PSNR linear, peak 1"}
    write_json(out / "bench_subpixel.json", result)
    _plot(rows, out / "bench_subpixel.png")
    print(f"{'r px':>6} {'renderer dB':>12} {'bandlimited dB':>15} {'identity dB':>12} "
          f"{'renderer/identity':>18} {'bandlimited/identity':>21}")
    for row in rows:
        print(f"{row['radius_px']:6.2f} {row['psnr_renderer']:12.2f} {row['psnr_bandlimited']:15.2f} "
              f"{row['psnr_identity']:12.2f} {row['rmse_ratio_renderer_vs_identity']:18.3f} "
              f"{row['rmse_ratio_bandlimited_vs_identity']:21.3f}")
    print(f"wrote {out / 'bench_subpixel.json'} and {out / 'bench_subpixel.png'} ({result['seconds']:.0f} s)")
    return result


def _plot(rows: list[dict[str, Any]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bokeh.io import atomic_path

    radii = [row["radius_px"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for name, style in (("renderer", "o-"), ("bandlimited", "s--"), ("identity", "x:")):
        ax.plot(radii, [row[f"psnr_{name}"] for row in rows], style, label=name)
    ax.set_xlabel("defocus radius r (px)")
    ax.set_ylabel("PSNR vs supersampled (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with output_dir(args.out, overwrite=args.overwrite) as out:
        return run(args, out)


if __name__ == "__main__":
    raise SystemExit(run_reporting_errors(main, None))
