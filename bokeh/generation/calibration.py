"""K calibration of a bokeh generator: the strength it must be run at for its frames to show the asked K.

A generator asked for K should produce the frame that the physics renderer produces at K. Measured by
:func:`physics.k_fit.fit_k` (the K whose physics render best explains a generated frame, given the scene's depth),
a depth-free generator misses K in two ways: scatter from scene to scene (its monocular guess of where the blur goes
and how strong it is) and a bias that depends on K (e.g. the compact default's frames at K = 1.14 px*m are best
explained by 0.67 K, at K = 6.86 by 1.11 K on 64 test scenes: BENCHMARKS.md "Stage-1 generator", session 8). No
calibration can remove the scatter; the bias it removes. Part of that bias is how the fit reads blur in the wrong
places (a uniform disk of each scene's true mean radius is read as 0.76 K at K = 1.14), so a calibrated generator
trades fidelity to the physics frames (PSNR) for a K axis the fit reads back as asked.

:class:`KCalibration` maps the asked K to the K the generator is run at, ``K_run = K * gain(K)``, with log-gain
piecewise linear in log K through a few knots and constant beyond them. :func:`fit_k_calibration` fits the gains on
held-out scenes with depth (a validation split, never the test split): at each knot the gain is the one that makes
the median of ``fit_k(frame at K_run) / K`` equal to 1 over the scenes where K is measurable (the median: the gain
minimising the mean |K_fit / K - 1|, the K-calibration error). Hand-written: no library fits a generator's strength
axis against a renderer.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass(frozen=True)
class KCalibration:
    """``K_run = K * gain(K)`` (both px*m at the generator's working width); ``log gain`` is linear in ``log K``
    between ``knots_px_m`` (ascending) and constant beyond the first and last knot. K = 0 stays 0."""

    knots_px_m: tuple[float, ...]
    gains: tuple[float, ...]

    def __post_init__(self) -> None:
        knots, gains = tuple(float(k) for k in self.knots_px_m), tuple(float(g) for g in self.gains)
        object.__setattr__(self, "knots_px_m", knots)
        object.__setattr__(self, "gains", gains)
        if not knots or len(knots) != len(gains):
            raise ValueError(f"KCalibration needs as many gains as knots (>= 1); got {len(knots)} knots, "
                             f"{len(gains)} gains")
        if not all(math.isfinite(k) and k > 0 for k in knots) or any(b <= a for a, b in zip(knots, knots[1:])):
            raise ValueError(f"KCalibration knots must be finite, > 0 and strictly ascending (px*m); got {knots}")
        if not all(math.isfinite(g) and g > 0 for g in gains):
            raise ValueError(f"KCalibration gains must be finite and > 0; got {gains}")
        runs = [k * g for k, g in zip(knots, gains)]
        if any(b <= a for a, b in zip(runs, runs[1:])):
            raise ValueError(f"KCalibration must keep K ordered (a larger K asked, a larger K run); K_run at the knots "
                             f"{knots} would be {[round(r, 4) for r in runs]}")

    def apply(self, K_px_m: torch.Tensor) -> torch.Tensor:
        """K [...] (px*m, >= 0) -> K_run, same shape and dtype."""
        K = torch.as_tensor(K_px_m)
        dtype = K.dtype if K.is_floating_point() else torch.float32
        log_knots = torch.tensor([math.log(k) for k in self.knots_px_m], dtype=torch.float64, device=K.device)
        log_gains = torch.tensor([math.log(g) for g in self.gains], dtype=torch.float64, device=K.device)
        logk = K.double().clamp_min(1e-12).log().clamp(float(log_knots[0]), float(log_knots[-1]))
        if len(self.knots_px_m) == 1:
            log_gain = log_gains[0].expand_as(logk)
        else:
            i = (torch.bucketize(logk, log_knots) - 1).clamp(0, len(self.knots_px_m) - 2)
            frac = (logk - log_knots[i]) / (log_knots[i + 1] - log_knots[i])
            log_gain = log_gains[i] + frac * (log_gains[i + 1] - log_gains[i])
        return (K.double() * log_gain.exp()).to(dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"knots_px_m": list(self.knots_px_m), "gains": list(self.gains)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KCalibration":
        try:
            return cls(tuple(data["knots_px_m"]), tuple(data["gains"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"a K calibration needs 'knots_px_m' and 'gains' lists; got {data!r}") from error


FitK = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], float]


def fit_k_calibration(generate: Callable[[int, torch.Tensor, "KCalibration"], torch.Tensor],
                      samples: Sequence[dict[str, Any]], knots_px_m: Sequence[float], fit: FitK,
                      measurable: Callable[[dict[str, Any], float], bool], *, iterations: int = 3,
                      min_samples: int = 5, progress: Callable[[str], None] | None = None
                      ) -> tuple[KCalibration, dict[str, Any]]:
    """Fit the gains at ``knots_px_m`` (px*m at the samples' width = the generator's working width).

    generate(index, image [3,H,W], calibration) -> frames [N,3,H,W]: the generator asked for the N knots under that
    calibration (the production path); samples: dicts with ``image``, ``depth_m``, ``focus_m``;
    fit(image, depth_m, focus_m, frame) -> K_fit; measurable(sample, K) -> whether the scene can tell K to the error
    being fitted (the others are left out at that knot); a knot with fewer than ``min_samples`` measurable samples
    is dropped (a median of a few scenes is noise; reported in ``dropped_knots_px_m``). Iteration 0 runs at gain 1;
    each further one divides every gain by the median K_fit / K of the previous (a fixed-point step, exact where
    K_fit is proportional to K_run), unless that would reorder K_run (then the fit stops). The calibration returned is the iterate with the lowest
    mean |K_fit / K - 1| over the knots. Report: per iterate the gains, median ratios and errors per knot, the
    measurable samples per knot, and which iterate was chosen.
    """
    asked = [float(k) for k in knots_px_m]
    use_all = [[measurable(s, k) for k in asked] for s in samples]
    counts_all = [sum(u[j] for u in use_all) for j in range(len(asked))]
    keep = [j for j, c in enumerate(counts_all) if c >= max(1, min_samples)]
    if not keep:
        raise ValueError(f"too few samples can measure K at every knot {asked} (measurable samples per knot "
                         f"{counts_all}, need >= {min_samples}): use more or more textured scenes, or larger knots")
    knots = [asked[j] for j in keep]
    use = [[u[j] for j in keep] for u in use_all]
    counts = [counts_all[j] for j in keep]
    dropped = [asked[j] for j in range(len(asked)) if j not in keep]
    calibration = KCalibration(tuple(knots), tuple(1.0 for _ in knots))
    history: list[dict[str, Any]] = []
    stopped = None
    for it in range(iterations + 1):
        ratios: list[list[float]] = [[] for _ in knots]
        for i, s in enumerate(samples):
            frames = generate(i, s["image"], calibration)
            for j, k in enumerate(knots):
                if use[i][j]:
                    ratios[j].append(fit(s["image"], s["depth_m"], float(s["focus_m"]), frames[j]) / k)
        medians = [statistics.median(r) for r in ratios]
        errors = [sum(abs(x - 1.0) for x in r) / len(r) for r in ratios]
        history.append({"gains": list(calibration.gains), "median_ratio": medians, "k_cal_err": errors,
                        "mean_k_cal_err": sum(errors) / len(errors)})
        if progress:
            progress(f"iterate {it}: gains {[round(g, 3) for g in calibration.gains]}, median K_fit/K "
                     f"{[round(m, 3) for m in medians]}, mean |K_fit/K - 1| {[round(e, 3) for e in errors]}")
        if it == iterations:
            break
        try:
            calibration = KCalibration(tuple(knots), tuple(g / m for g, m in zip(calibration.gains, medians)))
        except ValueError as error:  # the step would reorder K_run: keep what was measured so far
            stopped = str(error)
            break
    best = min(range(len(history)), key=lambda n: history[n]["mean_k_cal_err"])
    report = {"knots_px_m": knots, "measurable_samples": counts, "dropped_knots_px_m": dropped,
              "measurable_samples_dropped": [counts_all[j] for j in range(len(asked)) if j not in keep],
              "iterates": history, "chosen_iterate": best, "stopped": stopped}
    return KCalibration(tuple(knots), tuple(history[best]["gains"])), report


__all__ = ["KCalibration", "fit_k_calibration"]
