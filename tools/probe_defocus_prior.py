#!/usr/bin/env python
"""How well can a Stage-1 network infer the defocus map from the sharp image alone? (the K-calibration ceiling)

    python tools/probe_defocus_prior.py --config configs/stage1.yaml --out runs/probe_default
    python tools/probe_defocus_prior.py --config configs/stage1.yaml --steps 3000 --num-train 3000 --out runs/probe_3k
    python tools/probe_defocus_prior.py --config configs/stage1.yaml --out runs/probe_wide \\
        "model.compact.unet.block_out_channels=[48, 96, 192]"       # key=value overrides, as tools/fit.py

The layered Stage-1 generator renders the sharp image with physics at radius K * delta, delta its depth-free
defocus map (1/m), so its K-calibration error is the per-scene scale error of that map. This probe trains the
config's own UNet (``model.compact``, layered and K-free) as a deterministic regressor from the sharp image (the
diffusion state fixed at zero, t = 1: nothing but the image goes in) to the true defocus map of the config's
synthetic scenes (``data.synthetic``: scene options, focus), L1 in 1/m, AdamW with the config's learning rate and
the Stage-1 schedule (warm-up, cosine); no rendering, about 3x cheaper per step than a Stage-1 fit. It reports on
held-out scenes (the Stage-1 test split): the map's MAE (1/m), the per-scene scale error |log(mean predicted / mean true)| (a scale
error e in log is a K error of about e), the mean ratio, and the Pearson correlation. Outputs in --out (atomic):

    probe.json   settings, the held-out figures and their curve over training steps
    probe.png    held-out scenes: image | true map | predicted map (one grey scale per scene)

Plain PyTorch loop (no Lightning): a diagnostic, not a model anyone keeps.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _bootstrap  # noqa: F401
from _cli import check_out_folder, config_errors_exit

import torch  # noqa: E402

from bokeh.io import output_dir  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/stage1.yaml", help="a Stage-1 config (layered, K-free compact head)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, as tools/fit.py")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--steps", type=int, default=1280, help="optimiser steps (default 1280, the Stage-1 default's)")
    p.add_argument("--num-train", type=int, default=None, help="training scenes (default data.synthetic.num_train)")
    p.add_argument("--num-test", type=int, default=64, help="held-out scenes (Stage-1 test split)")
    p.add_argument("--batch-size", type=int, default=None, help="default data.batch_size")
    p.add_argument("--eval-every", type=int, default=200, help="steps between held-out evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "num_test", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("num_train", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_out_folder(p, args.out, args.overwrite)  # before any config, scene or training work
    return args


def scale_figures(pred_inv_m: torch.Tensor, true_inv_m: torch.Tensor) -> dict[str, float]:
    """Held-out figures of maps [N,1,H,W] (1/m): MAE, mean |log(per-scene mean ratio)|, mean |ratio - 1| (the
    held-out figure of tools/probe_cue_oracle.py), mean ratio, Pearson r."""
    pred, true = pred_inv_m.double().flatten(1), true_inv_m.double().flatten(1)
    ratio = pred.mean(1) / true.mean(1).clamp_min(1e-12)
    stacked = torch.stack([pred.flatten(), true.flatten()])
    return {"mae_inv_m": float((pred - true).abs().mean()),
            "scale_log_err": float(ratio.clamp_min(1e-12).log().abs().mean()),
            "scale_abs_err": float((ratio - 1.0).abs().mean()),
            "mean_ratio": float(ratio.mean()),
            "corr": float(torch.corrcoef(stacked)[0, 1]) if float(true.std()) > 0 and float(pred.std()) > 0 else 0.0}


def build_probe(cfg: Any):
    """The config's compact network (layered, K-free), freshly initialised, and the map's target function."""
    from bokeh.generation import KRange
    from lightning_modules.config import ConfigError
    from lightning_modules.stage1 import build_generator, true_defocus_inv_m

    if cfg.model.get("kind", "compact") != "compact":
        raise ConfigError(f"the probe needs model.kind=compact; got {cfg.model.kind!r}")
    gen = build_generator(cfg.model, KRange(float(cfg.k.min), float(cfg.k.max)), resolution=int(cfg.data.width))
    net = gen.net
    if net.head != "layered" or not net.defocus_k_free:
        raise ConfigError("the probe needs model.compact.head=layered and model.compact.defocus_k_free=true (one "
                          "depth-free map for every K, as the default generator)")

    def target(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return true_defocus_inv_m(batch["depth_m"], batch["focus_m"], net.defocus_sign, net.defocus_max_inv_m)

    return net, target


class _Cached(torch.utils.data.Dataset):
    """A dataset's items kept after their first use: a scene costs more to draw than a probe step (64 px, 3,000
    scenes ~ 200 MB)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset, self.items = dataset, {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]


