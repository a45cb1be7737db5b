"""Variant evaluation: one dataset, one table of depth metrics for every way of getting depth out of it.

Rows (a row whose inputs are missing is kept in the table as *skipped* with the reason):

- ``base``: a model given the image alone.
- ``<BokehDepth> (control: no stack)``: the BokehDepth weights given no stack: what the stack adds is the
  difference to the rows below (equal rows: the model does not use its stack at all).
- ``<BokehDepth> + physics stack``: frames rendered by :func:`physics.stacks.bokeh_stack` from the **ground-truth
  depth** (or the dataset's own physics stack, e.g. the synthetic split). An ORACLE upper bound: no real photo
  comes with its depth; the row label says so.
- ``<BokehDepth> + Stage-1 stack``: frames from a Stage-1 generator (image only, no depth): the deployable path.
- ``<BokehDepth> + real frames``: photographed aperture frames with the camera's K (aperture-pair datasets).
- ``depth-from-bokeh on <stack>``: the closed-form baseline (:func:`physics.dfd.depth_from_stack`, or
  :func:`physics.dfd.depth_from_aperture_pair` for a real pair whose reference has its own blur) on the same stack.

Models are any callables ``model(image[B,3,H,W], stack[B,N,3,H,W] | None, K_px_m[B,N] | None) -> depth[B,1,H,W]``
(a Stage-2 LightningModule or a :class:`bokeh.depth.BokehDepthModel`); the generator is a
:class:`bokeh.generation.BokehGenerator`. Samples are dicts in the project's conventions (``image``, ``depth_m``,
``valid``, ``focus_m``...; see :func:`stack_sources` for the stack keys). No Lightning here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from bokeh.datasets import resize_sample

#: Metrics in table order (bokeh.metrics.DepthMetrics keys); lower is better except delta*.
METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog")
TABLE_KEYS = ("abs_rel", "rmse", "rmse_log", "delta1", "silog")
STACK_SOURCES = ("physics", "stage1", "real")
SOURCE_TITLES = {
    "physics": "physics stack (ORACLE: rendered from GT depth)",
    "stage1": "Stage-1 stack (generated from the image)",
    "real": "real aperture frames",
}


@dataclass
class ModelSpec:
    """A depth model under evaluation. ``uses_stack`` False = a base model (the image only)."""

    label: str
    model: Callable[..., torch.Tensor]
    uses_stack: bool
    source: str = ""


@dataclass
class Row:
    """One table row: a model (or the closed-form baseline, model None) fed by one stack source (or none)."""

    label: str
    kind: str  # "model" | "dfd"
    model: ModelSpec | None
    stack: str | None  # None | "physics" | "stage1" | "real"
    oracle: bool = False
    control: bool = False  # a BokehDepth model run without its stack
    skipped: str | None = None
    seconds: float = 0.0
    metrics: Any = None
    num_samples: int = 0
    notes: list[str] = field(default_factory=list)


def stack_sources(sample: Mapping[str, Any], dataset_stack: str | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The stacks a sample already carries: {source: (frames [N,3,H,W], K_px_m [N])}.

    ``dataset_stack`` says what the sample's ``stack`` key holds ("physics" for the synthetic split or a physics
    manifest, "stage1" for a make_stack manifest, "real" for aperture pairs, None: ignore it). A ``frames`` key
    (bokeh.datasets aperture pairs) is always real.
    """
    out = {}
    if "frames" in sample and sample.get("K_px_m") is not None:
        out["real"] = (sample["frames"], torch.as_tensor(sample["K_px_m"], dtype=torch.float32).flatten())
    if dataset_stack is not None and sample.get("stack") is not None and sample.get("K_px_m") is not None:
        if dataset_stack not in STACK_SOURCES:
            raise ValueError(f"dataset_stack must be one of {STACK_SOURCES} or None, got {dataset_stack!r}")
        out[dataset_stack] = (sample["stack"], torch.as_tensor(sample["K_px_m"], dtype=torch.float32).flatten())
    return out


def focus_of(sample: Mapping[str, Any]) -> float | None:
    """The sample's focus distance in metres, or None when unknown (missing or NaN)."""
    value = sample.get("focus_m")
    if value is None:
        return None
    value = float(torch.as_tensor(value).flatten()[0])
    return value if math.isfinite(value) and value > 0 else None


