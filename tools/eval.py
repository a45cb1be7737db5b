#!/usr/bin/env python
"""Evaluate Stage-2 depth models on a dataset: metric table, JSON, depth colour maps.

Models (any number, each with a label):
    --run runs/stage2/<stamp>            the base and BokehDepth models of a fit.py comparison run (best checkpoints)
    --checkpoint [label=]path.ckpt       a Stage-2 checkpoint (repeatable)
    --model model/stage2_tiny.yaml       a model built from a model config with no training (e.g. pretrained_path)
Datasets:
    (default)                            the synthetic test split of the first model's own config
    --config data/dfd_indoor.yaml [data.aperture_pairs.root=...]   a data config (synthetic | manifest | aperture_pairs)
    --folder ../shared/data/nyu_kitti/nyu_demo                     an NYU / KITTI / generic RGB-D folder (image only,
                                                                   bokeh.datasets readers, standard caps and crops)
Outputs (``--out``, default ``<run>/eval_<dataset>`` or ``runs/eval/<stamp>``): metrics.json, metrics.md,
maps/<label>/<name>.png colour maps (inverse depth, GT range) and grids/<name>.png (RGB | stack | models | GT).

    python tools/eval.py --run runs/stage2/20261123-160000 --config data/dfd_indoor.yaml \
        data.aperture_pairs.root=../shared/data/dfd_indoor
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lightning_modules.config import ConfigError, load_config  # noqa: E402

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a fit.py run dir with base/ and bokehdepth/ (or a single-model run)")
    p.add_argument("--checkpoint", action="append", default=[], help="[label=]path to a Stage-2 .ckpt (repeatable)")
    p.add_argument("--model", action="append", default=[], help="[label=]model config (YAML with a model: section), untrained")
    p.add_argument("--config", action="append", default=[], help="data config(s) to merge (bare names resolve in configs/)")
    p.add_argument("--folder", help="an NYU / KITTI / generic RGB-D folder read with bokeh.datasets")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--no-stack", action="store_true", help="give the models no stack (DSFA on the reference alone)")
    p.add_argument("--min-depth-m", type=float, default=None)
    p.add_argument("--max-depth-m", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples")
    p.add_argument("--num-maps", type=int, default=8, help="colour maps / grids written for the first N samples")
    p.add_argument("--out", help="output folder (default: <run>/eval_<data> or runs/eval/<stamp>)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is best on a busy machine)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the data config, e.g. data.aperture_pairs.limit=5")
    return p.parse_args(argv)


def _split_label(text: str, default: str) -> tuple[str, str]:
    if "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        return label, path
    return default, text


def _best_checkpoint(run_dir: Path) -> Path:
    import json

    result = run_dir / "result.json"
    if result.is_file():
        best = json.loads(result.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    bests = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
    if bests:
        return bests[-1]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'} (expected best*.ckpt or last.ckpt)")


def load_models(args: argparse.Namespace) -> dict[str, Any]:
    """{label: Stage2Module in eval mode} from --run / --checkpoint / --model."""
    from lightning_modules.stage2 import Stage2Module

    specs: list[tuple[str, str, Path]] = []
    if args.run:
        run = Path(args.run)
        if not run.is_dir():
            raise FileNotFoundError(f"--run {run} is not a directory")
        subs = [d for d in ("base", "bokehdepth") if (run / d / "checkpoints").is_dir()]
        for d in subs:
            specs.append((d, "ckpt", _best_checkpoint(run / d)))
        if not subs:
            specs.append(("model", "ckpt", _best_checkpoint(run)))
    for i, text in enumerate(args.checkpoint):
        label, path = _split_label(text, f"ckpt{i}" if len(args.checkpoint) > 1 else "model")
        specs.append((label, "ckpt", Path(path)))
    for i, text in enumerate(args.model):
        label, path = _split_label(text, f"config{i}" if len(args.model) > 1 else "base_config")
        specs.append((label, "config", Path(path)))
    if not specs:
        raise ConfigError("name at least one model: --run DIR, --checkpoint PATH or --model CONFIG")
    models = {}
    for label, kind, path in specs:
        if kind == "ckpt":
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {path} does not exist")
            module = Stage2Module.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
        else:
            cfg = load_config([path])
            if "model" not in cfg:
                raise ConfigError(f"{path} has no 'model:' section")
            module = Stage2Module({"model": OmegaConf.to_container(cfg.model, resolve=True), "use_stack": True})
        module.eval()
        module.source = str(path)
        models[label] = module
    return models


def build_dataset(args: argparse.Namespace, models: dict[str, Any]) -> tuple[Any, str]:
    """(dataset of sample dicts, a short name) from --folder, --config or the first checkpoint's own data config."""
    if args.folder:
        from bokeh.datasets import open_dataset

        ds = open_dataset(args.folder)
        return ds, Path(args.folder).name
    from lightning_modules.data import build_datamodule

    if args.config:
        cfg = load_config(args.config, args.overrides)
        if "data" not in cfg:
            raise ConfigError(f"--config {args.config} has no 'data:' section")
        data_cfg = cfg.data
        name = Path(args.config[-1]).stem
    else:
        first = next(iter(models.values()))
        if "data" not in first.cfg:
            raise ConfigError("the model has no data config of its own: give --config data/<...>.yaml or --folder")
        data_cfg = OmegaConf.create(first.cfg["data"])
        if args.overrides:
            from lightning_modules.config import apply_overrides

            wrapped = OmegaConf.create({"data": data_cfg})
            OmegaConf.set_struct(wrapped, True)
            data_cfg = apply_overrides(wrapped, args.overrides).data
        name = f"{data_cfg.get('kind', 'synthetic')}_{args.split}"
    dm = build_datamodule(data_cfg)
    if hasattr(dm, "setup"):
        dm.setup({"train": "fit", "val": "fit", "test": "test"}[args.split])
    if args.split not in dm.datasets:
        raise ConfigError(f"the data config has no '{args.split}' split")
    return dm.datasets[args.split], name


