#!/usr/bin/env python
"""Evaluate depth models on one or more datasets: per dataset one table of every way of getting depth, JSON, grids.

Rows per dataset (library: bokeh.evaluation.evaluate_variants; a row whose input is missing stays, "skipped: why"):
    base models (image only); each BokehDepth model "(control: no stack)" (equal to its stack rows: the model does not
    use its stack), "+ physics stack (ORACLE: rendered from GT depth)" (an upper bound), "+ Stage-1 stack" (--generator),
    "+ real aperture frames" (aperture-pair data); the closed-form depth-from-bokeh on each of those stacks.
Models (any number, labels unique; a BokehDepth model is one that uses its stack):
    --run runs/stage2/<stamp>            a fit.py run: its base/ -> "base", its bokehdepth/ -> "bokehdepth"
    --checkpoint [label=]path.ckpt       a Stage-2 checkpoint (its use_stack says base or BokehDepth)
    --model [label=]model.yaml           untrained, from a model config (e.g. a pretrained_path), BokehDepth
    --bokehdepth / --base [label=]RUN|CKPT        a run dir's bokehdepth/ (its base/ joins as "base") or base/, a .ckpt
    --bokehdepth-config / --base-config [label=]YAML   untrained models from a model config (smoke runs)
Datasets (repeat --config / --folder: one table each, in the order given; default: the first model's own data config
(its synthetic test split), else configs/data/synthetic.yaml):
    --config data/dfd_indoor.yaml        a data config (synthetic | manifest | aperture_pairs); a,b merges files
    --folder PATH [--size H W]           NYU / KITTI / generic RGB-D / DFD aperture-pair folder (bokeh.datasets)
    key=value ...                        overrides, each applied to every --config dataset that has the key
Stacks: --generator DIR|CKPT (Stage-1), --K 2 5 12 [--K-at-width 112] (physics / Stage-1 strengths, px*m; default:
    the dataset's own physics stack, else the first BokehDepth model's training K at its training width),
    --no-stack (base and control rows only), --no-dfd (no closed-form rows).
Outputs (--out, new or empty unless --overwrite; default <run>/eval_<datasets> or runs/eval/<stamp>): metrics.json
(per dataset its rows with all metrics, skip reasons, caps, K; the combined summary), metrics.md (the tables + the
summary), grids/<dataset>/<sample>.png (RGB | stacks | GT, each row's depth, each row's relative error) and
maps/<dataset>/<row>/<sample>.png (depth colour maps) for the first --num-maps samples. Exit code 2 on bad input.

    python tools/eval.py --run runs/stage2/<stamp> --generator runs/stage1/<stamp> \\
        --config data/synthetic.yaml --config data/dfd_indoor.yaml data.aperture_pairs.root=../shared/data/dfd_indoor
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401
from _cli import best_checkpoint as _best_checkpoint  # noqa: E402
from _cli import check_strengths, positive_int, run_reporting_errors  # noqa: E402
from _cli import run_or_checkpoint as _run_or_checkpoint  # noqa: E402

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_modules.config import ConfigError, apply_overrides, load_config, resolve_config_path


#: What eval.py does with key=value arguments (error messages say it).
OVERRIDES_ACCEPTED = ("tools/eval.py takes key=value overrides of its data configs only: keys under 'data.' that the "
                      "config has, e.g. data.synthetic.num_test=5 or data.aperture_pairs.root=PATH")


class _DatasetAction(argparse.Action):
    """Collect --config / --folder into one ordered list of (kind, value): one dataset each."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        datasets = list(getattr(namespace, self.dest) or [])
        datasets.append(("folder" if option_string == "--folder" else "config", values))
        setattr(namespace, self.dest, datasets)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("models")
    m.add_argument("--run", help="a fit.py run dir with base/ and bokehdepth/ (or a single-model run)")
    m.add_argument("--checkpoint", action="append", default=[], help="[label=]path to a Stage-2 .ckpt (repeatable)")
    m.add_argument("--model", action="append", default=[], help="[label=]model config (YAML with a model: section)")
    m.add_argument("--bokehdepth", action="append", default=[], help="[label=]run dir or .ckpt (repeatable)")
    m.add_argument("--base", action="append", default=[], help="[label=]run dir or .ckpt of a base model")
    m.add_argument("--bokehdepth-config", action="append", default=[], help="[label=]model YAML, untrained")
    m.add_argument("--base-config", action="append", default=[], help="[label=]model YAML, untrained, image only")
    d = p.add_argument_group("datasets")
    d.add_argument("--config", dest="datasets", action=_DatasetAction, default=[], metavar="CONFIG",
                   help="a data config, one table (repeatable; a.yaml,b.yaml merges files; bare names resolve in "
                        "configs/)")
    d.add_argument("--folder", dest="datasets", action=_DatasetAction, default=[], metavar="PATH",
                   help="an NYU / KITTI / generic RGB-D / DFD aperture-pair folder, one table (repeatable)")
    d.add_argument("--size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                   help="--folder: resize every sample (K and intrinsics follow), e.g. the models' training scale")
    d.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of --config datasets")
    d.add_argument("--manifest-stack", default="physics", choices=["physics", "stage1", "real"],
                   help="what a manifest's 'stack' frames are (make_stack.py manifests: stage1)")
    d.add_argument("--reference-f-number", type=float, default=8.0,
                   help="f-number of an aperture-pair reference photo (its own blur, for the closed-form baseline)")
    s = p.add_argument_group("stacks")
    s.add_argument("--generator", help="Stage-1 generator: run dir, generator.safetensors or a Stage-1 .ckpt")
    s.add_argument("--generator-steps", type=positive_int, default=None,
                   help="sampling steps, >= 1 (default: the generator's)")
    s.add_argument("--seed", type=int, default=0, help="Stage-1 sampling seed (sample i uses seed + i)")
    s.add_argument("--K", type=float, nargs="+", default=None, help="stack strengths, px*m (see --K-at-width)")
    s.add_argument("--K-at-width", type=float, default=None, help="width in px > 0 the --K values refer to (default: "
                                                                   "each image's)")
    s.add_argument("--no-stack", action="store_true", help="only the image-only rows: base and each BokehDepth "
                                                           "model's control (DSFA on the reference alone)")
    s.add_argument("--no-dfd", action="store_true", help="leave out the closed-form depth-from-bokeh rows")
    p.add_argument("--min-depth-m", type=float, default=None)
    p.add_argument("--max-depth-m", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples of each dataset")
    p.add_argument("--num-maps", "--num-grids", dest="num_maps", type=int, default=8,
                   help="grids and colour maps for the first N samples of each dataset")
    p.add_argument("--out", help="output folder (default: <run>/eval_<datasets> or runs/eval/<stamp>)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads, >= 1 (default: torch's; 1 is best on a busy machine)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the data configs, e.g. data.synthetic.num_test=5")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ input checks


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse missing paths and bad numbers before anything is loaded or written (errors name the option)."""
    from bokeh.io import check_output_dir

    for kind, value in args.datasets:
        if kind == "folder" and not Path(value).exists():
            raise FileNotFoundError(f"--folder {value} does not exist (expected an NYU / KITTI / generic RGB-D / "
                                    "DFD aperture-pair folder)")
        if kind == "config":
            for name in value.split(","):
                resolve_config_path(name)
    if args.generator and not Path(args.generator).exists():
        raise FileNotFoundError(f"--generator {args.generator} does not exist (expected a Stage-1 run dir, "
                                "generator.safetensors or a Stage-1 .ckpt)")
    if args.run and not Path(args.run).is_dir():
        raise FileNotFoundError(f"--run {args.run} is not a directory")
    check_strengths(args.K)
    if args.K_at_width is not None and not (math.isfinite(args.K_at_width) and args.K_at_width > 0):
        raise ValueError(f"--K-at-width must be a width in px > 0, got {args.K_at_width:g}")
    if args.size and min(args.size) < 8:
        raise ValueError(f"--size must be at least 8 8, got {args.size}")
    if args.overrides and not any(kind == "config" for kind, _ in args.datasets) and args.datasets:
        raise ConfigError(f"overrides {args.overrides} apply to data configs, but only --folder datasets are given")
    for item in args.overrides:
        key = item.split("=", 1)[0].strip().lstrip("+")
        if "=" in item and key.split(".")[0] != "data":
            raise ConfigError(f"override '{item}': {OVERRIDES_ACCEPTED}; '{key}' is not one (models, training and "
                              "trainer settings come from the checkpoints)")
    if args.out:  # a file, or a non-empty folder without --overwrite (the default --out is checked once named)
        check_output_dir(args.out, args.overwrite)


# ------------------------------------------------------------------------------------------------ models


def _split_label(text: str, default: str) -> tuple[str, str]:
    if "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        return label, path
    return default, text


def _load_checkpoint(path: Path) -> Any:
    from lightning_modules.stage2 import Stage2Module, check_stage2_checkpoint

    check_stage2_checkpoint(path)

    return Stage2Module.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)


def _build_from_config(path: Path, use_stack: bool) -> Any:
    from lightning_modules.stage2 import Stage2Module

    cfg = load_config([path])
    if "model" not in cfg:
        raise ConfigError(f"{path} has no 'model:' section")
    return Stage2Module({"model": OmegaConf.to_container(cfg.model, resolve=True), "use_stack": use_stack})


def load_models(args: argparse.Namespace) -> list[Any]:
    """ModelSpecs in the order given, each a Stage2Module in eval mode (the table lists base models first)."""
    from bokeh.evaluation import ModelSpec

    entries: list[tuple[str, Any, bool | None, str]] = []  # (label, module, role or None = its use_stack, source)
    if args.run:
        run = Path(args.run)
        subs = [d for d in ("base", "bokehdepth") if (run / d / "checkpoints").is_dir()]
        for d in subs:
            ckpt = _best_checkpoint(run / d)
            entries.append((d, _load_checkpoint(ckpt), None, str(ckpt)))
        if not subs:
            ckpt = _best_checkpoint(run)
            entries.append(("model", _load_checkpoint(ckpt), None, str(ckpt)))
    for i, text in enumerate(args.checkpoint):
        label, path = _split_label(text, f"ckpt{i}" if len(args.checkpoint) > 1 else "model")
        entries.append((label, _load_checkpoint(Path(path)), None, path))
    for i, text in enumerate(args.model):
        label, path = _split_label(text, f"config{i}" if len(args.model) > 1 else "base_config")
        entries.append((label, _build_from_config(Path(path), True), None, path))
    explicit_base = bool(args.base or args.base_config)
    for role, option, texts, default in ((False, "--base", args.base, "base"),
                                         (True, "--bokehdepth", args.bokehdepth, "BokehDepth")):
        for text in texts:
            label, path = _split_label(text, default)
            ckpt = _run_or_checkpoint(Path(path), "bokehdepth" if role else "base")
            module = _load_checkpoint(ckpt)
            if bool(module.use_stack) != role:
                what = "uses the stack" if module.use_stack else "is image-only (use_stack false)"
                raise ConfigError(f"{path} {what}: pass it as {'--bokehdepth' if module.use_stack else '--base'}")
            entries.append((label, module, role, str(ckpt)))
            run_base = Path(path) / "base" / "checkpoints"
            if role and not explicit_base and not args.run and run_base.is_dir():
                ckpt = _best_checkpoint(run_base.parent)
                entries.append(("base", _load_checkpoint(ckpt), False, str(ckpt)))
                explicit_base = True
    for role, texts, default in ((False, args.base_config, "base"), (True, args.bokehdepth_config, "BokehDepth")):
        for text in texts:
            label, path = _split_label(text, default)
            entries.append((label, _build_from_config(Path(path), role), role, path))
    if not entries:
        raise ConfigError("name at least one model: --run DIR, --checkpoint PATH, --model CONFIG, "
                          "--bokehdepth RUN|CKPT, --base RUN|CKPT or the *-config forms")
    labels = [e[0] for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"model labels must be unique, got {labels}; name them label=PATH")
    specs = []
    for label, module, role, source in entries:
        module.eval()
        module.source = source
        specs.append(ModelSpec(label, module, bool(module.use_stack) if role is None else role, source))
    return specs


# ------------------------------------------------------------------------------------------------ datasets


@dataclass
class Dataset:
    """One dataset to evaluate and what evaluate_variants needs to know about it."""

    name: str
    samples: Any
    origin: str  # the folder or config files it came from
    stack: str | None = None  # what the samples' ``stack`` key holds (bokeh.evaluation.stack_sources)
    reference_K_ratio: float = 0.0
    caps: tuple[float | None, float | None] = (None, None)
    skipped: list[Any] = field(default_factory=list)


def _routed_overrides(cfgs: list[Any], overrides: list[str]) -> list[list[str]]:
    """For each config, the overrides whose key it has ('+key' ones go to all); a key none has is a ConfigError
    (apply_overrides' message, with its 'did you mean')."""
    routed: list[list[str]] = [[] for _ in cfgs]
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        hits = [i for i, cfg in enumerate(cfgs) if key.startswith("+")
                or OmegaConf.select(cfg, key, default="\0missing") != "\0missing"]
        if not hits:
            _apply_data_override(cfgs[0].copy(), cfgs, item)  # raises, naming the key
        for i in hits:
            routed[i].append(item)
    return routed


def _apply_data_override(target: Any, cfgs: list[Any], item: str) -> None:
    """apply_overrides(target, [item]) in eval's terms: an unknown key is listed with eval's note instead of the
    advice on '+', and one whose section no config of ``cfgs`` has is named as such (:func:`_check_override_section`)."""
    try:
        apply_overrides(target, [item], unknown_key_note="tools/eval.py overrides only keys its data configs have")
    except ConfigError as error:
        if "unknown key '" in str(error):
            _check_override_section(cfgs, item)
        raise


def _check_override_section(cfgs: list[Any], item: str) -> None:
    """An unknown key whose section no data config of the call has is named as such, with what eval takes; a key
    missing from a section that exists is left to apply_overrides' message."""
    key = item.split("=", 1)[0].strip().lstrip("+")
    parent = key.rpartition(".")[0]
    if not any(isinstance(OmegaConf.select(cfg, parent, default=None), DictConfig) for cfg in cfgs):
        have = sorted({str(k) for cfg in cfgs for k in (cfg.get("data") or {}).keys()})
        raise ConfigError(f"override '{item}': no data config of this call has '{parent}' (keys under 'data': "
                          f"{have}); {OVERRIDES_ACCEPTED}")


def _check_aperture_pairs_root(data_cfg: Any, origin: str) -> None:
    """An aperture-pairs config whose index file is not where its root says: a FileNotFoundError naming the key to
    set (the configs' default root, ../shared/data/..., holds only from a clone beside the shared/ folder)."""
    if data_cfg.get("kind") != "aperture_pairs":
        return
    section = data_cfg.get("aperture_pairs") or {}
    root = section.get("root")
    index = Path(str(root)) / str(section.get("index") or "index.csv")
    if root is not None and index.is_file():
        return
    raise FileNotFoundError(f"aperture-pairs index {index} does not exist (data.aperture_pairs.root is {root!r}, from "
                            f"{origin}; a relative root is relative to the current directory, {Path.cwd()}); pass "
                            "data.aperture_pairs.root=PATH, the folder holding the dataset's index.csv")


def _datamodule_split(data_cfg: Any, split: str) -> tuple[Any, str]:
    from lightning_modules.data import build_datamodule

    kind = data_cfg.get("kind", "synthetic")
    dm = build_datamodule(data_cfg)
    dm.setup({"train": "fit", "val": "fit", "test": "test"}[split])
    if split not in dm.datasets:
        raise ConfigError(f"the data config has no '{split}' split")
    return dm.datasets[split], kind


def build_datasets(args: argparse.Namespace, specs: list[Any]) -> list[Dataset]:
    """Every dataset of the call, built before anything is evaluated or written (bad input fails first)."""
    configs = [v for k, v in args.datasets if k == "config"]
    cfgs = [load_config(v.split(",")) for v in configs]
    for cfg, value in zip(cfgs, configs):
        if "data" not in cfg:
            raise ConfigError(f"--config {value} has no 'data:' section")
    routed = iter(_routed_overrides(cfgs, args.overrides) if cfgs else [])
    cfg_iter = iter(cfgs)
    requests = list(args.datasets)
    if not requests:
        with_data = [s for s in specs if "data" in (getattr(s.model, "cfg", None) or {})]
        data_cfg = (OmegaConf.create(with_data[0].model.cfg["data"]) if with_data
                    else load_config(["data/synthetic.yaml"]).data)
        if args.overrides:
            wrapped = OmegaConf.create({"data": data_cfg})
            OmegaConf.set_struct(wrapped, True)
            for item in args.overrides:
                _apply_data_override(wrapped, [wrapped], item)
            data_cfg = wrapped.data
        requests = [("own", data_cfg)]
        own_origin = "the first model's data config" if with_data else "data/synthetic.yaml"
    datasets: list[Dataset] = []
    for kind, value in requests:
        if kind == "folder":
            from bokeh.datasets import open_dataset
            from bokeh.evaluation import ResizedDataset

            ds = open_dataset(value)
            if args.size:
                ds = ResizedDataset(ds, *args.size)
            datasets.append(Dataset(Path(value).name, ds, str(value), None, 0.0,
                                    (ds.min_depth_m, ds.max_depth_m), list(getattr(ds, "skipped", []))))
            continue
        if kind == "config":
            cfg = apply_overrides(next(cfg_iter), next(routed))
            data_cfg, name, origin = cfg.data, Path(value.split(",")[-1]).stem, value
        else:
            data_cfg = value
            name = f"{data_cfg.get('kind', 'synthetic')}_{args.split}"
            origin = own_origin
        _check_aperture_pairs_root(data_cfg, origin)
        ds, data_kind = _datamodule_split(data_cfg, args.split)
        stack = {"synthetic": "physics", "manifest": args.manifest_stack, "aperture_pairs": "real"}[data_kind]
        ratio = float(ds.f_numbers[0]) / float(args.reference_f_number) if data_kind == "aperture_pairs" else 0.0
        datasets.append(Dataset(name, ds, origin, stack, ratio,
                                (getattr(ds, "min_depth_m", None), getattr(ds, "max_depth_m", None))))
    seen: dict[str, int] = {}
    for d in datasets:  # unique names: they are folder names under grids/ and maps/
        seen[d.name] = seen.get(d.name, 0) + 1
        if seen[d.name] > 1:
            d.name = f"{d.name}_{seen[d.name]}"
    return datasets


def default_K(args: argparse.Namespace, specs: list[Any], dataset: Dataset) -> tuple[list[float] | None, float | None]:
    """Physics / Stage-1 strengths and the width they refer to: --K; else the dataset's own physics stack (None);
    else the first BokehDepth model's training strengths at its training width (None if unknown)."""
    if args.K is not None:
        return list(args.K), args.K_at_width
    if dataset.stack == "physics":
        return None, None
    for spec in specs:
        cfg = getattr(spec.model, "cfg", None) or {}
        syn = ((cfg.get("data") or {}).get("synthetic") or {}) if spec.uses_stack else {}
        if syn.get("K_px_m") and syn.get("width"):
            return [float(k) for k in syn["K_px_m"]], float(syn["width"])
    return None, None


def caps(args: argparse.Namespace, dataset: Dataset, specs: list[Any]) -> tuple[float, float]:
    """Evaluation depth caps (m): the options, else the dataset's, else the first model's."""
    first = specs[0].model
    lo = args.min_depth_m if args.min_depth_m is not None else dataset.caps[0]
    hi = args.max_depth_m if args.max_depth_m is not None else dataset.caps[1]
    lo = first.min_depth_m if lo is None else lo
    hi = first.max_depth_m if hi is None or not math.isfinite(hi) else hi
    return max(float(lo), 1e-3), float(hi)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate; returns {"datasets": [per-dataset results], "summary", "models", ...} (also metrics.json)."""
    from bokeh.io import output_dir

    args = parse_args(argv)
    check_inputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = load_models(args)
    datasets = build_datasets(args, specs)
    generator, gen_meta = None, None
    if args.generator and not args.no_stack:
        from lightning_modules.stage1 import load_generator

        generator, gen_meta = load_generator(args.generator)
    if args.out:
        out = Path(args.out)
    elif args.run:
        out = Path(args.run) / ("eval_" + "_".join(d.name for d in datasets) + ("_nostack" if args.no_stack else ""))
    else:
        out = Path("runs") / "eval" / datetime.now().strftime("%Y%m%d-%H%M%S")
    with output_dir(out, overwrite=args.overwrite) as out:  # a failure restores what --out held before
        output = _evaluate(args, argv, specs, datasets, generator, gen_meta, out)
    print("\nSummary (AbsRel, / base per dataset)\n" + output["summary"])
    print(f"wrote {out}/metrics.json, metrics.md, grids/<dataset>/, maps/<dataset>/")
    return output


class _GTCounter:
    """The dataset as evaluate_variants reads it, counting valid and invalid ground-truth pixels on the way."""

    def __init__(self, samples: Any) -> None:
        self.samples, self.seen, self.total, self.invalid = samples, set(), 0, 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        sample = self.samples[index]
        if index not in self.seen:
            self.seen.add(index)
            gt = sample["depth_m"]
            valid = sample.get("valid", gt > 0).bool() & torch.isfinite(gt) & (gt > 0)
            self.total += int(gt.numel())
            self.invalid += int(gt.numel() - valid.sum())
        return sample

    def __getattr__(self, name: str) -> Any:
        return getattr(self.samples, name)

    def counts(self) -> dict[str, int]:
        return {"total": self.total, "invalid": self.invalid, "samples": len(self.seen)}


def _evaluate(args: argparse.Namespace, argv: list[str] | None, specs: list[Any], datasets: list[Dataset],
              generator: Any, gen_meta: Any, out: Path) -> dict[str, Any]:
    """Every dataset's table, grids and maps in ``out``, then metrics.json and metrics.md; returns the output."""
    from bokeh.evaluation import evaluate_variants, markdown_table, print_table, summary_markdown
    from bokeh.io import write_json, write_text

    sections = []
    for d in datasets:
        lo, hi = caps(args, d, specs)
        K, K_width = default_K(args, specs, d)
        counted = _GTCounter(d.samples)
        result = evaluate_variants(
            counted, specs, grid_dir=out / "grids" / d.name, map_dir=out / "maps" / d.name, generator=generator,
            generator_focus_m=(gen_meta or {}).get("focus_m"),
            stack_K_px_m=K, K_at_width=K_width, dataset_stack=d.stack, reference_K_ratio=d.reference_K_ratio,
            min_depth_m=lo, max_depth_m=hi, dfd=not args.no_dfd, sources=() if args.no_stack else
            ("physics", "stage1", "real"), generator_steps=args.generator_steps, limit=args.limit,
            num_grids=args.num_maps, seed=args.seed,
        )
        title = (f"{d.name}: {result['num_samples']} samples ({d.origin}, split {args.split}), caps {lo:g}-{hi:g} m"
                 + (", no stack" if args.no_stack else ""))
        result = {"dataset": d.name, "title": title, "origin": d.origin, **result,
                  "skipped_samples": d.skipped, "gt_pixels": counted.counts()}
        if counted.invalid:  # 0 / NaN / inf GT is the datasets' "no measurement"; say how much of it there is
            print(f"note: {d.name}: {counted.invalid} of {counted.total} ground-truth pixels are invalid (0, NaN or "
                  f"inf; excluded from every metric) in {len(counted.seen)} samples")
        print_table(result, title=title)
        sections.append(result)
    summary = summary_markdown(sections)
    markdown = "\n".join(markdown_table(s, title=s["title"]) for s in sections)
    markdown += "\n**Summary** (AbsRel, and its ratio to each dataset's base row)\n\n" + summary
    output = {"datasets": sections, "summary": summary,
              "models": {s.label: {"source": s.source, "uses_stack": s.uses_stack} for s in specs},
              "generator": args.generator, "generator_meta": gen_meta, "no_stack": args.no_stack,
              "split": args.split, "argv": list(argv) if argv is not None else sys.argv[1:], "markdown": markdown}
    write_json(out / "metrics.json", output)
    write_text(out / "metrics.md", markdown)
    return output


def cli(argv: list[str] | None = None) -> int:
    """main() with bad input reported as one 'error: ...' line on stderr and exit code 2."""
    return run_reporting_errors(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
