#!/usr/bin/env python
"""One dataset, one table: base vs BokehDepth fed by physics (ORACLE) / Stage-1 / real stacks vs closed-form DfB.

Models:
    --bokehdepth [label=]RUN|CKPT   a fit.py run dir (its bokehdepth/ model; its base/ model joins as 'base')
                                     or a Stage-2 .ckpt (repeatable: e.g. physics-trained and generated-trained)
    --base [label=]RUN|CKPT          the base model (image only); default: the base/ of a --bokehdepth run dir
    --bokehdepth-config / --base-config [label=]YAML   untrained models built from a model config (smoke runs)
Stacks:
    --generator DIR|CKPT             a Stage-1 generator (tools/make_stack.py's --generator); no generator: skipped
    --K 3 6 10 [--K-at-width 112]    physics / Stage-1 strengths (px*m); default: the dataset's own physics stack,
                                     else the first BokehDepth model's training strengths at its training width
Datasets (default: the synthetic test split of the first model's data config):
    --config data/dfd_indoor.yaml [overrides]   a Stage-2 data config (synthetic | manifest | aperture_pairs)
    --folder PATH [--size H W]                   NYU / KITTI / generic RGB-D / DFD pairs (bokeh.datasets readers),
                                                 optionally resized (K and intrinsics follow)
Outputs (--out, new or empty unless --overwrite): variants.json, variants.md, grids/<sample>.png
(RGB | stacks | GT, then each variant's depth, then each variant's relative error).

    python tools/eval_variants.py --bokehdepth runs/stage2/<stamp> --generator runs/stage1/<stamp> --out runs/variants
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bokehdepth_guard import require_bokehdepth  # noqa: E402

require_bokehdepth()

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from lightning_modules.config import ConfigError, load_config  # noqa: E402


def _eval_tool() -> Any:
    """tools/eval.py as a module (its checkpoint loaders are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("bokehdepth_tools_eval", Path(__file__).with_name("eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bokehdepth", action="append", default=[], help="[label=]run dir or .ckpt (repeatable)")
    p.add_argument("--base", action="append", default=[], help="[label=]run dir or .ckpt of a base model")
    p.add_argument("--bokehdepth-config", action="append", default=[], help="[label=]model YAML, untrained")
    p.add_argument("--base-config", action="append", default=[], help="[label=]model YAML, untrained, image only")
    p.add_argument("--generator", help="Stage-1 generator: run dir, generator.safetensors or a Stage-1 .ckpt")
    p.add_argument("--generator-steps", type=int, default=None, help="sampling steps (default: the generator's)")
    p.add_argument("--K", type=float, nargs="+", default=None, help="stack strengths, px*m (see --K-at-width)")
    p.add_argument("--K-at-width", type=float, default=None, 
                   help="width the --K values refer to (default: each image's)")
    p.add_argument("--config", action="append", default=[], help="data config(s) (bare names resolve in configs/)")
    p.add_argument("--folder", help="an NYU / KITTI / generic RGB-D / DFD aperture-pair folder (bokeh.datasets)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                   help="--folder: resize every sample (K and intrinsics follow), e.g. the models' training scale")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--manifest-stack", default="physics", choices=["physics", "stage1", "real"],
                   help="what a manifest's 'stack' frames are (make_stack.py manifests: stage1)")
    p.add_argument("--reference-f-number", type=float, default=8.0,
                   help="f-number of an aperture-pair reference photo (its own blur, for the closed-form baseline)")
    p.add_argument("--no-dfd", action="store_true", help="leave out the closed-form depth-from-bokeh rows")
    p.add_argument("--min-depth-m", type=float, default=None)
    p.add_argument("--max-depth-m", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples")
    p.add_argument("--num-grids", type=int, default=8, help="PNG grids for the first N samples")
    p.add_argument("--out", help="output folder (default runs/variants/<stamp>)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a busy machine)")
    p.add_argument("--seed", type=int, default=0, help="Stage-1 sampling seed (sample i uses seed + i)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the data config")
    return p.parse_args(argv)


def _load(label: str, path: str, kind: str, uses_stack: bool | None) -> Any:
    """A Stage2Module from a run dir (its bokehdepth/ or base/ model), a .ckpt or a model YAML, in eval mode."""
    ev = _eval_tool()
    args = argparse.Namespace(run=None, checkpoint=[], model=[])
    p = Path(path)
    if kind == "config":
        args.model = [str(p)]
    elif p.is_dir():
        sub = "base" if uses_stack is False else "bokehdepth"
        if (p / sub / "checkpoints").is_dir():
            args.checkpoint = [str(ev._best_checkpoint(p / sub))]
        else:
            args.checkpoint = [str(ev._best_checkpoint(p))]
    else:
        args.checkpoint = [str(p)]
    module = next(iter(ev.load_models(args).values()))
    if uses_stack is not None and kind == "config":
        module.use_stack = uses_stack
    return module


def load_models(args: argparse.Namespace) -> list[Any]:
    """ModelSpecs: base model(s) first, then BokehDepth model(s)."""
    from bokeh.evaluation import ModelSpec

    ev = _eval_tool()
    specs: list[ModelSpec] = []
    bases: list[tuple[str, str, str]] = []
    for text in args.base:
        label, path = ev._split_label(text, "base")
        bases.append((label, path, "ckpt"))
    for text in args.base_config:
        label, path = ev._split_label(text, "base")
        bases.append((label, path, "config"))
    stacked: list[tuple[str, str, str]] = []
    for text in args.bokehdepth:
        label, path = ev._split_label(text, "BokehDepth")
        stacked.append((label, path, "ckpt"))
        if not bases and Path(path).is_dir() and (Path(path) / "base" / "checkpoints").is_dir():
            bases.append(("base", path, "ckpt"))
    for text in args.bokehdepth_config:
        label, path = ev._split_label(text, "BokehDepth")
        stacked.append((label, path, "config"))
    if not bases and not stacked:
        raise ConfigError("name at least one model: --bokehdepth RUN|CKPT, --base RUN|CKPT or the *-config forms")
    labels = [b[0] for b in bases] + [s[0] for s in stacked]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"model labels must be unique, got {labels}; name them label=PATH")
    for role, group in ((False, bases), (True, stacked)):
        for label, path, kind in group:
            if kind == "ckpt" and not Path(path).exists():
                raise FileNotFoundError(f"{'base' if not role else 'BokehDepth'} model {path} does not exist")
            module = _load(label, path, kind, role)
            if kind == "ckpt" and bool(module.use_stack) != role:
                what = "uses the stack" if module.use_stack else "is image-only (use_stack false)"
                raise ConfigError(f"{path} {what}: pass it as {'--bokehdepth' if module.use_stack else '--base'}")
            specs.append(ModelSpec(label, module, role, str(getattr(module, "source", path))))
    return specs


def build_dataset(args: argparse.Namespace, specs: list[Any]) -> tuple[Any, str, dict[str, Any]]:
    """(dataset, name, settings {dataset_stack, reference_K_ratio, caps}) from --folder / --config / a model's cfg."""
    if args.folder:
        from bokeh.datasets import open_dataset

        ds = open_dataset(args.folder)
        if args.size:
            from bokeh.evaluation import ResizedDataset

            ds = ResizedDataset(ds, *args.size)
        return ds, Path(args.folder).name, {"dataset_stack": None, "reference_K_ratio": 0.0,
                                            "caps": (ds.min_depth_m, ds.max_depth_m), "skipped": ds.skipped}
    from lightning_modules.data import build_datamodule

    if args.config:
        cfg = load_config(args.config, args.overrides)
        if "data" not in cfg:
            raise ConfigError(f"--config {args.config} has no 'data:' section")
        data_cfg = cfg.data
        name = Path(args.config[-1]).stem
    else:
        with_data = [s for s in specs if "data" in (getattr(s.model, "cfg", None) or {})]
        if with_data:
            data_cfg = OmegaConf.create(with_data[0].model.cfg["data"])
        else:
            data_cfg = load_config(["data/synthetic.yaml"]).data
        if args.overrides:
            from lightning_modules.config import apply_overrides

            wrapped = OmegaConf.create({"data": data_cfg})
            OmegaConf.set_struct(wrapped, True)
            data_cfg = apply_overrides(wrapped, args.overrides).data
        name = f"{data_cfg.get('kind', 'synthetic')}_{args.split}"
    kind = data_cfg.get("kind", "synthetic")
    dm = build_datamodule(data_cfg)
    dm.setup({"train": "fit", "val": "fit", "test": "test"}[args.split])
    if args.split not in dm.datasets:
        raise ConfigError(f"the data config has no '{args.split}' split")
    ds = dm.datasets[args.split]
    settings: dict[str, Any] = {"dataset_stack": {"synthetic": "physics", "manifest": args.manifest_stack,
                                                  "aperture_pairs": "real"}[kind], "reference_K_ratio": 0.0,
                                "caps": (getattr(ds, "min_depth_m", None), getattr(ds, "max_depth_m", None))}
    if kind == "aperture_pairs":
        settings["reference_K_ratio"] = float(ds.f_numbers[0]) / float(args.reference_f_number)
    return ds, name, settings


def default_K(args: argparse.Namespace, specs: list[Any]) -> tuple[list[float] | None, float | None]:
    """--K, else the first BokehDepth model's training strengths at its training width (None if unknown)."""
    if args.K is not None:
        return list(args.K), args.K_at_width
    for spec in specs:
        cfg = getattr(spec.model, "cfg", None) or {}
        syn = ((cfg.get("data") or {}).get("synthetic") or {}) if spec.uses_stack else {}
        if syn.get("K_px_m") and syn.get("width"):
            return [float(k) for k in syn["K_px_m"]], float(syn["width"])
    return None, None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bokeh.evaluation import evaluate_variants, markdown_table, print_table
    from bokeh.io import prepare_output_dir, write_json, write_text

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path("runs") / "variants" / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite or another --out")
    specs = load_models(args)
    dataset, name, settings = build_dataset(args, specs)
    generator, gen_meta = None, None
    if args.generator:
        from lightning_modules.stage1 import load_generator

        generator, gen_meta = load_generator(args.generator)
    K, K_width = default_K(args, specs)
    if settings["dataset_stack"] == "physics" and args.K is None:
        K, K_width = None, None  # the dataset's own physics strengths drive both physics and Stage-1 stacks
    first_model = specs[0].model
    lo = args.min_depth_m if args.min_depth_m is not None else (settings["caps"][0] or first_model.min_depth_m)
    hi = args.max_depth_m if args.max_depth_m is not None else (settings["caps"][1] or first_model.max_depth_m)
    if not math.isfinite(hi):
        hi = first_model.max_depth_m
    lo = max(float(lo), 1e-3)
    out = prepare_output_dir(out, overwrite=args.overwrite)
    result = evaluate_variants(
        dataset, specs, out_dir=out, generator=generator, stack_K_px_m=K, K_at_width=K_width,
        dataset_stack=settings["dataset_stack"], reference_K_ratio=settings["reference_K_ratio"],
        min_depth_m=lo, max_depth_m=float(hi), dfd=not args.no_dfd, generator_steps=args.generator_steps,
        limit=args.limit, num_grids=args.num_grids, seed=args.seed,
    )
    title = f"{name}: {result['num_samples']} samples, caps {lo:g}-{float(hi):g} m"
    result.update({"dataset": name, "title": title, "generator": args.generator, "generator_meta": gen_meta,
                   "argv": list(argv) if argv is not None else sys.argv[1:],
                   "skipped_samples": settings.get("skipped", [])})
    table = markdown_table(result, title=title)
    write_json(out / "variants.json", result)
    write_text(out / "variants.md", table)
    print_table(result, title=title)
    print(f"wrote {out}/variants.json, variants.md, grids/")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