def run(args: argparse.Namespace, out: Any) -> dict[str, Any]:
    """The probe, writing into ``out`` (main's bokeh.io.output_dir: a failure leaves no half-written folder)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from bokeh.io import image_grid, write_image, write_json
    from lightning_modules.config import ConfigError, load_config
    from lightning_modules.schedules import warmup_cosine
    from lightning_modules.stage1_data import config_synthetic_splits

    cfg = load_config([args.config], args.overrides)
    num_train = int(args.num_train or (cfg.data.get("synthetic") or {}).get("num_train", 0))
    # a bad scene option or a non-synthetic config fails here, before anything is written
    splits = config_synthetic_splits(cfg, {"train": num_train, "test": args.num_test}, "the probe")
    train, test = splits["train"], splits["test"]
    torch.manual_seed(args.seed)
    net, target = build_probe(cfg)
    batch_size = int(args.batch_size or cfg.data.batch_size)
    if num_train < batch_size:  # whole batches only: fewer scenes than one batch would never yield a step
        raise ConfigError(f"the probe needs at least one batch of training scenes: --num-train {num_train} < batch "
                          f"size {batch_size} (--batch-size or data.batch_size)")
    test_batch = next(iter(DataLoader(test, batch_size=args.num_test)))
    test_true = target(test_batch)

    def predict(images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        return net.defocus_map(torch.zeros_like(images), torch.ones(b), images)

    def evaluate(step: int) -> tuple[dict[str, float], torch.Tensor]:
        net.eval()
        with torch.no_grad():
            pred = torch.cat([predict(chunk) for chunk in test_batch["image"].split(16)])
        net.train()
        return dict(step=step, **scale_figures(pred, test_true)), pred

    optim = cfg.optim
    opt = torch.optim.AdamW(net.parameters(), lr=float(optim.lr), betas=tuple(optim.betas),
                            weight_decay=float(optim.weight_decay))
    # the Stage-1 module's schedule over this probe's steps
    schedule = warmup_cosine(args.steps, int(optim.warmup_steps), float(optim.min_lr_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    loader = DataLoader(_Cached(train), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed), num_workers=0)
    curve, start, step = [evaluate(0)[0]], time.time(), 0
    bar = tqdm(total=args.steps, desc="probe", unit="step")
    while step < args.steps:
        for batch in loader:
            loss = (predict(batch["image"]) - target(batch)).abs().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), float(cfg.trainer.get("gradient_clip_val") or 1.0))
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(l1=f"{loss.item():.3f}")
            if step % args.eval_every == 0 and step < args.steps:
                curve.append(evaluate(step)[0])
            if step >= args.steps:
                break
    bar.close()
    final, pred = evaluate(step)
    curve.append(final)
    seconds = time.time() - start
    rows = []
    for i in range(min(6, args.num_test)):  # one grey scale per scene: the larger of both maps' maxima
        top = float(torch.maximum(test_true[i].max(), pred[i].max()).clamp_min(1e-6))
        rows.append([test_batch["image"][i], (test_true[i] / top).expand(3, -1, -1),
                     (pred[i] / top).clamp(0, 1).expand(3, -1, -1)])
    write_image(out / "probe.png", image_grid(rows, labels=["image", "true defocus", "predicted"]))
    result = {"config": args.config, "overrides": list(args.overrides), "steps": step, "num_train": num_train,
              "num_test": args.num_test, "batch_size": batch_size, "seed": args.seed, "seconds": seconds,
              "parameters": sum(p.numel() for p in net.parameters()), "final": final, "curve": curve,
              "notes": "held-out = the Stage-1 test split; scale_log_err = mean over scenes of |log(mean pred / mean "
                       "true)|, the K error (in log) a generator rendering this map would carry; scale_abs_err = mean |mean pred / "
                       "mean true - 1|, as probe_cue_oracle's held-out figure"}
    write_json(out / "probe.json", result)
    print(f"probe: {step} steps on {num_train} scenes in {seconds:.0f} s; held-out ({args.num_test} scenes): MAE "
          f"{final['mae_inv_m']:.3f} 1/m, scale |log ratio| {final['scale_log_err']:.3f}, |ratio - 1| "
          f"{final['scale_abs_err']:.3f}, mean ratio "
          f"{final['mean_ratio']:.2f}, corr {final['corr']:.2f} (start: MAE {curve[0]['mae_inv_m']:.3f}, scale "
          f"{curve[0]['scale_log_err']:.3f}); wrote {out / 'probe.json'} and {out / 'probe.png'}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with config_errors_exit(), output_dir(args.out, overwrite=args.overwrite) as out:
        return run(args, out)


if __name__ == "__main__":
    main()
