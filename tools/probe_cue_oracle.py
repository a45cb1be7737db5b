#!/usr/bin/env python
"""How much metric depth scale do the synthetic scenes' appearance cues reveal? (a reference for K-calibration)

    python tools/probe_cue_oracle.py --config configs/stage1.yaml --out runs/cue_oracle_a1
    python tools/probe_cue_oracle.py --config configs/stage1.yaml --out runs/cue_oracle_a3 \\
        "data.synthetic.scene_options={appearance_cues: 3.0}"     # key=value overrides, as tools/fit.py

A depth-free bokeh generator must infer from the sharp image alone how strongly each scene defocuses: a generator
whose defocus map is right in shape but off by a factor s in scale is read by the physics fit as K_fit = s K, so its
K-calibration error is |s - 1|. This tool asks how small |s - 1| can get on the config's synthetic scenes
(``data.synthetic``: size, scene options, focus) for an estimator TOLD what a network must find from pixels: each
surface's exact footprint and which surface is the wall, the floor and the subject (from the scene's labels), its
texture kind and its texture period as seen (from the scene's records, after the perspective scale); it sees colour
only as statistics of each surface's pixels in linear light (where haze acts) and of the highlights, so it is a
reference, not a bound (a network sees every pixel). A small MLP regresses the log of the scene's mean defocus
|1/focus - 1/depth| (1/m) from these features (L1 in log: the median), trained on increasing numbers of scenes of the
Stage-1 train split, tested on the test split (whose first scenes are the Stage-1 test scenes).

Printed and written (``cue_oracle.json``, ``cue_oracle.png`` in --out, atomic): per training size the held-out mean
|log s| and mean |s - 1| (the K-calibration error a generator with a perfect map shape at this scale would have),
next to the prior alone (one scale for every scene: the training median) measured in the same run.

Then the K-calibration error itself, measured as tools/compare_bokeh.py measures it (physics.k_fit.fit_k with the
true depth and focus, mean over the rows whose K is measurable), on the first --kcal-scenes test scenes at the
config's eval K, for frames rendered by physics from these maps: ``oracle_scale`` (the true map times the oracle's
s: right shape, told scale), ``oracle_surfaces`` (a second MLP on the same features predicts each surface's log mean
inverse depth; the map is constant per surface: what these cues give for scale and shape together) and
```true_surfaces`` (each surface's TRUE mean inverse depth: the floor of a per-surface map, slanted planes flattened),
and ``oracle_surfaces_calibrated`` (the per-surface oracle rendered at K * gain(K), the gains fitted on as many
validation-split scenes as the Stage-1 K calibration fits a generator's).

The features are hand-made for these procedural scenes, so this is a diagnostic of the scene distribution, not a
model to keep: how far a strong reference gets from the appearance of such scenes, for the training data it saw.

Plain PyTorch (no Lightning); scenes are drawn in worker processes (--workers) with a progress bar.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import _bootstrap  # noqa: F401
from _cli import check_out_folder, config_errors_exit

import torch  # noqa: E402

from bokeh.io import output_dir  # noqa: E402

SURFACE_SLOTS = 10  # labels 0..9: wall, floor, subject and up to 7 objects (physics.scenes num_objects <= 7)
SLOT_FEATURES = 24
HIGHLIGHT_FEATURES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/stage1.yaml", help="a Stage-1 config (its data section is used)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, as tools/fit.py")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--num-train", type=int, default=40_000, help="training scenes at the largest size (default 40000)")
    p.add_argument("--sizes", type=int, default=4,
                   help="training sizes: num_train / 2^i for i < sizes (default 4: 5k, 10k, 20k, 40k)")
    p.add_argument("--num-test", type=int, default=2_000, help="held-out scenes (the Stage-1 test split's seeds)")
    p.add_argument("--steps", type=int, default=6_000, help="optimiser steps per training size (batch 256)")
    p.add_argument("--kcal-scenes", type=int, default=32,
                   help="test scenes whose oracle maps are rendered and K-fitted, and as many validation scenes for "
                        "the calibration (0 = skip; ~5 s a scene on 2 cores)")
    p.add_argument("--workers", type=int, default=2, help="processes drawing scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    for name in ("num_train", "sizes", "num_test", "steps", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.kcal_scenes <= args.num_test:
        p.error(f"--kcal-scenes must be in [0, --num-test = {args.num_test}], got {args.kcal_scenes}")
    if args.num_train >> (args.sizes - 1) < 16:
        p.error(f"--num-train {args.num_train} with --sizes {args.sizes} leaves fewer than 16 scenes at the smallest "
                f"size; lower --sizes or raise --num-train")
    check_out_folder(p, args.out, args.overwrite)  # before any config, scene or training work
    return args


def scene_features(scene: Any) -> list[float]:
    """What the oracle is told about one physics.scenes.Scene: SURFACE_SLOTS x SLOT_FEATURES + HIGHLIGHT_FEATURES.

    Per surface label (absent: zeros): present, log area fraction, linear-RGB mean, std, 5th and 95th percentiles
    (over its non-highlight pixels), texture kind (one-hot), log period as seen (px; 0 when textureless), centroid
    (y, x) and vertical extent (min, max y) in [-1, 1]. Highlights: present, linear-RGB mean, min, max.
    """
    import kornia

    from physics.scenes import TEXTURES

    linear = kornia.color.rgb_to_linear_rgb(scene.image)  # haze mixes in linear light
    labels, highlight = scene.labels[0], scene.hdr_gain[0] > 1
    h, w = labels.shape
    ys = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    surfaces = {s["label"]: s for s in scene.info["surfaces"]}
    quantiles = torch.tensor([0.05, 0.95])
    out: list[float] = []
    for label in range(SURFACE_SLOTS):
        mask = (labels == label) & ~highlight
        count = int(mask.sum())
        if count == 0 or label not in surfaces:
            out += [0.0] * SLOT_FEATURES
            continue
        pixels = linear[:, mask]  # [3,n]
        q = torch.quantile(pixels, quantiles, dim=1)  # [2,3]
        surface = surfaces[label]
        period = surface.get("period_px")
        out += ([1.0, math.log(count / (h * w))] + pixels.mean(1).tolist() + pixels.std(1, correction=0).tolist()
                + q.flatten().tolist() + [float(surface["texture"] == kind) for kind in TEXTURES]
                + [math.log(period) if period else 0.0, float(ys[mask].mean()), float(xs[mask].mean()),
                   float(ys[mask].min()), float(ys[mask].max())])
    if bool(highlight.any()):
        pixels = linear[:, highlight]
        out += [1.0] + pixels.mean(1).tolist() + pixels.amin(1).tolist() + pixels.amax(1).tolist()
    else:
        out += [0.0] * HIGHLIGHT_FEATURES
    return out


def log_mean_defocus(scene: Any, focus_m: float | None) -> float:
    """log of the scene's mean |1/focus - 1/depth| (1/m) at ``focus_m`` (None: the scene's own focus)."""
    focus = float(scene.focus_m if focus_m is None else focus_m)
    return math.log(float((1.0 / focus - 1.0 / scene.depth_m.double()).abs().mean()))


def surface_log_inv_depth(scene: Any) -> list[float]:
    """Per surface label (SURFACE_SLOTS): log of the mean inverse depth (1/m) over its visible pixels; NaN if unseen."""
    labels, inv = scene.labels[0], 1.0 / scene.depth_m[0].double()
    out = []
    for label in range(SURFACE_SLOTS):
        mask = labels == label
        out.append(math.log(float(inv[mask].mean())) if bool(mask.any()) else math.nan)
    return out


def _draw(job: tuple[int, list[int], int, int, dict[str, Any], float | None]) -> tuple[list, list, list]:
    """Worker: features, log mean defocus and per-surface log inverse depth of the scenes with the given seeds."""
    from physics.scenes import make_scene

    torch.set_num_threads(1)
    base, indices, height, width, options, focus = job
    feats, targets, surfaces = [], [], []
    for i in indices:
        scene = make_scene(base + i, height, width, **options)
        feats.append(scene_features(scene))
        targets.append(log_mean_defocus(scene, focus))
        surfaces.append(surface_log_inv_depth(scene))
    return feats, targets, surfaces


def draw_split(base: int, count: int, height: int, width: int, options: dict[str, Any], focus: float | None,
               workers: int, desc: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features [count, F], log mean defocus [count] and per-surface log inverse depth [count, SURFACE_SLOTS] (NaN:
    unseen) of scenes base + 0..count-1, in ``workers`` processes."""
    import contextlib
    import multiprocessing

    from tqdm import tqdm

    chunk = 250
    jobs = [(base, list(range(s, min(s + chunk, count))), height, width, options, focus)
            for s in range(0, count, chunk)]
    feats: list[list[float]] = []
    targets: list[float] = []
    surfaces: list[list[float]] = []
    with tqdm(total=count, desc=desc, unit="scene") as bar, contextlib.ExitStack() as stack:
        if workers == 1:
            results = map(_draw, jobs)
        else:  # spawn: no fork of a process whose torch threads are running; the pool ends with the block
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            results = pool.imap(_draw, jobs)  # in order: scene i stays row i
        for f, t, u in results:
            feats += f
            targets += t
            surfaces += u
            bar.update(len(t))
    return (torch.tensor(feats, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32),
            torch.tensor(surfaces, dtype=torch.float32))