def _caps(args: argparse.Namespace, dataset: Any, models: dict[str, Any]) -> tuple[float, float]:
    first = next(iter(models.values()))
    lo = args.min_depth_m if args.min_depth_m is not None else getattr(dataset, "min_depth_m", first.min_depth_m)
    hi = args.max_depth_m if args.max_depth_m is not None else getattr(dataset, "max_depth_m", first.max_depth_m)
    if not math.isfinite(hi):
        hi = first.max_depth_m
    return float(max(lo, 1e-3)), float(hi)


@torch.no_grad()
def evaluate(models: dict[str, Any], dataset: Any, out_dir: Path, *, min_depth_m: float, max_depth_m: float,
             no_stack: bool = False, limit: int | None = None, num_maps: int = 8) -> dict[str, Any]:
    """Run every model on every sample (batch 1: sizes may differ), accumulate DepthMetrics, write pictures.

    Returns {"metrics": {label: {metric: value}}, "num_samples", "seconds": {label: s}}.
    """
    from tqdm.auto import tqdm

    from bokeh.io import colorize_depth, image_grid, write_image
    from bokeh.metrics import DepthMetrics

    metrics = {label: DepthMetrics(min_depth_m=min_depth_m, max_depth_m=max_depth_m) for label in models}
    seconds = {label: 0.0 for label in models}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in tqdm(range(n), desc="evaluating", unit="sample"):
        sample = dataset[i]
        image = sample["image"][None]
        stack = sample.get("stack", sample.get("frames"))
        K = sample.get("K_px_m")
        if no_stack or stack is None or K is None:
            stack, K = None, None
        else:
            stack, K = stack[None], torch.as_tensor(K, dtype=torch.float32)[None]
        gt = sample["depth_m"][None]
        valid = sample.get("valid", gt > 0)[None].bool()
        preds = {}
        for label, module in models.items():
            t0 = time.perf_counter()
            pred = module(image, stack, K)
            seconds[label] += time.perf_counter() - t0
            if pred.shape[-2:] != gt.shape[-2:]:
                pred = torch.nn.functional.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
            metrics[label].update(pred, gt, valid, min_depth_m=min_depth_m, max_depth_m=max_depth_m)
            preds[label] = pred[0]
        if i < num_maps:
            name = str(sample.get("name", f"{i:05d}")).replace("/", "_").replace(" ", "_")
            gt_valid = gt[0][valid[0]]
            lo, hi = (float(gt_valid.quantile(0.02)), float(gt_valid.quantile(0.98))) if gt_valid.numel() else (None, None)
            row = [sample["image"]] + ([stack[0, -1]] if stack is not None else [])
            labels = ["RGB"] + (["stack[-1]"] if stack is not None else [])
            for label, pred in preds.items():
                picture = colorize_depth(pred, vmin=lo, vmax=hi)
                write_image(out_dir / "maps" / label / f"{name}.png", picture)
                row.append(picture)
                labels.append(label)
            row.append(colorize_depth(torch.where(valid[0], gt[0], torch.zeros_like(gt[0])), vmin=lo, vmax=hi))
            labels.append("GT")
            write_image(out_dir / "grids" / f"{name}.png", image_grid([row], labels=labels))
    results = {label: {k: float(v) for k, v in m.compute().items()} for label, m in metrics.items()}
    return {"metrics": results, "num_samples": n, "seconds": seconds}


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """Metrics as a Markdown table, one column per model; with 'base' and 'bokehdepth', a ratio column."""
    labels = list(results)
    keys = [k for k in METRIC_KEYS if all(k in results[lab] for lab in labels)]
    ratio = "base" in results and "bokehdepth" in results
    head = "| metric | " + " | ".join(labels) + (" | bokehdepth / base |" if ratio else " |")
    lines = [head, "|---|" + "---:|" * (len(labels) + int(ratio))]
    for k in keys:
        cells = [f"{results[lab][k]:.4f}" for lab in labels]
        if ratio:
            base = results["base"][k]
            cells.append(f"{results['bokehdepth'][k] / base:.3f}" if base else "nan")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bokeh.io import prepare_output_dir, write_json, write_text

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = load_models(args)
    dataset, data_name = build_dataset(args, models)
    lo, hi = _caps(args, dataset, models)
    if args.out:
        out = Path(args.out)
    elif args.run:
        out = Path(args.run) / (f"eval_{data_name}" + ("_nostack" if args.no_stack else ""))
    else:
        out = Path("runs") / "eval" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out = prepare_output_dir(out, overwrite=args.overwrite)
    result = evaluate(models, dataset, out, min_depth_m=lo, max_depth_m=hi, no_stack=args.no_stack, limit=args.limit,
                      num_maps=args.num_maps)
    table = markdown_table(result["metrics"])
    header = (f"Dataset: {data_name} ({result['num_samples']} samples, split {args.split}); depth caps {lo:g}-{hi:g} m; "
              f"stack {'off' if args.no_stack else 'on'}\n\n")
    result.update({"dataset": data_name, "caps_m": [lo, hi], "models": {k: m.source for k, m in models.items()},
                   "no_stack": args.no_stack, "markdown": header + table})
    write_json(out / "metrics.json", result)
    write_text(out / "metrics.md", header + table)
    print(header + table)
    print(f"wrote {out}/metrics.json, metrics.md, maps/, grids/")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
