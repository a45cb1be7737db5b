"""K calibration of an exported Stage-1 generator on validation scenes (``tools/calibrate_k.py``, the Stage-1 fit).

Wires :func:`bokeh.generation.calibration.fit_k_calibration` to the generator's own kind of synthetic scenes (its
``generator.json`` scene options and focus, Stage-1 *validation* split) and to :func:`physics.k_fit.fit_k`, then
writes the calibration into ``generator.json`` and a report (``calibration.json``, ``calibration.png``). See
docs/stage1.md "K calibration".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bokeh.generation import KCalibration, fit_k_calibration


def default_knots(k_min: float, k_max: float, count: int = 5) -> list[float]:
    """``count`` knots log-spaced over [k_min, k_max] (px*m; k_min 0 -> k_max / 16)."""
    lo = k_min if k_min > 0 else k_max / 16
    # 6 significant digits: exp(log(.)) leaves 3.999999999999999 where 4 was meant
    return [float(f"{math.exp(math.log(lo) + (math.log(k_max) - math.log(lo)) * i / (count - 1)):.6g}")
            for i in range(count)]


def check_calibration_settings(k_min: float, k_max: float, knots: Sequence[float] | None, num_scenes: int,
                               iterations: int, min_scenes: int) -> list[float]:
    """The knots to use (sorted; default :func:`default_knots`) after checking every setting; ValueError naming the
    bad one. Called by :func:`calibrate_generator` and, before a fit starts, by the Stage-1 build."""
    knots = sorted(float(k) for k in (knots or default_knots(k_min, k_max)))
    if not all(math.isfinite(k) for k in knots) or knots[0] < k_min - 1e-9 or knots[-1] > k_max + 1e-9:
        raise ValueError(f"calibration knots {knots} must be finite and lie in the trained range [{k_min:g}, "
                         f"{k_max:g}] px*m")
    if num_scenes < 1 or iterations < 0 or min_scenes < 1:
        raise ValueError(f"calibration needs num_scenes >= 1, iterations >= 0 and min_scenes >= 1, got {num_scenes}, "
                         f"{iterations} and {min_scenes}")
    return knots


def calibrate_generator(gen: Any, meta: dict[str, Any], *, num_scenes: int = 32, knots: Sequence[float] | None = None,
                        iterations: int = 3, seed: int = 0, min_scenes: int = 5,
                        progress: Callable[[str], None] | None = None,
                        on_stack: Callable[[], None] | None = None) -> tuple[KCalibration, dict[str, Any]]:
    """Fit ``gen``'s K calibration (its current one is ignored and left unset) on ``num_scenes`` validation scenes.

    ``meta``: the generator's generator.json (trained range ``k``, ``resolution``, ``scene_options``, ``focus_m``).
    Knots (px*m at the generator's width) must lie in the trained range; default 5 log-spaced over it. A knot that
    fewer than ``min_scenes`` scenes can measure is dropped (reported).
    """
    from lightning_modules.stage1_data import SyntheticSplit
    from physics.k_fit import fit_k, fit_range, k_measurability

    k_lo, k_hi = float(meta["k"]["min"]), float(meta["k"]["max"])
    knots = check_calibration_settings(k_lo, k_hi, knots, num_scenes, iterations, min_scenes)
    size = int(meta["resolution"])
    split = SyntheticSplit("val", num_scenes, size, size, seed, dict(meta.get("scene_options") or {}),
                           meta.get("focus_m"))
    samples = [split[i] for i in range(len(split))]

    def generate(index: int, image: torch.Tensor, calibration: KCalibration) -> torch.Tensor:
        gen.k_calibration = calibration
        if on_stack:
            on_stack()
        return gen.generate_stack(image, list(calibration.knots_px_m), seed=index).frames[0]

    def measurable(sample: dict[str, Any], K: float) -> bool:
        return k_measurability(sample["image"], sample["depth_m"], float(sample["focus_m"]), K)[1]

    def fit(image, depth, focus, frame) -> float:
        return fit_k(image, depth, focus, frame, *fit_range(k_lo, k_hi))

    try:
        calibration, report = fit_k_calibration(generate, samples, knots, fit, measurable, iterations=iterations,
                                                min_samples=min_scenes, progress=progress)
    finally:
        gen.k_calibration = None
    report.update(num_scenes=len(samples), split="val", seed=seed, size=size,
                  scene_options=meta.get("scene_options"), focus_m=meta.get("focus_m"),
                  calibration=calibration.to_dict(),
                  notes="K_fit = physics.k_fit.fit_k of each generated frame given the scene's depth and focus; "
                        "ratios over the scenes where K is measurable (renders at K +- 15% differ by >= 1/255 RMS)")
    return calibration, report


def plot_calibration(report: dict[str, Any], path: Path) -> Path:
    """Median K_fit / K against K, uncalibrated and calibrated (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bokeh.io import atomic_path

    knots = report["knots_px_m"]
    before, after = report["iterates"][0], report["iterates"][report["chosen_iterate"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.axhline(1.0, color="0.6", lw=1)
    ax.plot(knots, before["median_ratio"], "o-", label=f"uncalibrated (mean |err| {before['mean_k_cal_err']:.3f})")
    ax.plot(knots, after["median_ratio"], "s-", label=f"calibrated (mean |err| {after['mean_k_cal_err']:.3f})")
    ax.set_xscale("log")
    ax.set_xticks(knots, [f"{k:.3g}" for k in knots])
    ax.minorticks_off()
    ax.set_xlabel("K asked (px*m, generator width)")
    ax.set_ylabel("median K_fit / K")
    ax.set_title(f"Stage-1 K calibration ({report['num_scenes']} validation scenes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_calibration(meta_path: Path, calibration: KCalibration, report: dict[str, Any], out_dir: Path) -> None:
    """``k_calibration`` into generator.json (re-read, then replaced atomically; with the physics renderer's version
    it was measured against) + calibration.json/.png in out_dir."""
    from bokeh.io import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "calibration.json", report)
    plot_calibration(report, out_dir / "calibration.png")
    meta = json.loads(Path(meta_path).read_text())
    from physics.render import RENDERER_VERSION

    meta["k_calibration"] = dict(calibration.to_dict(), renderer_version=RENDERER_VERSION,
                                 fitted_on=f"{report['num_scenes']} val-split scenes, seed {report['seed']}")
    write_json(meta_path, meta)


def summary_line(calibration: KCalibration, report: dict[str, Any]) -> str:
    before, after = report["iterates"][0], report["iterates"][report["chosen_iterate"]]
    return (f"K calibration at knots {[round(k, 3) for k in calibration.knots_px_m]} px*m: gains "
            f"{[round(g, 3) for g in calibration.gains]}; median K_fit/K "
            f"{[round(m, 3) for m in before['median_ratio']]} -> {[round(m, 3) for m in after['median_ratio']]}; "
            f"mean |K_fit/K - 1| {before['mean_k_cal_err']:.3f} -> {after['mean_k_cal_err']:.3f} "
            f"(val split, {report['num_scenes']} scenes)")


__all__ = ["calibrate_generator", "check_calibration_settings", "default_knots", "plot_calibration", "summary_line", "write_calibration"]