def fit_oracle(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> torch.nn.Module:
    """MLP (2 x 256, GELU, dropout 0.3) on standardised features, L1 on the log targets, AdamW + one-cycle LR.

    x [N,F]; y [N] or [N,D] with NaN where a target does not exist (left out of the loss). Returns a module mapping
    features [M,F] to predictions [M] or [M,D].
    """
    torch.manual_seed(seed)
    squeeze = y.dim() == 1
    y = y[:, None] if squeeze else y
    known = ~torch.isnan(y)
    y = torch.nan_to_num(y)
    mean, std = x.mean(0), x.std(0)
    # a feature constant over the training scenes (a slot no training scene fills) keeps its raw units: scaled by
    # 1/1e-6 a test scene that fills it would throw the prediction out by orders of magnitude
    std = torch.where(std > 1e-3, std, torch.ones_like(std))
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    xn = (x - mean) / std
    batch = min(256, len(x))
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        err = (net(xn[idx]) - y[idx]).abs() * known[idx]
        loss = err.sum() / known[idx].sum().clamp_min(1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()

    class Standardised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            out = self.net((features - mean) / std)
            return out[:, 0] if squeeze else out

    return Standardised().eval()


def scale_errors(pred_log: torch.Tensor, true_log: torch.Tensor) -> dict[str, float]:
    """Mean and median |log s| and mean |s - 1|, s = predicted / true mean defocus."""
    err = (pred_log - true_log).double()
    return {"mean_abs_log_s": float(err.abs().mean()), "median_abs_log_s": float(err.abs().median()),
            "mean_abs_s_minus_1": float((err.exp() - 1).abs().mean())}


def k_cal_errors(image: torch.Tensor, depth_m: torch.Tensor, focus_m: float, Ks: list[float],
                 k_bounds: tuple[float, float], radius_maps: dict[str, torch.Tensor],
                 render_gains: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """One row per K: |K_fit - K| / K of each map's physics render (``<name>``) and K_fit (``<name>_K_fit_px_m``), as
    tools/compare_bokeh.py measures it.

    image [3,H,W] sRGB; depth_m [1,H,W]; radius_maps {name: signed CoC radius per 1 px*m of K, [1,H,W] (px / (px*m)),
    i.e. 1/focus - 1/depth for the true map}: the frame at K is physics.render.render_radius_map at K times it (times
    ``render_gains[name][j]`` at the j-th K for a map named there: a K calibration, K_run = K * gain).
    K_fit comes from physics.k_fit.fit_k with the TRUE depth and focus; ``k_measurable`` flags the rows where the
    physics renders at K +- 15% differ by at least one 8-bit code (physics.k_fit.K_MEASURABLE_RMS).
    """
    from physics.k_fit import fit_k, fit_range, k_measurability
    from physics.render import render_radius_map

    gains = render_gains or {}
    sharp = image[None].expand(len(Ks), -1, -1, -1)
    frames = {}
    for name, m in radius_maps.items():
        K_run = torch.tensor([k * g for k, g in zip(Ks, gains.get(name, [1.0] * len(Ks)))], dtype=image.dtype)
        with torch.no_grad():
            frames[name] = render_radius_map(sharp, K_run.view(-1, 1, 1, 1) * m[None].to(image.dtype)).clamp(0, 1)
    rows = []
    for j, k in enumerate(Ks):
        row: dict[str, Any] = {"K_px_m": k,
                               "k_measurable": k_measurability(image, depth_m, focus_m, k)[1]}
        for name, f in frames.items():
            k_fit = fit_k(image, depth_m, focus_m, f[j], *fit_range(*k_bounds))
            row[name], row[f"{name}_K_fit_px_m"] = abs(k_fit - k) / k, k_fit
        rows.append(row)
    return rows


def plot(result: dict[str, Any], path: Any) -> None:
    """Held-out mean |s - 1| against training scenes (log axis), with the prior alone; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bokeh.io import atomic_path

    sizes = [row["num_train"] for row in result["sizes"]]
    errs = [row["mean_abs_s_minus_1"] for row in result["sizes"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(sizes, errs, "o-", label="cue oracle")
    ax.axhline(result["prior_only"]["mean_abs_s_minus_1"], color="0.5", ls="--", label="prior alone")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training scenes")
    ax.set_ylabel("held-out mean |s - 1|")
    ax.set_title(f"scale of the defocus map from appearance ({result['num_test']} test scenes)", fontsize=9)
    ax.legend(fontsize=8)
    k_cal = result.get("k_cal")
    if k_cal:  # the K-fit figures of the largest size's maps, under the legend
        m = k_cal["mean_measurable"]
        ax.text(0.98, 0.55, f"K-cal of physics frames from its maps\n({k_cal['num_scenes']} test scenes, "
                f"{k_cal['measurable_rows']} measurable rows):\nper-surface {m['oracle_surfaces']:.3f}, calibrated "
                f"{m['oracle_surfaces_calibrated']:.3f}\ntrue per-surface depths {m['true_surfaces']:.3f}",
                transform=ax.transAxes, ha="right", va="top", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


MAP_NAMES = ("oracle_scale", "oracle_surfaces", "oracle_surfaces_calibrated", "true_surfaces")


def k_cal_section(args: argparse.Namespace, scale_net: torch.nn.Module, x_train: torch.Tensor, s_train: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor, s_test: torch.Tensor, test: Any, val: Any, h: int,
                  w: int, options: dict[str, Any], Ks: list[float], k_bounds: tuple[float, float]
                  ) -> dict[str, Any] | None:
    """K-calibration of the oracle maps (module docstring) on the first ``args.kcal_scenes`` test scenes.

    ``oracle_surfaces_calibrated``: the per-surface oracle's frames rendered at K_run = K * gain(K), gain(K) = 1 /
    median K_fit / K of its frames over as many VALIDATION-split scenes (measurable rows; one fixed-point step), as the
    Stage-1 K calibration does for a generator: what calibration can add to these cues.
    """
    from tqdm import tqdm

    from physics.scenes import make_scene

    if args.kcal_scenes == 0:
        return None
    n = args.kcal_scenes
    surface_net = fit_oracle(x_train, s_train, args.steps, args.seed)

    def surface_map(scene: Any, focus: float, pred_log_inv: torch.Tensor) -> torch.Tensor:
        return 1.0 / focus - pred_log_inv.exp()[scene.labels[0]][None]

    def scenes(split: Any, desc: str):
        for i in tqdm(range(n), desc=desc, unit="scene"):
            scene = make_scene(split.base + i, h, w, **options)
            yield i, scene, float(scene.focus_m if split.focus_m is None else split.focus_m)

    x_val, _, _ = _draw((val.base, list(range(n)), h, w, options, val.focus_m))
    with torch.no_grad():
        val_pred = surface_net(torch.tensor(x_val, dtype=torch.float32))
    ratios: dict[float, list[float]] = {k: [] for k in Ks}
    for i, scene, focus in scenes(val, "K-fit (validation)"):
        for row in k_cal_errors(scene.image, scene.depth_m, focus, Ks, k_bounds,
                                {"oracle_surfaces": surface_map(scene, focus, val_pred[i])}):
            if row["k_measurable"]:
                ratios[row["K_px_m"]].append(row["oracle_surfaces_K_fit_px_m"] / row["K_px_m"])
    gains = [1.0 / float(torch.tensor(ratios[k]).median()) if ratios[k] else 1.0 for k in Ks]

    with torch.no_grad():
        log_s = scale_net(x_test[:n]) - y_test[:n]  # the oracle's scale error per scene
        surface_pred = surface_net(x_test[:n])  # [n, SURFACE_SLOTS] log inverse depth
    known = ~torch.isnan(s_test[:n])
    surface_err = (surface_pred - s_test[:n]).abs()[known]
    rows = []
    for i, scene, focus in scenes(test, "K-fit (test)"):
        true = 1.0 / focus - 1.0 / scene.depth_m  # signed radius per unit K (1/m)
        oracle = surface_map(scene, focus, surface_pred[i])
        maps = {"oracle_scale": true * float(log_s[i].exp()), "oracle_surfaces": oracle,
                "oracle_surfaces_calibrated": oracle,
                "true_surfaces": surface_map(scene, focus, s_test[i].nan_to_num())}
        for row in k_cal_errors(scene.image, scene.depth_m, focus, Ks, k_bounds, maps,
                                render_gains={"oracle_surfaces_calibrated": gains}):
            rows.append(dict(row, scene=i))

    def mean(rs: list[dict[str, Any]]) -> dict[str, float | None]:
        return {m: (sum(r[m] for r in rs) / len(rs) if rs else None) for m in MAP_NAMES}

    measurable = [r for r in rows if r["k_measurable"]]
    return {"K_px_m": Ks, "num_scenes": n, "measurable_rows": len(measurable), "rows": rows,
            "calibration_gains": gains, "calibration_measurable_rows": [len(ratios[k]) for k in Ks],
            "mean_measurable": mean(measurable), "mean_all": mean(rows),
            "by_K": {f"{k:.4g}": mean([r for r in measurable if r["K_px_m"] == k]) for k in Ks},
            "surface_mean_abs_log_inv_depth_err": float(surface_err.mean())}


def run(args: argparse.Namespace, out: Any) -> dict[str, Any]:
    """The oracle, writing into ``out`` (main's bokeh.io.output_dir: a failure leaves no half-written folder)."""
    from bokeh.io import write_json
    from lightning_modules.config import load_config
    from lightning_modules.stage1_data import config_synthetic_splits

    cfg = load_config([args.config], args.overrides)
    Ks = [float(k) for k in cfg.get("eval", {}).get("K_px_m", [cfg.k.min, cfg.k.max])]
    k_bounds = (float(cfg.k.min), float(cfg.k.max))
    # a bad scene option or focus fails here, before anything is written; the scenes are drawn by seed below
    splits = config_synthetic_splits(cfg, {"train": 1, "val": 1, "test": 1}, "the cue oracle")
    train, val, test = splits["train"], splits["val"], splits["test"]
    h, w, options, focus = test.height, test.width, test.options, cfg.data.synthetic.get("focus_m")
    start = time.time()
    x_train, y_train, s_train = draw_split(train.base, args.num_train, h, w, options, train.focus_m, args.workers,
                                           "train")
    x_test, y_test, s_test = draw_split(test.base, args.num_test, h, w, options, test.focus_m, args.workers, "test")
    prior = scale_errors(torch.full_like(y_test, float(y_train.median())), y_test)
    rows = []
    for i in reversed(range(args.sizes)):
        n = args.num_train >> i
        net = fit_oracle(x_train[:n], y_train[:n], args.steps, args.seed)
        with torch.no_grad():
            row = {"num_train": n, **scale_errors(net(x_test), y_test)}
        rows.append(row)
        print(f"  {n:6d} training scenes: held-out mean |log s| {row['mean_abs_log_s']:.3f} (median "
              f"{row['median_abs_log_s']:.3f}), mean |s - 1| {row['mean_abs_s_minus_1']:.3f}")
    k_cal = k_cal_section(args, net, x_train, s_train, x_test, y_test, s_test, test, val, h, w, options, Ks,
                          k_bounds)
    # the held-out error's change per doubling of the training scenes, over the last two sizes
    per_doubling = rows[-1]["mean_abs_s_minus_1"] - rows[-2]["mean_abs_s_minus_1"] if len(rows) > 1 else None
    result = {"config": args.config, "overrides": list(args.overrides), "size_px": [h, w], "scene_options": options,
              "focus_m": focus, "num_test": args.num_test, "steps": args.steps, "seed": args.seed,
              "features": SURFACE_SLOTS * SLOT_FEATURES + HIGHLIGHT_FEATURES, "seconds": time.time() - start,
              "prior_only": prior, "sizes": rows, "change_per_doubling": per_doubling, "k_cal": k_cal,
              "notes": "s = predicted / true mean defocus |1/focus - 1/depth| of a test scene; |s - 1| is the "
                       "K-calibration error of a generator whose defocus map has the right shape at that scale. "
                       "The oracle is told each surface's footprint, role and texture period (from the scene's "
                       "records) and sees its pixels' colours as statistics: a reference, not a bound."}
    write_json(out / "cue_oracle.json", result)
    plot(result, out / "cue_oracle.png")
    best = rows[-1]
    print(f"cue oracle ({options or 'no scene options'}, focus {focus}): held-out mean |s - 1| "
          f"{best['mean_abs_s_minus_1']:.3f} from {best['num_train']} scenes (prior alone "
          f"{prior['mean_abs_s_minus_1']:.3f}; ratio {best['mean_abs_s_minus_1'] / prior['mean_abs_s_minus_1']:.2f}"
          + (f"; {per_doubling:+.3f} per doubling of the scenes" if per_doubling is not None else "")
          + ")")
    if k_cal:
        m = k_cal["mean_measurable"]
        print(f"K-calibration error of physics frames from maps (K {Ks}, {args.kcal_scenes} test scenes, "
              f"{k_cal['measurable_rows']} measurable rows): oracle_scale {m['oracle_scale']:.3f}, oracle_surfaces "
              f"{m['oracle_surfaces']:.3f} ({m['oracle_surfaces_calibrated']:.3f} calibrated on validation scenes, "
              f"gains {', '.join(f'{g:.2f}' for g in k_cal['calibration_gains'])}), true_surfaces "
              f"{m['true_surfaces']:.3f}")
    print(f"wrote {out / 'cue_oracle.json'} and {out / 'cue_oracle.png'}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with config_errors_exit(), output_dir(args.out, overwrite=args.overwrite) as out:
        return run(args, out)


if __name__ == "__main__":
    main()
