#!/usr/bin/env python
"""Physics renderer benchmark: speed, memory and accuracy of render_bokeh vs the exact scatter and BokehMe scatter.

    python tools/bench_physics.py [--sizes 256 1024] [--max-radius 30] [--runs 5] [--threads 2] [--quick]
                                  [--full-reference] [--blender-dir ../shared/data/blender_dof]
                                  [--out runs/bench_physics.json]

Scenes (synthetic, seeded): "plane" = a multi-scale colour texture on a slanted plane whose signed blur radius runs
linearly from -R to +R px (R = --max-radius) across the frame (occlusion-free: the exact scatter is the ground truth
there); "layered" = the same plane with three textured fronto-parallel occluders at r = -R, -R/3 and 0 px in front
of it (partial occlusion both ways). Every image is sRGB in, sRGB out (the renderers work in linear light).

Measurements, each in a fresh subprocess with torch.set_num_threads(--threads):
  * forward: median wall time over --runs runs (after one warm-up run), and the median process CPU time divided by
    the thread count (a load-independent proxy for the wall time on an idle machine: this machine is shared);
  * forward+backward: the same for render(...) then a backward of a weighted sum (gradients w.r.t. image and depth);
  * memory: peak resident set size growth (resource.getrusage ru_maxrss delta) during the first forward (or
    forward+backward) run, measured after the inputs were built and torch was imported;
  * PSNR (sRGB, peak 1) of render_bokeh against the exact scatter on the "plane" scene.
The exact scatter at 1 MP, R = 30 costs minutes; with --quick (default unless --full-reference) it is measured on the
bottom 1024 x 128 band of the 1 MP scene (which holds the largest radius, hence the same 2 829-offset gather) and its
time is scaled by the pixel ratio (x8): labelled "estimated_from_band" in the JSON. Its memory is then the band's.
With --blender-dir: PSNR against the Cycles depth-of-field renders (linear light, clipped to [0, 1]) of render_bokeh,
the exact scatter and the BokehMe scatter, next to the all-in-focus input.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _bootstrap import REPO_ROOT
from _cli import check_out_file


# ----------------------------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------------------------


def make_scene(kind: str, height: int, width: int, max_radius_px: float, seed: int = 0):
    """(image [1,3,H,W] sRGB, depth [1,1,H,W] m, K px*m, focus m) of the benchmark scene ``kind``."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    full = max(height, width)

    def texture(h, w):
        img = torch.zeros(1, 3, h, w)
        for scale in (2, 6, 24, 96):
            n = torch.rand(1, 3, max(2, h * 1024 // full // scale), max(2, w * 1024 // full // scale), generator=g)
            img += F.interpolate(n, size=(h, w), mode="bicubic", align_corners=False) / 4
        return img.clamp(0, 1)

    focus, K = 2.0, 4.0 * max_radius_px  # depths from 1.33 m to 4 m
    a = max_radius_px / K  # half range of 1/focus - 1/depth
    yy = torch.linspace(-1, 1, height).view(1, 1, height, 1)
    xx = torch.linspace(-1, 1, width).view(1, 1, 1, width)
    inv = 1 / focus - a * (0.75 * yy + 0.25 * xx)  # r = K (1/s1 - 1/d): -R top-left, +R bottom-right
    image = texture(height, width)
    depth = (1 / inv).expand(1, 1, height, width).clone()
    if kind == "layered":
        occluders = ((-max_radius_px, 0.3, 0.3, 0.22), (-max_radius_px / 3, 0.6, 0.65, 0.25), (0.0, 0.75, 0.25, 0.2))
        for r, cy, cx, size in occluders:
            y0, x0 = int(cy * height), int(cx * width)
            hh, ww = min(int(size * height), height - y0), min(int(size * width), width - x0)
            depth[..., y0:y0 + hh, x0:x0 + ww] = 1 / (1 / focus - r / K)
            image[..., y0:y0 + hh, x0:x0 + ww] = texture(hh, ww)
    elif kind != "plane":
        raise ValueError(f"scene kind must be 'plane' or 'layered'; got {kind!r}")
    return image, depth, K, focus


# ----------------------------------------------------------------------------------------------------------------
# worker: one measurement in a fresh process
# ----------------------------------------------------------------------------------------------------------------


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from physics.render import render_bokeh, render_exact_reference, render_scatter_bokehme

    fn = {"ours": render_bokeh, "exact": render_exact_reference, "bokehme": render_scatter_bokehme}[spec["renderer"]]
    kwargs = spec.get("kwargs", {})
    image, depth, K, focus = make_scene(spec["scene"], spec["height"], spec["width"], spec["max_radius"])
    if spec.get("band_rows"):
        image, depth = image[..., -spec["band_rows"]:, :].contiguous(), depth[..., -spec["band_rows"]:, :].contiguous()
    backward = spec["mode"] == "fwdbwd"
    weight = torch.rand(image.shape, generator=torch.Generator().manual_seed(1))

    def once():
        if backward:
            im = image.clone().requires_grad_(True)
            de = depth.clone().requires_grad_(True)
            out = fn(im, de, K, focus, **kwargs)
            (out * weight).sum().backward()
        else:
            with torch.no_grad():
                out = fn(image, depth, K, focus, **kwargs)
        return out

    rss0 = _maxrss_mb()
    w0, c0 = time.perf_counter(), time.process_time()
    out = once()
    first_wall, first_cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = _maxrss_mb() - rss0
    walls, cpus = [], []
    for _ in range(int(spec["runs"])):
        w0, c0 = time.perf_counter(), time.process_time()
        once()
        walls.append(time.perf_counter() - w0)
        cpus.append((time.process_time() - c0) / int(spec["threads"]))
    if not walls:  # a single (slow) run: report it
        walls, cpus = [first_wall], [first_cpu / int(spec["threads"])]
    result = {"wall_s": statistics.median(walls), "cpu_per_thread_s": statistics.median(cpus), "runs": len(walls),
              "peak_rss_growth_mb": peak}
    if spec.get("save_output"):
        torch.save(out.detach(), spec["save_output"])
    return result


def run_worker(spec: dict, timeout: float | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({spec}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------


def psnr(a, b, peak: float = 1.0) -> float:
    import torch

    return float(10 * torch.log10(peak**2 / ((a.double() - b.double()) ** 2).mean()))


def bench(args) -> dict:
    import tempfile

    import torch
    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    console = Console()
    results: dict = {"config": {"sizes": args.sizes, "max_radius_px": args.max_radius, "runs": args.runs,
                                "threads": args.threads, "quick": not args.full_reference,
                                "render_bokeh_kwargs": args.ours_kwargs, "torch": torch.__version__,
                                "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())},
                     "sizes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_physics_"))
    plan = []
    for n in args.sizes:
        big = n * n > 300_000
        band = 128 if (big and not args.full_reference) else None
        base = {"height": n, "width": n, "max_radius": args.max_radius, "threads": args.threads}
        plan += [
            (n, "ours_plane_fwd", dict(base, renderer="ours", scene="plane", mode="fwd", runs=args.runs,
                                       kwargs=args.ours_kwargs)),
            (n, "ours_layered_fwd", dict(base, renderer="ours", scene="layered", mode="fwd", runs=args.runs,
                                         kwargs=args.ours_kwargs)),
            (n, "ours_layered_fwdbwd", dict(base, renderer="ours", scene="layered", mode="fwdbwd",
                                            runs=max(1, args.runs // 2 + 1), kwargs=args.ours_kwargs)),
            (n, "ours_plane_psnr", dict(base, renderer="ours", scene="plane", mode="fwd", runs=0, band_rows=band,
                                        kwargs=args.ours_kwargs, save_output=str(tmp / f"ours_{n}.pt"))),
            (n, "exact_plane_fwd", dict(base, renderer="exact", scene="plane", mode="fwd", runs=0, band_rows=band,
                                        save_output=str(tmp / f"exact_{n}.pt"))),
            (n, "bokehme_plane_fwd", dict(base, renderer="bokehme", scene="plane", mode="fwd", runs=0,
                                          band_rows=band)),
        ]
        if not big or args.full_reference:
            plan += [(n, "exact_plane_fwdbwd", dict(base, renderer="exact", scene="plane", mode="fwdbwd", runs=0)),
                     (n, "bokehme_plane_fwdbwd", dict(base, renderer="bokehme", scene="plane", mode="fwdbwd", runs=0))]
        else:
            plan += [(n, "exact_plane_fwdbwd", dict(base, renderer="exact", scene="plane", mode="fwdbwd", runs=0,
                                                    band_rows=band)),
                     (n, "bokehme_plane_fwdbwd", dict(base, renderer="bokehme", scene="plane", mode="fwdbwd", runs=0,
                                                      band_rows=band))]
    for n, name, spec in tqdm(plan, desc="bench_physics", unit="measurement"):
        r = run_worker(spec)
        if spec.get("band_rows"):
            scale = spec["height"] / spec["band_rows"]
            r["band"] = f"{spec['width']}x{spec['band_rows']}"
            if name.startswith(("exact", "bokehme")):
                r["method"] = f"estimated_from_band: time measured on the bottom {r['band']} band x {scale:g}"
                r["wall_s"] *= scale
                r["cpu_per_thread_s"] *= scale
                r["peak_rss_growth_mb_band"] = r.pop("peak_rss_growth_mb")
        else:
            r["method"] = "measured"
        results["sizes"].setdefault(str(n), {})[name] = r
        tqdm.write(f"{n}px {name}: wall {r['wall_s']:.3f} s, cpu/thread {r['cpu_per_thread_s']:.3f} s "
                   f"({r.get('method', 'band')})")
    for n in args.sizes:
        d = results["sizes"][str(n)]
        ours, exact = torch.load(tmp / f"ours_{n}.pt"), torch.load(tmp / f"exact_{n}.pt")
        d["psnr_ours_vs_exact_plane_db"] = psnr(ours, exact)
        d["psnr_scene"] = d["ours_plane_psnr"].get("band", f"{n}x{n}")
        for key in ("wall_s", "cpu_per_thread_s"):
            o = d["ours_plane_fwd"][key]
            d[f"speedup_exact_over_ours_fwd_{key}"] = d["exact_plane_fwd"][key] / o
            d[f"speedup_bokehme_over_ours_fwd_{key}"] = d["bokehme_plane_fwd"][key] / o
            d[f"speedup_exact_over_ours_fwdbwd_{key}"] = d["exact_plane_fwdbwd"][key] / d["ours_layered_fwdbwd"][key]

    table = Table(title=f"Physics renderer, R = {args.max_radius:g} px, {args.threads} threads "
                        "(wall = median wall time; cpu = median CPU time / threads)")
    for col in ("size", "measurement", "wall s", "cpu s", "peak RSS MB", "method"):
        table.add_column(col)
    for n in args.sizes:
        for name, r in results["sizes"][str(n)].items():
            if isinstance(r, dict) and name != "ours_plane_psnr":
                mem = r.get("peak_rss_growth_mb", r.get("peak_rss_growth_mb_band"))
                table.add_row(f"{n}^2", name, f"{r['wall_s']:.3f}", f"{r['cpu_per_thread_s']:.3f}",
                              f"{mem:.0f}" + ("" if "peak_rss_growth_mb" in r else " (band)"), r.get("method", ""))
    console.print(table)
    for n in args.sizes:
        d = results["sizes"][str(n)]
        console.print(f"{n}^2: PSNR ours vs exact (plane, {d['psnr_scene']}) = "
                      f"{d['psnr_ours_vs_exact_plane_db']:.2f} dB;"
                      f" exact/ours forward = {d['speedup_exact_over_ours_fwd_wall_s']:.1f}x wall, "
                      f"{d['speedup_exact_over_ours_fwd_cpu_per_thread_s']:.1f}x cpu; bokehme/ours forward = "
                      f"{d['speedup_bokehme_over_ours_fwd_wall_s']:.1f}x wall, "
                      f"{d['speedup_bokehme_over_ours_fwd_cpu_per_thread_s']:.1f}x cpu; "
                      f"exact/ours fwd+bwd = {d['speedup_exact_over_ours_fwdbwd_wall_s']:.1f}x wall")
    if args.blender_dir:
        results["blender"] = blender_check(Path(args.blender_dir), args, console)
    return results


def blender_check(folder: Path, args, console) -> list:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(args.threads)
    from physics.aperture import PolygonAperture
    from physics.render import render_bokeh, render_exact_reference, render_scatter_bokehme

    meta_path = folder / "scenes.json"
    if not meta_path.is_file():
        raise SystemExit(f"--blender-dir {folder}: no scenes.json there")
    meta = json.loads(meta_path.read_text())
    rows = []
    for s in tqdm(meta["scenes"], desc="blender scenes"):
        load = lambda key: torch.from_numpy(np.load(folder / s["files"][key])).float()  # noqa: E731
        aif = load("aif_linear").permute(2, 0, 1)[None]
        dof = load("dof_linear").permute(2, 0, 1)[None]
        depth = load("depth_m")[None, None]
        ap = PolygonAperture(int(s["blades"]), float(s["rotation"])) if s["blades"] else "disk"
        K, focus = float(s["K"]), float(s["focus_m"])
        clip = lambda x: x.clamp(0, 1)  # noqa: E731
        t0 = time.perf_counter()
        ours = render_bokeh(aif, depth, K, focus, aperture=ap, color_space="linear", **args.ours_kwargs)
        t_ours = time.perf_counter() - t0
        exact = render_exact_reference(aif, depth, K, focus, aperture=ap, color_space="linear")
        bm = render_scatter_bokehme(aif, depth, K, focus, color_space="linear")
        row = {"scene": s["name"], "K": K, "focus_m": focus, "blades": s["blades"],
               "psnr_db": {name: psnr(clip(x), clip(dof)) for name, x in
                           (("render_bokeh", ours), ("exact_scatter", exact), ("bokehme_scatter", bm),
                            ("all_in_focus", aif))},
               "render_bokeh_wall_s": t_ours}
        rows.append(row)
        console.print(f"blender {s['name']}: " + ", ".join(f"{k} {v:.2f} dB" for k, v in row["psnr_db"].items()))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="square image sides (px)")
    p.add_argument("--max-radius", type=float, default=30.0, help="largest |blur radius| in the scenes (px)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of render_bokeh (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="estimate the 1 MP scatter baselines from a band (default)")
    p.add_argument("--full-reference", action="store_true", help="measure the scatter baselines at full size (slow)")
    p.add_argument("--ours", default="{}", help="JSON of extra render_bokeh keyword arguments")
    p.add_argument("--blender-dir", default=None, help="folder with the Blender Cycles scenes (scenes.json)")
    p.add_argument("--out", default="runs/bench_physics.json", help="JSON with every figure (written atomically)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick and args.full_reference:
        p.error("--quick and --full-reference exclude each other")
    if not args.max_radius > 0 or args.max_radius == float("inf") or any(n < 32 for n in args.sizes):
        p.error(f"--max-radius must be finite and > 0 and --sizes >= 32; got --max-radius {args.max_radius:g}, "
                f"--sizes {' '.join(map(str, args.sizes))}")
    if args.runs < 1 or args.threads < 1:
        p.error(f"--runs and --threads must be >= 1; got --runs {args.runs}, --threads {args.threads}")
    try:
        args.ours_kwargs = json.loads(args.ours)
    except json.JSONDecodeError as e:
        p.error(f"--ours must be a JSON object: {e}")
    if not isinstance(args.ours_kwargs, dict):
        p.error(f"--ours must be a JSON object of render_bokeh keyword arguments; got {args.ours!r}")
    if args.blender_dir and not (Path(args.blender_dir) / "scenes.json").is_file():
        p.error(f"--blender-dir {args.blender_dir}: no scenes.json there")
    check_out_file(p, args.out)  # before the benchmark, not after it

    from bokehdepth_guard import require_bokehdepth

    require_bokehdepth()
    from bokeh.io import write_json

    results = bench(args)
    results["command"] = "python tools/bench_physics.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
