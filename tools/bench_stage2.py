#!/usr/bin/env python
"""Stage-2 cost: parameters and forward latency of a base depth model vs the same model with DSFA, N = 1, 3, 5 frames.

    python tools/bench_stage2.py [--sizes tiny small] [--frames 1 3 5] [--repeats 7] [--defocus-cue] [--out F.json]

Definitions (all timings: median over ``--repeats`` interleaved runs, batch 1, eval mode, no_grad, 2 threads):
  * params ratio      = DSFA parameters / encoder parameters (the ViT backbone).           goal <= 0.15
  * T_base            = base model on the reference alone (one encoder pass + decoder).
  * T_stack(N)        = the unavoidable cost of using a stack: encoder on the N+1 frames (one batched pass) + decoder
                        on the reference, with no fusion.
  * T_dsfa(N)         = the model with DSFA on (reference, N frames, K).
  * DSFA overhead(N)  = T_dsfa(N) / T_stack(N) - 1: latency DSFA adds beyond the (N+1) encoder passes. goal <= 0.10
                        (median wall time; also the fastest run, and process CPU time in the JSON)
  * total ratio(N)    = T_dsfa(N) / T_base: what the stack costs in all (~ N+1 for a decoder-light model).
  * FLOP overhead(N)  = the DSFA overhead in FLOPs counted by torch.utils.flop_counter (load-independent; on a
                        shared or busy machine this is the reliable figure, the timings are noisy).
Models have random weights (latency and size do not depend on them). "small" is Depth Anything V2-Small
(24.8 M parameters) at 252 x 252; "tiny" is the default test model at 112 x 112.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import _bootstrap  # noqa: F401
from _cli import check_out_file, run_reporting_errors  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402


from bokeh.depth import build_depth_model  # noqa: E402
from bokeh.io import write_json  # noqa: E402

SIZES = {"tiny": 112, "small": 252, "base": 252, "large": 252}  # input side (px), Depth Anything (multiples of 14)
DPT_SIZES = {"tiny": 128, "small": 256, "large": 256}  # DPT: multiples of 32


def _median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, bar: tqdm) -> dict[str, dict[str, float]]:
    """Median wall and process-CPU seconds of each function, runs interleaved (a, b, c, a, b, c, ...) so that load
    drift hits all alike. CPU time (all threads of this process) does not count time spent descheduled, so on a
    shared machine it is the steadier of the two."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
            bar.update(1)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k]), "min": min(wall[k])} for k in fns}