def oracle_focus_m(depth_m: torch.Tensor, valid: torch.Tensor) -> float:
    """Focus for an oracle stack when the dataset records none: the 10th percentile of the valid GT depth (the
    simulator's policy: focus on the nearest subject, most of the scene behind the focal plane)."""
    values = depth_m[valid.bool()]
    return float(values.quantile(0.1)) if values.numel() else 1.0


def fill_invalid_depth(depth_m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """GT depth with holes (invalid pixels) set to the largest valid depth, so the renderer sees a dense map.
    Only the oracle rendering uses it; metrics still count valid pixels only."""
    values = depth_m[valid.bool()]
    far = float(values.max()) if values.numel() else 1.0
    return torch.where(valid.bool(), depth_m, torch.full_like(depth_m, far))


def render_physics_stack(image: torch.Tensor, depth_m: torch.Tensor, valid: torch.Tensor, K_px_m: torch.Tensor,
                         focus_m: float, render_options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Oracle stack [N,3,H,W] rendered from the ground-truth depth (holes filled with the far depth)."""
    from physics.stacks import bokeh_stack

    dense = fill_invalid_depth(depth_m, valid)
    with torch.no_grad():
        stack = bokeh_stack(image[None], dense[None], K_px_m.float(), float(focus_m), **dict(render_options or {}))
    return stack.frames[0]


def generate_stage1_stack(generator: Any, image: torch.Tensor, K_px_m: torch.Tensor, *, seed: int = 0,
                          num_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 stack for one image: (frames [N,3,H,W], K actually generated [N] at the image width).

    The generator clamps K outside its trained range (with a warning); the returned K is the clamped one converted
    back to the image width, so the depth model is told the strength the frames really have.
    """
    with torch.no_grad():
        res = generator.generate_stack(image, K_px_m, num_steps=num_steps, seed=seed)
    width = image.shape[-1]
    k_used = res.K_work_px_m.float().cpu() * (width / float(res.work_size[1]))
    return res.frames[0].cpu(), k_used


def dfd_depth(reference: torch.Tensor, frames: torch.Tensor, K_px_m: torch.Tensor, focus_m: float, *,
              reference_K_px_m: float = 0.0, max_depth_m: float = 1e3) -> torch.Tensor:
    """Closed-form depth-from-bokeh [1,H,W] m for one sample (physics.dfd). A reference with its own blur
    (``reference_K_px_m`` > 0, e.g. an f/8 photo) takes the aperture-pair path (one frame).

    Side of the focal plane: a focus at or beyond ``max_depth_m`` (the farthest depth evaluated, e.g. the synthetic
    default's 100 m focus) puts every surface in front of it; otherwise the scene is taken to lie behind it (the
    nearest-subject policy)."""
    from physics.dfd import depth_from_aperture_pair, depth_from_stack

    if reference_K_px_m > 0:
        k_wide = float(K_px_m[0])
        out = depth_from_aperture_pair(reference[None], frames[0][None], reference_K_px_m, k_wide, focus_m,
                                       max_radius_px=k_wide / focus_m + 1.0, max_depth_m=max_depth_m)
    else:
        behind = float(focus_m) < max_depth_m
        out = depth_from_stack(reference[None], frames[None], K_px_m[None].float(), focus_m, max_depth_m=max_depth_m,
                               behind_focus=behind)
    return out["depth_m"][0]


def build_rows(models: Sequence[ModelSpec], *, has_depth: bool, has_generator: bool, has_real: bool,
               has_focus: bool, dfd: bool = True, dataset_physics: bool = False,
               sources: Sequence[str] = STACK_SOURCES,
               generator_reason: str = "no Stage-1 generator given (--generator)",
               real_reason: str = "the dataset has no real aperture frames") -> list[Row]:
    """Every row of the table, with a skip reason where an input is missing. Only the stack ``sources`` asked for
    get rows (none: the image-only rows, base and controls)."""
    unknown = sorted(set(sources) - set(STACK_SOURCES))
    if unknown:
        raise ValueError(f"stack sources must be among {STACK_SOURCES}, got {unknown}")
    sources = [s for s in STACK_SOURCES if s in sources]
    rows: list[Row] = []
    bases = [m for m in models if not m.uses_stack]
    stacked = [m for m in models if m.uses_stack]
    if not bases:
        rows.append(Row("base", "model", None, None, skipped="no base model given (--base or a run dir with base/)"))
    for m in bases:
        rows.append(Row(m.label, "model", m, None))
    available = {
        "physics": None if (has_depth or dataset_physics) else "no ground-truth depth to render an oracle stack from",
        "stage1": None if has_generator else generator_reason,
        "real": None if has_real else real_reason,
    }
    if not stacked:
        rows.append(Row("BokehDepth", "model", None, None, skipped="no BokehDepth model given (--bokehdepth)"))
    for m in stacked:
        # control: the same weights without a stack (DSFA on the reference alone) separate the stack's
        # contribution from whatever else differs between the BokehDepth and base trainings
        rows.append(Row(f"{m.label} (control: no stack)", "model", m, None, control=True))
        for source in sources:
            rows.append(Row(f"{m.label} + {SOURCE_TITLES[source]}", "model", m, source, oracle=source == "physics",
                            skipped=available[source]))
    if dfd:
        for source in sources:
            reason = available[source] or (None if has_focus or source != "real" else "the focus distance is unknown")
            rows.append(Row(f"depth-from-bokeh (closed form) on {SOURCE_TITLES[source]}", "dfd", None, source,
                            oracle=source == "physics", skipped=reason))
    return rows


class ResizedDataset(torch.utils.data.Dataset):
    """Every sample of ``dataset`` through :func:`resize_sample` (the dataset's caps / skipped list kept)."""

    def __init__(self, dataset: Any, height: int, width: int) -> None:
        self.dataset, self.height, self.width = dataset, int(height), int(width)
        if self.height < 8 or self.width < 8:
            raise ValueError(f"resize size must be at least 8x8, got {height}x{width}")
        for key in ("min_depth_m", "max_depth_m", "skipped"):
            if hasattr(dataset, key):
                setattr(self, key, getattr(dataset, key))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return resize_sample(self.dataset[i], self.height, self.width)


def _sample_name(sample: Mapping[str, Any], i: int) -> str:
    return str(sample.get("name", f"{i:05d}")).replace("/", "_").replace(" ", "_").replace("=", "")


def _resize_like(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if pred.shape[-2:] != ref.shape[-2:]:
        pred = F.interpolate(pred[None], size=ref.shape[-2:], mode="bilinear", align_corners=False)[0]
    return pred


@torch.no_grad()
def evaluate_variants(
    dataset: Any,
    models: Sequence[ModelSpec],
    *,
    grid_dir: str | Path | None = None,
    map_dir: str | Path | None = None,
    generator: Any = None,
    generator_focus_m: float | None = None,
    stack_K_px_m: Sequence[float] | None = None,
    K_at_width: float | None = None,
    dataset_stack: str | None = None,
    reference_K_ratio: float = 0.0,
    min_depth_m: float = 1e-3,
    max_depth_m: float = 80.0,
    crop: str | None = None,
    dfd: bool = True,
    sources: Sequence[str] = STACK_SOURCES,
    render_options: Mapping[str, Any] | None = None,
    generator_steps: int | None = None,
    limit: int | None = None,
    num_grids: int = 8,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate every row on every sample (batch 1: sizes may differ) and write pictures of the first ``num_grids``.

    Args:
        dataset: indexable of sample dicts (image [3,H,W], depth_m [1,H,W], valid, focus_m?, stack?/frames?, K_px_m?).
        models: base models (``uses_stack`` False) and BokehDepth models.
        grid_dir: folder for one PNG grid per sample (``<grid_dir>/<sample>.png``, :func:`write_sample_grid`).
        map_dir: folder for each row's depth colour map (``<map_dir>/<row slug>/<sample>.png``, inverse depth over
            the GT's 2-98 % range).
        generator: a Stage-1 generator, or None (its rows are skipped).
        generator_focus_m: the fixed focus the generator was trained at (its generator.json ``focus_m``), used by
            the closed-form depth-from-bokeh row on its stacks: the frames show that focus, whatever the sample's
            own focus; None (a generator trained on each scene's nearest subject): the sample's focus.
        stack_K_px_m: strengths of the physics / Stage-1 stacks when the sample carries none, at ``K_at_width``
            (default: each image's own width); scaled to each image's width. A sample's own physics stack K wins.
        dataset_stack: what the samples' ``stack`` key holds (see :func:`stack_sources`).
        reference_K_ratio: for real pairs whose reference has its own blur (f/8 vs f/2.8): K_ref / K_frame
            (= N_frame / N_ref); 0 for an all-in-focus reference.
        min_depth_m, max_depth_m, crop: evaluation caps and benchmark crop (bokeh.metrics.DepthMetrics).
        dfd: add the closed-form depth-from-bokeh rows.
        sources: the stack sources that get rows (``()``: base and control rows only).
    Returns: {"rows": [...], "num_samples", "notes"} (JSON-ready).
    """
    from bokeh.metrics import DepthMetrics

    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n == 0:
        raise ValueError("the dataset holds no sample to evaluate")
    first = dataset[0]
    own = stack_sources(first, dataset_stack)
    has_K = stack_K_px_m is not None or "physics" in own  # strengths for rendered / generated stacks
    has_depth = bool(first.get("valid", first["depth_m"] > 0).any())
    rows = build_rows(
        models, has_depth=has_depth, has_generator=generator is not None, has_real="real" in own,
        has_focus=focus_of(first) is not None, dfd=dfd, dataset_physics="physics" in own, sources=sources,
    )
    if not has_K:
        for row in rows:
            if row.stack in ("physics", "stage1") and row.skipped is None:
                row.skipped = "no stack strengths given (stack_K_px_m / --K) to render or generate a stack with"
    for row in rows:
        if row.skipped is None:
            row.metrics = DepthMetrics(min_depth_m=min_depth_m, max_depth_m=max_depth_m, crop=crop)
    active = [r for r in rows if r.skipped is None]
    needed = {r.stack for r in active if r.stack}
    notes: list[str] = []
    iterator: Iterable[int] = range(n)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="variants", unit="sample")
    for i in iterator:
        sample = first if i == 0 else dataset[i]
        image = sample["image"].float()
        gt = sample["depth_m"].float()
        valid = sample.get("valid", gt > 0).bool()
        width = image.shape[-1]
        stacks = stack_sources(sample, dataset_stack)
        focus = focus_of(sample)
        if stack_K_px_m is not None:
            ref_w = float(K_at_width or width)
            K_default = torch.tensor([float(k) * width / ref_w for k in stack_K_px_m], dtype=torch.float32)
        else:
            K_default = stacks["physics"][1] if "physics" in stacks else None
        if "physics" in needed and "physics" not in stacks:
            f = focus if focus is not None else oracle_focus_m(gt, valid)
            stacks["physics"] = (render_physics_stack(image, gt, valid, K_default, f, render_options), K_default)
        if "stage1" in needed and "stage1" not in stacks:
            t0 = time.perf_counter()
            stacks["stage1"] = generate_stage1_stack(generator, image, K_default, seed=seed + i,
                                                     num_steps=generator_steps)
            stage1_s = time.perf_counter() - t0
        else:
            stage1_s = 0.0
        preds: dict[str, torch.Tensor] = {}
        for row in active:
            if row.stack is not None and row.stack not in stacks:
                row.notes.append(f"{_sample_name(sample, i)}: no {row.stack} stack")
                continue
            t0 = time.perf_counter()
            if row.kind == "model":
                assert row.model is not None
                if row.stack is None:
                    pred = row.model.model(image[None], None, None)[0]
                else:
                    frames, K = stacks[row.stack]
                    pred = row.model.model(image[None], frames[None].float(), K[None].float())[0]
                if row.stack == "stage1":
                    row.seconds += stage1_s / max(1, sum(r.stack == "stage1" for r in active))
            else:
                frames, K = stacks[row.stack]
                f = focus if focus is not None else (oracle_focus_m(gt, valid) if row.stack != "real" else None)
                if row.stack == "stage1" and generator_focus_m is not None:
                    f = float(generator_focus_m)
                if f is None:
                    row.notes.append(f"{_sample_name(sample, i)}: focus unknown")
                    continue
                ratio = reference_K_ratio if row.stack == "real" else 0.0
                if row.stack == "real" and "frame_f_numbers" in sample and "f_number" in sample:
                    ratio = float(torch.as_tensor(sample["frame_f_numbers"]).flatten()[0]) / float(sample["f_number"])
                pred = dfd_depth(image, frames.float(), K.float(), f, reference_K_px_m=ratio * float(K[0]),
                                 max_depth_m=max_depth_m)
            row.seconds += time.perf_counter() - t0
            pred = _resize_like(pred.float(), gt)
            row.metrics.update(pred[None], gt[None], valid[None], min_depth_m=min_depth_m, max_depth_m=max_depth_m)
            row.num_samples += 1
            preds[row.label] = pred
        if i < num_grids and grid_dir is not None:
            write_sample_grid(Path(grid_dir) / f"{_sample_name(sample, i)}.png", image, gt, valid, stacks, preds, rows)
        if i < num_grids and map_dir is not None:
            write_depth_maps(Path(map_dir), _sample_name(sample, i), gt, valid, preds, rows)
    result_rows = []
    for row in rows:
        entry: dict[str, Any] = {"label": row.label, "slug": row_slug(row), "kind": row.kind, "stack": row.stack,
                                 "oracle": row.oracle, "control": row.control,
                                 "model": row.model.label if row.model else None,
                                 "model_source": row.model.source if row.model else None}
        if row.skipped:
            entry["skipped"] = row.skipped
        else:
            entry["metrics"] = {k: float(v) for k, v in row.metrics.compute().items()}
            entry["num_samples"] = row.num_samples
            entry["seconds_per_sample"] = row.seconds / max(1, row.num_samples)
            if row.notes:
                entry["notes"] = row.notes[:20]
        result_rows.append(entry)
    return {"rows": result_rows, "num_samples": n, "caps_m": [min_depth_m, max_depth_m], "crop": crop,
            "stack_K_px_m": list(stack_K_px_m) if stack_K_px_m is not None else None, "K_at_width": K_at_width,
            "dataset_stack": dataset_stack, "notes": notes}


def write_sample_grid(path: Path, image: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                      stacks: Mapping[str, tuple[torch.Tensor, torch.Tensor]], preds: Mapping[str, torch.Tensor],
                      rows: Sequence[Row], min_cell_px: int = 160) -> Path:
    """PNG grid for one sample. Row 1: RGB | the strongest frame of each stack | GT. Row 2: each variant's depth
    (inverse-depth colours over the GT's 2-98% range). Row 3: each variant's relative error |pred - gt| / gt
    (white 0, dark red >= 0.5; invalid GT black). Cells narrower than ``min_cell_px`` are upscaled (nearest)."""
    from bokeh.io import colorize_depth, colorize_signed, image_grid, write_image

    lo, hi = _gt_range(gt, valid)
    gt_picture = colorize_depth(torch.where(valid, gt, torch.zeros_like(gt)), vmin=lo, vmax=hi)
    top = [image] + [frames[-1] for frames, _ in stacks.values()] + [gt_picture]
    top_labels = ["RGB"] + [f"{s} stack (K={float(K[-1]):.3g})" for s, (_, K) in stacks.items()] + ["GT"]
    depth_row, error_row, labels, error_labels = [], [], [], []
    short = {r.label: _short_label(r) for r in rows}
    for label, pred in preds.items():
        depth_row.append(colorize_depth(pred, vmin=lo, vmax=hi))
        rel = torch.where(valid, (pred - gt).abs() / gt.clamp_min(1e-6), torch.zeros_like(gt))
        picture = colorize_signed(rel.clamp(max=0.5), limit=0.5, cmap="coolwarm")
        picture[~valid[0].numpy()] = 0
        error_row.append(picture)
        labels.append(short[label])
        error_labels.append(f"err {short[label]}")
    grid_rows = [top] + ([depth_row, error_row] if depth_row else [])
    grid_labels = [top_labels] + ([labels, error_labels] if depth_row else [])
    factor = max(1, math.ceil(min_cell_px / image.shape[-1]))  # small images: nearest upscaling, readable labels
    if factor > 1:
        grid_rows = [[_upscale(cell, factor) for cell in row] for row in grid_rows]
    return write_image(path, image_grid(grid_rows, labels=grid_labels))


def write_depth_maps(map_dir: Path, name: str, gt: torch.Tensor, valid: torch.Tensor,
                     preds: Mapping[str, torch.Tensor], rows: Sequence[Row]) -> list[Path]:
    """Each row's depth [1,H,W] as ``<map_dir>/<row slug>/<name>.png`` (inverse-depth colours over the GT's 2-98 %
    range, the grids' colours, with a colour bar labelled in metres)."""
    from bokeh.io import colorize_depth_with_legend, write_image

    lo, hi = _gt_range(gt, valid)
    slugs = {r.label: row_slug(r) for r in rows}
    return [write_image(map_dir / slugs[label] / f"{name}.png", colorize_depth_with_legend(pred, vmin=lo, vmax=hi))
            for label, pred in preds.items()]


def _gt_range(gt: torch.Tensor, valid: torch.Tensor) -> tuple[float | None, float | None]:
    """The 2nd and 98th percentile of the valid GT depth (colour range of every depth picture of a sample)."""
    values = gt[valid]
    return (float(values.quantile(0.02)), float(values.quantile(0.98))) if values.numel() else (None, None)


def row_slug(row: Row) -> str:
    """A file-system name for a row: ``<model>`` (base), ``<model>_control``, ``<model>_<stack>``, ``dfb_<stack>``."""
    who = row.model.label if row.model else "dfb"
    tail = row.stack or ("control" if row.control else "")
    return "_".join(x for x in (who, tail) if x).replace("/", "_").replace(" ", "_").replace("=", "")


def _upscale(cell: torch.Tensor | Any, factor: int) -> Any:
    """Nearest-neighbour upscaling of a [3,H,W] tensor or an HxWx3 uint8 array by an integer factor."""
    if isinstance(cell, torch.Tensor):
        return cell.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
    return cell.repeat(factor, axis=0).repeat(factor, axis=1)


def _short_label(row: Row) -> str:
    src = {"physics": "phys(ORACLE)", "stage1": "stage1", "real": "real", None: "image"}[row.stack]
    if row.control:
        src = "no stack"
    who = row.model.label if row.model else "DfB"
    return f"{who}|{src}"


def markdown_table(result: Mapping[str, Any], keys: Sequence[str] = TABLE_KEYS, title: str | None = None) -> str:
    """The result's rows as a Markdown table (skipped rows show their reason); the last column compares abs_rel
    with the first base row."""
    rows = result["rows"]
    base = _base_row(rows)
    head = "| variant | " + " | ".join(keys) + " | abs_rel / base | s/sample |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|---|" + "---:|" * (len(keys) + 2)]
    for r in rows:
        label = r["label"]
        if "skipped" in r:
            lines.append(f"| {label} | skipped: {r['skipped']} |" + " |" * (len(keys) + 1))
            continue
        m = r["metrics"]
        cells = [f"{m[k]:.4f}" for k in keys]
        ratio = f"{m['abs_rel'] / base['metrics']['abs_rel']:.3f}" if base and base["metrics"]["abs_rel"] else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} | {r['seconds_per_sample']:.3f} |")
    lines.append("")
    lines.append("ORACLE rows see a stack rendered from the ground-truth depth: an upper bound, not a deployable "
                 "result.")
    return "\n".join(lines) + "\n"


def _base_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first evaluated base row (a model given the image alone, not a BokehDepth control)."""
    return next((r for r in rows if r["kind"] == "model" and r["stack"] is None and "metrics" in r
                 and not r.get("control")), None)


def summary_markdown(sections: Sequence[Mapping[str, Any]], key: str = "abs_rel") -> str:
    """One table over several datasets: a row per variant label, per dataset ``key`` and its ratio to that
    dataset's base row (``-``: the row is skipped or absent there). ``sections`` are :func:`evaluate_variants`
    results with a ``dataset`` name each."""
    labels = list(dict.fromkeys(r["label"] for s in sections for r in s["rows"]))
    head = "| variant | " + " | ".join(f"{s['dataset']} {key} | / base" for s in sections) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(sections)]
    for label in labels:
        cells = []
        for s in sections:
            row = next((r for r in s["rows"] if r["label"] == label), None)
            base = _base_row(s["rows"])
            if row is None or "metrics" not in row:
                cells += ["-", "-"]
                continue
            value = row["metrics"][key]
            ratio = f"{value / base['metrics'][key]:.3f}" if base and base["metrics"][key] else "-"
            cells += [f"{value:.4f}", ratio]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(result: Mapping[str, Any], title: str = "", keys: Sequence[str] = TABLE_KEYS) -> None:
    """The table on the console (rich when available, else the Markdown text)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(markdown_table(result, keys, title))
        return
    table = Table(title=title or None, show_lines=False)
    table.add_column("variant", overflow="fold")
    for k in keys:
        table.add_column(k, justify="right")
    for r in result["rows"]:
        if "skipped" in r:
            table.add_row(r["label"], f"[dim]skipped: {r['skipped']}[/dim]", *[""] * (len(keys) - 1))
        else:
            table.add_row(r["label"], *[f"{r['metrics'][k]:.4f}" for k in keys])
    Console(width=160).print(table)


__all__ = ["METRIC_KEYS", "ModelSpec", "Row", "STACK_SOURCES", "build_rows", "dfd_depth", "evaluate_variants",
           "fill_invalid_depth", "focus_of", "generate_stage1_stack", "markdown_table", "oracle_focus_m",
           "print_table", "render_physics_stack", "resize_sample", "ResizedDataset", "row_slug", "stack_sources",
           "summary_markdown", "write_depth_maps", "write_sample_grid"]