def _flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call (matmuls, convolutions, attention), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_size(size: str, family: str, frames: list[int], repeats: int, warmup: int, dsfa_cfg: dict, bar: tqdm) -> dict:
    """Parameters, FLOPs and latencies of one model size (see the module docstring)."""
    torch.manual_seed(0)
    model = build_depth_model({"family": family, "size": size, "dsfa": dsfa_cfg}).eval()
    base = build_depth_model({"family": family, "size": size, "dsfa": {"enabled": False}}).eval()
    base.load_state_dict(model.state_dict(), strict=False)
    side = (DPT_SIZES if family == "dpt" else SIZES)[size]
    bb = model.backbone
    n_encoder = sum(p.numel() for m in bb.encoder_modules() for p in m.parameters())
    n_decoder = sum(p.numel() for m in bb.decoder_modules() for p in m.parameters())
    n_dsfa = sum(p.numel() for p in model.dsfa.parameters())  # the defocus cue, when on, has no parameters
    image = torch.rand(1, 3, side, side)
    grid = side // bb.patch_size
    result = {
        "size": size, "family": family, "input": [side, side], "dsfa": dsfa_cfg,
        "params": {"encoder": n_encoder, "decoder": n_decoder, "base_total": n_encoder + n_decoder,
                   "dsfa": n_dsfa, "dsfa_blocks": len(model.dsfa), "dsfa_over_encoder": n_dsfa / n_encoder},
        "frames": {},
    }
    with torch.no_grad():
        for n in frames:
            stack = torch.rand(1, n, 3, side, side)
            K = torch.linspace(10.0, 30.0, n).view(1, n)
            pixels = model.normalise(torch.cat([image, stack[0]], 0))

            def stack_only(pixels=pixels):
                taps = bb.encode(pixels)
                return bb.decode([t[:1] for t in taps], grid, grid)

            fns = {"base": lambda: base(image), "stack": stack_only,
                   "dsfa": lambda stack=stack, K=K: model(image, stack, K)}
            flops = {k: _flops(fn) for k, fn in fns.items()}
            t = _median_times(fns, repeats, warmup, bar)
            result["frames"][str(n)] = {
                "T_base_s": t["base"]["wall"], "T_stack_s": t["stack"]["wall"], "T_dsfa_s": t["dsfa"]["wall"],
                "dsfa_overhead": t["dsfa"]["wall"] / t["stack"]["wall"] - 1.0,
                "total_ratio": t["dsfa"]["wall"] / t["base"]["wall"],
                "cpu_base_s": t["base"]["cpu"], "cpu_stack_s": t["stack"]["cpu"], "cpu_dsfa_s": t["dsfa"]["cpu"],
                "dsfa_overhead_cpu": t["dsfa"]["cpu"] / t["stack"]["cpu"] - 1.0,
                "min_base_s": t["base"]["min"], "min_stack_s": t["stack"]["min"], "min_dsfa_s": t["dsfa"]["min"],
                "dsfa_overhead_min": t["dsfa"]["min"] / t["stack"]["min"] - 1.0,
                "flops_base": flops["base"], "flops_stack": flops["stack"], "flops_dsfa": flops["dsfa"],
                "dsfa_flops_overhead": flops["dsfa"] / flops["stack"] - 1.0,
            }
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    parser.add_argument("--family", default="depth_anything_v2", choices=["depth_anything_v2", "dpt"])
    parser.add_argument("--frames", nargs="+", type=int, default=[1, 3, 5])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--placement", default="posthoc", choices=["posthoc", "inside"])
    parser.add_argument("--mlp-ratio", type=float, default=1.0)
    parser.add_argument("--attn-ratio", type=float, default=0.5)
    parser.add_argument("--taps", nargs="+", type=int, default=[-2, -1])
    parser.add_argument("--no-spatial", action="store_true", help="DSFA without the per-frame spatial step")
    parser.add_argument("--defocus-cue", action="store_true", help="with the pixel defocus cue (dsfa.defocus_cue)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (written atomically)")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.frames) or args.repeats < 1 or args.threads < 1 or args.warmup < 0:
        parser.error(f"--frames, --repeats and --threads must be >= 1 and --warmup >= 0; got --frames "
                     f"{' '.join(map(str, args.frames))}, --repeats {args.repeats}, --threads {args.threads}, "
                     f"--warmup {args.warmup}")
    if len(set(args.taps)) != len(args.taps):
        parser.error(f"--taps must name distinct decoder taps; got {' '.join(map(str, args.taps))}")
    for name in ("mlp_ratio", "attn_ratio"):
        value = getattr(args, name)
        if not (0 < value < float("inf")):
            parser.error(f"--{name.replace('_', '-')} must be finite and > 0; got {value:g}")
    if args.out is not None:
        check_out_file(parser, args.out)  # before the benchmark, not after it
    if args.family == "dpt" and not set(args.sizes) <= set(DPT_SIZES):
        parser.error(f"--family dpt has sizes {sorted(DPT_SIZES)}")
    torch.set_num_threads(args.threads)
    dsfa_cfg = {"placement": args.placement, "mlp_ratio": args.mlp_ratio, "attn_ratio": args.attn_ratio,
                "taps": args.taps, "spatial": not args.no_spatial, "defocus_cue": args.defocus_cue}
    total = len(args.sizes) * len(args.frames) * 3 * args.repeats
    results = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "runs": []}
    with tqdm(total=total, desc="bench_stage2", unit="fwd", mininterval=5.0) as bar:
        for size in args.sizes:
            results["runs"].append(bench_size(size, args.family, args.frames, args.repeats, args.warmup, dsfa_cfg, bar))

    for run in results["runs"]:
        p = run["params"]
        print(f"\n{run['family']} {run['size']} @ {run['input'][0]}x{run['input'][1]}: encoder {p['encoder'] / 1e6:.2f} M, "
              f"decoder {p['decoder'] / 1e6:.2f} M, DSFA {p['dsfa'] / 1e6:.3f} M in {p['dsfa_blocks']} block(s) = "
              f"{100 * p['dsfa_over_encoder']:.1f}% of the encoder (goal <= 15%)")
        print(f"  {'N':>2} {'T_base ms':>10} {'T_stack ms':>11} {'T_dsfa ms':>10} {'overhead wall':>14} "
              f"{'overhead min':>13} {'overhead FLOP':>14} {'total ratio':>12} {'GFLOP dsfa':>11}")
        for n, f in run["frames"].items():
            print(f"  {n:>2} {1e3 * f['T_base_s']:>10.1f} {1e3 * f['T_stack_s']:>11.1f} {1e3 * f['T_dsfa_s']:>10.1f} "
                  f"{100 * f['dsfa_overhead']:>13.1f}% {100 * f['dsfa_overhead_min']:>12.1f}% "
                  f"{100 * f['dsfa_flops_overhead']:>13.1f}% {f['total_ratio']:>11.2f}x {f['flops_dsfa'] / 1e9:>11.2f}")
    print("\noverhead = T_dsfa(N) / T_stack(N) - 1 (goal <= 10%), T_stack = encoder on the N+1 frames + decoder: median"
          "\nwall time, fastest run, and counted FLOPs (the FLOP figure does not depend on other load on the machine;"
          "\non a busy machine the timings are noise). The JSON also has process-CPU-time medians.")
    if args.out is not None:
        write_json(args.out, results)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    raise SystemExit(run_reporting_errors(main, None))
