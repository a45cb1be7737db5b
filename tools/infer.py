#!/usr/bin/env python
"""Metric depth for photos: image -> bokeh stack -> Stage-2 depth -> depth .npy, colour map, point cloud, summary.

    python tools/infer.py photo.jpg --checkpoint runs/stage2/<stamp>/bokehdepth/checkpoints/last.ckpt \\
        --generator runs/stage1/<stamp> --out out/photo
    python tools/infer.py photos/ --checkpoint best.ckpt --fx 1400 --fy 1400 --cx 960 --cy 540 --out out/batch
    python tools/infer.py rows.jsonl --stack real --checkpoint best.ckpt --out out/pairs

Inputs: one image, a folder of images, or a manifest (``.txt``: one image path per line; ``.json`` list /
``.jsonl`` rows ``{"image": path, "name"?, "fx","fy","cx","cy"? | "intrinsics"?, "stack": [paths]?,
"K_px_m": [...]?, "depth": path?, "focus_m"?}``; relative paths are relative to the manifest). A corrupt or missing
image is skipped with a warning and listed under ``skipped`` in the summary; an empty folder is an error.

Stack (``--stack``):
  stage1  (default) the Stage-1 generator: ``--generator`` (exported generator.safetensors, its run folder, or a
          Stage-1 .ckpt), else the embedded default (configs/stage1.yaml) with RANDOM weights (smoke runs only).
  physics frames rendered by physics.stacks.bokeh_stack from a depth map you give (``--stack-depth`` or the
          manifest's "depth"; an oracle that needs the answer, for checks) at ``--focus-m`` (default: the nearest
          subject, the 5th percentile of that depth).
  real    photographed frames: ``--frames a.jpg,b.jpg --frame-K 6.1,2.1`` or the manifest's "stack"/"K_px_m".
  none    no stack (the base model / DSFA on the reference alone).
K values are px*m at the input photo's width (``--K``; default: the Stage-2 model's training strengths scaled from
its training width to the photo's width, so the blur covers the same fraction of the picture).

Stage-2: ``--checkpoint`` (a Stage-2 .ckpt, or a tools/fit.py run folder: its ``bokehdepth/`` model's best, else
last checkpoint, as tools/eval.py picks it; ``--base-checkpoint`` likewise takes ``base/``), else ``--model-config``
(a YAML with a ``model:`` section, e.g. with ``pretrained_path`` set), else configs/model/stage2_tiny.yaml with RANDOM
weights (smoke runs only).
The photo is resized (aspect kept) so that its long side is about ``--resolution`` px and both sides are multiples
of the encoder's patch (14 px), K is scaled by the same width factor, and the depth is resized back to the photo's
exact size; a line says the working size when it differs from the photo's (a small photo is upscaled: pass a smaller
``--resolution`` for speed).

Intrinsics (for the point cloud): ``--fx --fy --cx --cy`` or ``--intrinsics JSON`` (one camera, or a mapping
image name -> camera), else the manifest row's, else EXIF (FocalLengthIn35mmFilm: fx = f35 * diagonal_px /
43.27 mm, i.e. f35 / 36 * width for a 3:2 photo), else the DEFAULT fx = fy = 0.8 * max(W, H) px (a ~64 degree
field of view across the long side, between a phone's 26 mm-equivalent main camera and a 35 mm lens) with the
principal point at the image centre and a printed warning: the point cloud's scale in x, y is then a guess.

Outputs in ``--out`` (new or empty unless ``--overwrite``; a run that fails, e.g. no input readable, leaves it as it
was before): ``<name>/depth.npy`` (float32 [H, W] metres),
``<name>/depth.png`` (inverse-depth colour map), ``<name>/cloud.ply`` (coloured, statistical outliers removed),
``<name>/stack.png`` (photo + frames, K labelled), ``<name>/render_<view>.png`` with ``--render``; with
``--base-checkpoint`` also ``base_depth.npy``, ``base_depth.png``, ``base_cloud.ply``, ``base_render_<view>.png``
and ``side_by_side.png`` (base and BokehDepth clouds from the same viewpoints); and
``summary.json`` (every argument, checkpoint, camera and K value used, per-image timings and depth range, skipped
files).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401
from _cli import positive_int, run_or_checkpoint  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bokeh.datasets import DatasetError, Intrinsics  # noqa: E402
from bokeh.io import IMAGE_SUFFIXES, ImageReadError, output_dir, read_depth, read_image  # noqa: E402

#: Default focal length when neither the user nor EXIF gives one: fx = fy = DEFAULT_FX_FRACTION * max(W, H).
DEFAULT_FX_FRACTION = 0.8
FULL_FRAME_DIAGONAL_MM = 43.2666
#: Stage-2 training strengths used when a checkpoint carries none (configs/data/synthetic.yaml): K at 112 px width.
FALLBACK_TRAIN_K = ([2.0, 5.0, 12.0], 112)
DEFAULT_STAGE2_CONFIG = "model/stage2_tiny.yaml"
DEFAULT_STAGE1_CONFIG = "stage1.yaml"
#: Keys of an --intrinsics JSON object that make it one camera (Intrinsics.from_any) rather than name -> camera.
ONE_CAMERA_KEYS = ("fx", "cam_in", "intrinsics", "K", "camera_matrix")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="an image, a folder of images, or a manifest (.txt / .json / .jsonl)")
    p.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--checkpoint", help="Stage-2 checkpoint (.ckpt from tools/fit.py), or its run folder (its "
                                        "bokehdepth/ model's best, else last checkpoint)")
    p.add_argument("--model-config", help="YAML with a model: section (e.g. pretrained_path), used untrained")
    p.add_argument("--base-checkpoint", help="Stage-2 checkpoint of the base model (fit.py's base/ variant, or the "
                                             "run folder), run without a stack for base-vs-BokehDepth outputs and "
                                             "side-by-side views")
    p.add_argument("--stack", default="stage1", choices=("stage1", "physics", "real", "none"))
    p.add_argument("--generator", help="Stage-1 generator: generator.safetensors, its run folder, or a .ckpt")
    p.add_argument("--K", help="comma-separated strengths in px*m at the photo's width (default: see above)")
    p.add_argument("--steps", type=positive_int, help="Stage-1 sampling steps, >= 1 (default: the generator's)")
    p.add_argument("--seed", type=int, default=0, help="Stage-1 noise seed")
    p.add_argument("--frames", help="--stack real: comma-separated frame paths (single-image input)")
    p.add_argument("--frame-K", help="--stack real: comma-separated K of the frames, px*m at the photo's width")
    p.add_argument("--stack-depth", help="--stack physics: depth map (.npy metres or PNG with --stack-depth-scale)")
    p.add_argument("--stack-depth-scale", type=float, help="units per metre of a PNG --stack-depth (1000 for mm)")
    p.add_argument("--focus-m", type=float, help="--stack physics: focus distance in metres")
    p.add_argument("--resolution", type=int, default=518, help="working long side in px for Stage-2 (default 518)")
    p.add_argument("--intrinsics", help="JSON: one camera {fx, fy, cx, cy} (px) or a mapping image name -> camera")
    for key in ("fx", "fy", "cx", "cy"):
        p.add_argument(f"--{key}", type=float, help=f"intrinsics {key} in pixels of the input photo")
    p.add_argument("--max-depth", type=float, help="metres; farther points are left out of the point cloud")
    p.add_argument("--voxel-size", type=float, help="voxel downsampling of the point cloud (m)")
    p.add_argument("--outlier-std", type=float, default=2.0, help="statistical outlier removal (0 disables)")
    p.add_argument("--no-cloud", action="store_true", help="skip the point cloud")
    p.add_argument("--render", action="store_true", help="also render the point cloud offscreen (4 views)")
    p.add_argument("--render-backend", default="auto", choices=("auto", "offscreen", "legacy", "splat"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------- inputs


@dataclass
class Item:
    """One photo to process and what the manifest said about it."""

    name: str
    image: Path
    camera: dict[str, Any] | None = None
    frames: list[Path] = field(default_factory=list)
    frame_K: list[float] | None = None
    depth: Path | None = None
    focus_m: float | None = None


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def _parse_json(text: str, where: str) -> Any:
    """``json.loads`` whose syntax error names ``where`` (the file, or file:line of a JSONL row)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where}: not valid JSON ({error})") from None


def _row_numbers(row: dict[str, Any], key: str, where: str) -> list[float]:
    """A manifest row's list of numbers (``K_px_m``), refused with the row named otherwise."""
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DatasetError(f"{where}: '{key}' must be a list of numbers (px*m, one per stack frame), got "
                           f"{json.dumps(value)}")
    return [float(v) for v in value]


def collect_inputs(spec: str, args: argparse.Namespace) -> list[Item]:
    """Items from an image, a folder or a manifest; an empty folder or manifest is an error."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not images:
            raise DatasetError(f"input folder {path} holds no images (expected one of {IMAGE_SUFFIXES})")
        return [Item(p.stem, p) for p in images]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        frames = [Path(f) for f in args.frames.split(",")] if args.frames else []
        depth = Path(args.stack_depth) if args.stack_depth else None
        return [Item(path.stem, path, frames=frames, frame_K=_floats(args.frame_K, "--frame-K"), depth=depth,
                     focus_m=args.focus_m)]
    base = path.parent
    wheres: list[str] | None = None  # where each row is, for messages: file:line (JSONL) or file row n
    if path.suffix.lower() == ".txt":
        rows: list[Any] = [{"image": line.strip()} for line in path.read_text().splitlines()
                           if line.strip() and not line.startswith("#")]
    elif path.suffix.lower() == ".jsonl":
        lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        wheres = [f"{path}:{n}" for n, _ in lines]
        rows = [_parse_json(line, where) for (_, line), where in zip(lines, wheres)]
    elif path.suffix.lower() == ".json":
        content = _parse_json(path.read_text(), str(path))
        rows = content.get("images", content.get("files")) if isinstance(content, dict) else content
    else:
        raise ValueError(f"input {path}: expected an image ({', '.join(IMAGE_SUFFIXES)}), a folder, or a manifest "
                         "(.txt, .json, .jsonl)")
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"manifest {path} lists no images")
    items = []
    for i, row in enumerate(rows):
        where = wheres[i] if wheres else f"manifest {path} row {i + 1}"
        if isinstance(row, str):
            row = {"image": row}
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object {{image, ...}}, got {type(row).__name__}")
        if not isinstance(row.get("image"), str):
            raise DatasetError(f"{where}: missing 'image'" if "image" not in row else
                               f"{where}: 'image' must be a path (a string), got {json.dumps(row['image'])}")
        if not isinstance(row.get("stack", []), list):
            raise DatasetError(f"{where}: 'stack' must be a list of frame paths, got {json.dumps(row['stack'])}")
        image = base / row["image"]
        camera = row.get("intrinsics") or ({k: row[k] for k in ("fx", "fy", "cx", "cy")} if "fx" in row else None)
        items.append(Item(str(row.get("name") or image.stem), image, camera=camera,
                          frames=[base / f for f in row.get("stack", [])],
                          frame_K=_row_numbers(row, "K_px_m", where) if "K_px_m" in row else None,
                          depth=base / row["depth"] if row.get("depth") else None,
                          focus_m=float(row["focus_m"]) if row.get("focus_m") is not None else None))
    return items


def _unique_names(items: list[Item]) -> None:
    seen: dict[str, int] = {}
    for item in items:
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}_{count}"


# ----------------------------------------------------------------------------------------------- intrinsics


def exif_intrinsics(path: Path, width: int, height: int) -> tuple[Intrinsics | None, dict[str, Any]]:
    """Intrinsics from EXIF FocalLengthIn35mmFilm: fx = fy = f35 * sqrt(W^2 + H^2) / 43.27 mm, centre point.

    The 35 mm-equivalent focal length relates the lens to the full-frame diagonal (43.27 mm), so in pixels of this
    photo the focal length is f35 / 43.27 * its diagonal (= f35 / 36 * W for a 3:2 photo). Returns (None, fields)
    when the photo has no usable EXIF (FocalLength alone does not give fx without the sensor size).
    """
    from PIL import Image

    fields: dict[str, Any] = {}
    try:
        with Image.open(path) as handle:
            exif = handle.getexif()
            sub = exif.get_ifd(0x8769) if exif else {}
    except OSError:
        return None, fields
    f35 = sub.get(0xA405) or exif.get(0xA405) if exif else None  # FocalLengthIn35mmFilm
    f_mm = sub.get(0x920A) or exif.get(0x920A) if exif else None  # FocalLength
    if f_mm is not None:
        fields["FocalLength"] = float(f_mm)
    if f35 is not None:
        fields["FocalLengthIn35mmFilm"] = float(f35)
    if not f35 or float(f35) <= 0:
        return None, fields
    fx = float(f35) * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
    return Intrinsics(fx, fx, (width - 1) / 2.0, (height - 1) / 2.0), fields


def default_intrinsics(width: int, height: int) -> Intrinsics:
    """The documented fallback: fx = fy = 0.8 * max(W, H), principal point at the centre."""
    fx = DEFAULT_FX_FRACTION * max(width, height)
    return Intrinsics(fx, fx, (width - 1) / 2.0, (height - 1) / 2.0)


def resolve_intrinsics(args: argparse.Namespace, item: Item, width: int, height: int,
                       file_cameras: dict[str, Any] | None) -> tuple[Intrinsics, str, dict[str, Any]]:
    """(intrinsics, source, details): user flags > --intrinsics JSON > manifest row > EXIF > default (warning)."""
    given = [getattr(args, k) for k in ("fx", "fy", "cx", "cy")]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise DatasetError("give all four of --fx --fy --cx --cy (pixels), or --intrinsics JSON")
        camera, source = Intrinsics(*map(float, given)), "user (--fx --fy --cx --cy)"
    elif file_cameras is not None:
        one_camera = not isinstance(file_cameras, dict) or any(k in file_cameras for k in ONE_CAMERA_KEYS)
        entry = file_cameras if one_camera else file_cameras.get(item.name, file_cameras.get(item.image.name))
        if entry is None:
            raise DatasetError(f"--intrinsics {args.intrinsics} has no camera for {item.name}")
        camera, source = Intrinsics.from_any(entry, f"--intrinsics {args.intrinsics}"), "user (--intrinsics)"
    elif item.camera is not None:
        camera, source = Intrinsics.from_any(item.camera, f"manifest row {item.name}"), "manifest"
    else:
        camera, fields = exif_intrinsics(item.image, width, height)
        if camera is not None:
            camera.check_image(width, height, where=f"EXIF of {item.image.name}")
            return camera, "exif", fields
        camera = default_intrinsics(width, height)
        print(f"WARNING: {item.image.name}: no intrinsics given and no EXIF 35 mm-equivalent focal length; using the "
              f"default fx = fy = {DEFAULT_FX_FRACTION} * max(W, H) = {camera.fx:.1f} px (the point cloud's x/y "
              "scale is a guess; pass --fx --fy --cx --cy)", file=sys.stderr)
        return camera, "default", {"fx_fraction_of_long_side": DEFAULT_FX_FRACTION, **fields}
    camera.check_image(width, height, where=f"intrinsics of {item.image.name}")
    return camera, source, {}


# --------------------------------------------------------------------------------------------------- models


def load_stage2_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(Stage2Module in eval mode, info) from a Stage-2 Lightning checkpoint (checked by :func:`check_options`)."""
    from lightning_modules.stage2 import Stage2Module

    path = Path(path)
    module = Stage2Module.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
    cfg = module.cfg
    info = {"source": "checkpoint", "checkpoint": str(path.resolve()), "model": cfg.get("model"),
            "use_stack": bool(module.use_stack), "random_weights": False}
    synthetic = (cfg.get("data") or {}).get("synthetic") or {}
    if synthetic.get("K_px_m") and synthetic.get("width"):
        info["train_K_px_m"], info["train_width_px"] = list(synthetic["K_px_m"]), int(synthetic["width"])
    return module.eval(), info


def load_depth_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(callable model(image, stack, K) -> depth, info) from --checkpoint / --model-config / the tiny default."""
    from lightning_modules.config import load_config

    if args.checkpoint:
        return load_stage2_checkpoint(args.checkpoint)
    from bokeh.depth import build_depth_model

    config = args.model_config or DEFAULT_STAGE2_CONFIG
    cfg = load_config([config])
    if "model" not in cfg:
        raise DatasetError(f"--model-config {config} has no 'model:' section")
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    random_weights = not model_cfg.get("pretrained_path")
    if random_weights:
        print(f"WARNING: Stage-2 model built from {config} with RANDOM weights: the depth is meaningless (smoke run). "
              "Pass --checkpoint (a trained Stage-2 .ckpt) or a --model-config with pretrained_path.", file=sys.stderr)
    model = build_depth_model(model_cfg).eval()
    return model, {"source": "config", "config": str(config), "model": model_cfg, "use_stack": True,
                   "random_weights": random_weights}


def load_stage1(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(generator, info) from --generator, else the embedded default config with random weights (warning)."""
    from lightning_modules.stage1 import build_generator, load_generator

    if args.generator:
        generator, meta = load_generator(args.generator)
        return generator, {"source": str(Path(args.generator).resolve()), "meta": meta, "random_weights": False}
    from omegaconf import OmegaConf

    from bokeh.generation import KRange
    from lightning_modules.config import load_config

    cfg = OmegaConf.to_container(load_config([DEFAULT_STAGE1_CONFIG]), resolve=True)
    k = cfg["k"]
    generator = build_generator(cfg["model"], KRange(float(k["min"]), float(k["max"]), str(k.get("policy", "clamp"))),
                                int(cfg["data"]["width"])).eval()
    print(f"WARNING: Stage-1 generator is the embedded default ({DEFAULT_STAGE1_CONFIG}) with RANDOM weights: the stack "
          "is noise-like (smoke run). Pass --generator (a trained Stage-1 export).", file=sys.stderr)
    return generator, {"source": f"embedded default ({DEFAULT_STAGE1_CONFIG})", "random_weights": True,
                       "meta": {"model": cfg["model"], "k": k, "resolution": int(cfg["data"]["width"])}}


def working_size(height: int, width: int, resolution: int, multiple: int = 14) -> tuple[int, int]:
    """Aspect-kept size with the long side ~ ``resolution`` and both sides multiples of ``multiple``."""
    scale = resolution / max(height, width)
    return (max(multiple, int(round(height * scale / multiple)) * multiple),
            max(multiple, int(round(width * scale / multiple)) * multiple))


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    down = size[0] < tensor.shape[-2] or size[1] < tensor.shape[-1]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=down)


# ---------------------------------------------------------------------------------------------------- stacks


def make_stack(args: argparse.Namespace, item: Item, image_work: torch.Tensor, width: int, K_input: list[float],
               generator: Any) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """(stack [1,N,3,h,w] | None, K [1,N] px*m at the working width | None, record) for one photo.

    ``image_work``: [1,3,h,w] the photo at the Stage-2 working size; ``width``: the photo's width (px).
    """
    h, w = image_work.shape[-2:]
    scale = w / width
    if args.stack == "none":
        return None, None, {"kind": "none"}
    if args.stack == "real":
        if not item.frames or item.frame_K is None:
            raise DatasetError(f"{item.name}: --stack real needs frames and their K (--frames/--frame-K, or the "
                               "manifest's 'stack' and 'K_px_m')")
        if len(item.frames) != len(item.frame_K):
            raise DatasetError(f"{item.name}: {len(item.frames)} frames but {len(item.frame_K)} K values")
        frames = []
        for path in item.frames:
            frame = read_image(path, exif_orientation=True)  # the same camera, the same tag as the photo
            if frame.shape[-2:] != (item_size := tuple(image_size_of(item))):
                raise DatasetError(f"{item.name}: frame {path.name} is {frame.shape[-1]}x{frame.shape[-2]} but the "
                                   f"photo is {item_size[1]}x{item_size[0]} (WxH); frames must match the photo")
            frames.append(_resize(frame[None], (h, w))[0])
        K = torch.tensor(item.frame_K, dtype=torch.float32)
        return torch.stack(frames)[None], (K * scale)[None], {
            "kind": "real", "frames": [str(p) for p in item.frames], "K_px_m_input": item.frame_K,
            "K_px_m_working": (K * scale).tolist()}
    K_work = torch.tensor(K_input, dtype=torch.float32) * scale
    if args.stack == "physics":
        from physics.stacks import bokeh_stack

        if item.depth is None:
            raise DatasetError(f"{item.name}: --stack physics needs a depth map (--stack-depth or the manifest's "
                               "'depth')")
        depth = read_depth(item.depth, depth_scale=args.stack_depth_scale)
        size = image_size_of(item)
        if tuple(depth.shape[-2:]) != tuple(size):
            raise DatasetError(f"{item.name}: stack depth is {depth.shape[-1]}x{depth.shape[-2]} but the photo is "
                               f"{size[1]}x{size[0]} (WxH)")
        valid = depth[depth > 0]
        if valid.numel() == 0:
            raise DatasetError(f"{item.name}: stack depth {item.depth} has no valid pixel")
        holes = depth.numel() - valid.numel()
        if holes:
            print(f"WARNING: {item.name}: stack depth {item.depth} has {holes} of {depth.numel()} pixels without a "
                  "valid depth (0, NaN or inf); they are rendered as far background (its largest depth, "
                  f"{float(valid.max()):.3g} m)", file=sys.stderr)
        depth = torch.where(depth > 0, depth, valid.max())  # holes: far background, no blur from missing data
        focus = item.focus_m if item.focus_m is not None else float(torch.quantile(valid.float(), 0.05))
        depth_work = F.interpolate(depth[None], size=(h, w), mode="nearest")
        stack = bokeh_stack(image_work, depth_work, K_work, focus)
        return stack.frames, K_work[None], {"kind": "physics (oracle: rendered from the given depth)",
                                            "depth": str(item.depth), "depth_invalid_pixels": holes,
                                            "focus_m": focus,
                                            "K_px_m_input": K_input, "K_px_m_working": K_work.tolist()}
    result = generator.generate_stack(image_work, K_work, num_steps=args.steps, seed=args.seed)
    gen_w = result.work_size[1]
    K_used = result.K_work_px_m.float() * (w / gen_w)  # after the generator's range policy, at the Stage-2 width
    return result.frames, K_used[None], {
        "kind": "stage1", "K_px_m_input": K_input, "K_px_m_requested_working": K_work.tolist(),
        "K_px_m_generator": result.K_work_px_m.tolist(), "generator_size_hw": list(result.work_size),
        "K_px_m_working": K_used.tolist(), "steps": result.info.get("num_steps"), "seed": args.seed}


_sizes: dict[Path, tuple[int, int]] = {}


def image_size_of(item: Item) -> tuple[int, int]:
    """(H, W) of an item's photo (recorded when it was read)."""
    return _sizes[item.image]


def default_K(info: dict[str, Any], width: int) -> tuple[list[float], str]:
    """Stage-2 training strengths scaled from the training width to ``width``: same blur fraction of the picture."""
    if "train_K_px_m" in info:
        K, train_width, where = info["train_K_px_m"], info["train_width_px"], "the checkpoint's data config"
    else:
        (K, train_width), where = FALLBACK_TRAIN_K, "configs/data/synthetic.yaml defaults"
    return [k * width / train_width for k in K], f"{where}: {K} px*m at {train_width} px, scaled to {width} px"


# ------------------------------------------------------------------------------------------------------- run


def _stack_picture(image: torch.Tensor, stack: torch.Tensor | None, K: torch.Tensor | None) -> Any:
    from bokeh.io import image_grid

    cells, labels = [image[0]], ["input"]
    if stack is not None:
        for j in range(stack.shape[1]):
            cells.append(stack[0, j])
            labels.append(f"K={float(K[0, j]):.2f}")
    return image_grid([cells], labels=labels)


@torch.no_grad()
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Process every input; returns the summary (also written as summary.json)."""
    check_device(args.device)
    items = collect_inputs(args.input, args)
    _unique_names(items)
    file_cameras = None
    if args.intrinsics:
        path = Path(args.intrinsics)
        if not path.is_file():
            raise FileNotFoundError(f"--intrinsics file not found: {path}")
        file_cameras = _parse_json(path.read_text(), str(path))
    if args.resolution < 14:
        raise ValueError(f"--resolution must be >= 14 px, got {args.resolution}")
    user_K = _floats(args.K, "--K")
    if user_K is not None and any(not math.isfinite(k) or k < 0 for k in user_K):
        raise ValueError(f"--K values must be finite and >= 0 px*m, got {user_K}")
    check_options(args, items)
    # Everything that can fail on a bad option is loaded before the output folder is touched.
    model, stage2_info = load_depth_model(args)
    model.to(args.device)
    generator, stage1_info = (load_stage1(args) if args.stack == "stage1" else (None, None))
    base_model, base_info = (load_stage2_checkpoint(args.base_checkpoint)
                             if args.base_checkpoint else (None, None))
    if base_model is not None:
        base_model.to(args.device)
    # A failure from here on (a bad camera, stack or frame of some photo) leaves the previous output as it was.
    with output_dir(args.out, overwrite=args.overwrite) as out:
        return _process(args, items, out, file_cameras, user_K, model, stage2_info, generator, stage1_info,
                        base_model, base_info)


def check_device(device: str) -> None:
    """Refuse a --device torch does not know, or CUDA where there is none, before anything is read or loaded."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"--device {device}: {error}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} is not available here (torch.cuda.is_available() is False); "
                         "use --device cpu")


def check_options(args: argparse.Namespace, items: list[Item]) -> None:
    """Refuse bad options and unusable paths before any model is loaded or anything is written."""
    from bokeh.io import check_output_dir

    check_output_dir(Path(args.out), args.overwrite)  # a non-empty --out without --overwrite: refused first
    given = [getattr(args, k) for k in ("fx", "fy", "cx", "cy")]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise DatasetError("give all four of --fx --fy --cx --cy (pixels), or --intrinsics JSON")
        try:
            Intrinsics(*map(float, given))  # fx, fy > 0 and finite values
        except DatasetError as error:
            raise DatasetError(f"--fx --fy --cx --cy: {error}") from None
    from lightning_modules.stage2 import check_stage2_checkpoint

    for option, attr, sub in (("--checkpoint", "checkpoint", "bokehdepth"), ("--base-checkpoint", "base_checkpoint",
                                                                            "base")):
        path = getattr(args, attr)
        if path and Path(path).is_dir():  # a fit.py run folder: its model's checkpoint, found as tools/eval.py does
            try:
                found = run_or_checkpoint(path, sub)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"{option} {path} is a folder without a Stage-2 checkpoint ({error}); expected "
                                        f"a .ckpt file or a tools/fit.py run folder, e.g. "
                                        f"{Path(path) / sub / 'checkpoints' / 'last.ckpt'}") from None
            print(f"{option} {path}: using {found}")
            path = str(found)
            setattr(args, attr, path)
        if path:  # cheap (memory-mapped); refused before the other model is built and its warnings printed
            check_stage2_checkpoint(path, option)
    if args.stack == "stage1" and args.generator and not Path(args.generator).exists():
        raise FileNotFoundError(f"--generator {args.generator} does not exist (expected a Stage-1 run folder, "
                                "generator.safetensors or a Stage-1 .ckpt)")
    if args.stack_depth_scale is not None and not (math.isfinite(args.stack_depth_scale)
                                                   and args.stack_depth_scale > 0):
        raise ValueError(f"--stack-depth-scale must be > 0 (units per metre), got {args.stack_depth_scale}")
    if args.focus_m is not None and not (math.isfinite(args.focus_m) and args.focus_m > 0):
        raise ValueError(f"--focus-m must be > 0 metres, got {args.focus_m}")
    for item in items:
        if args.stack == "real" and item.frame_K is not None:
            if any(not math.isfinite(k) or k < 0 for k in item.frame_K):
                raise ValueError(f"{item.name}: frame K values must be finite and >= 0 px*m, got {item.frame_K}")
            if item.frames and len(item.frames) != len(item.frame_K):
                raise DatasetError(f"{item.name}: {len(item.frames)} frame(s) but {len(item.frame_K)} K value(s) "
                                   "(--frames / --frame-K, or the manifest's 'stack' / 'K_px_m'); give one K per frame")
            for frame in item.frames:
                if not frame.is_file():
                    raise FileNotFoundError(f"{item.name}: frame {frame} not found")
        if args.stack == "physics" and item.depth is not None and not item.depth.is_file():
            raise FileNotFoundError(f"{item.name}: stack depth {item.depth} not found")


def _process(args: argparse.Namespace, items: list[Item], out: Path, file_cameras: Any, user_K: list[float] | None,
             model: Any, stage2_info: dict[str, Any], generator: Any, stage1_info: Any, base_model: Any,
             base_info: Any) -> dict[str, Any]:
    """The per-photo loop of :func:`run`, writing into ``out``."""
    from bokeh.io import colorize_depth_with_legend, depth_display_range, write_image, write_json, write_npy

    summary: dict[str, Any] = {"arguments": vars(args), "stage2": stage2_info, "stage1": stage1_info,
                               "base": base_info,
                               "default_intrinsics": f"fx = fy = {DEFAULT_FX_FRACTION} * max(W, H), centre principal "
                                                     "point (used only without user intrinsics or EXIF)",
                               "images": [], "skipped": []}
    for item in items:
        try:
            image = read_image(item.image, exif_orientation=True)  # photos: upright as the camera tagged them
        except ImageReadError as error:
            warnings.warn(f"skipping {item.image}: {error}", stacklevel=1)
            summary["skipped"].append({"name": item.name, "path": str(item.image), "reason": str(error)})
            continue
        t0 = time.perf_counter()
        H, W = image.shape[-2:]
        _sizes[item.image] = (H, W)
        camera, camera_source, camera_fields = resolve_intrinsics(args, item, W, H, file_cameras)
        h, w = working_size(H, W, args.resolution)
        if (h, w) != (H, W):  # said before the slow part: a small photo is upscaled to ~--resolution on its long side
            scaled = "upscaled" if h * w > H * W else "downscaled"
            print(f"{item.image.name}: {H}x{W} (HxW) {scaled} to the working size {h}x{w} (--resolution "
                  f"{args.resolution}: the long side, in multiples of 14 px)"
                  + ("; a smaller --resolution is faster" if scaled == "upscaled" else ""), flush=True)
        image_work = _resize(image[None], (h, w)).clamp(0, 1)
        K_input, K_note = (user_K, "--K") if user_K is not None else default_K(stage2_info, W)
        stack, K, stack_info = make_stack(args, item, image_work, W, K_input, generator)
        t_stack = time.perf_counter() - t0
        dev = args.device
        depth_work = model(image_work.to(dev), None if stack is None else stack.to(dev),
                           None if K is None else K.to(dev)).float().cpu()
        depth = F.interpolate(depth_work, size=(H, W), mode="bilinear", align_corners=False)[0]  # [1, H, W]
        depth_base = None
        if base_model is not None:
            depth_base = F.interpolate(base_model(image_work.to(dev), None, None).float().cpu(), size=(H, W),
                                       mode="bilinear", align_corners=False)[0]
        seconds = time.perf_counter() - t0
        folder = out / item.name
        files = {"depth": f"{item.name}/depth.npy", "depth_color": f"{item.name}/depth.png",
                 "stack": f"{item.name}/stack.png"}
        write_npy(folder / "depth.npy", depth[0].numpy().astype("float32"))
        # one colour scale (BokehDepth's) for both models' maps, labelled in metres
        lo_hi = depth_display_range(depth) or (None, None)
        write_image(folder / "depth.png", colorize_depth_with_legend(depth, *lo_hi))
        write_image(folder / "stack.png", _stack_picture(image_work, stack, K))
        if depth_base is not None:
            write_npy(folder / "base_depth.npy", depth_base[0].numpy().astype("float32"))
            write_image(folder / "base_depth.png", colorize_depth_with_legend(depth_base, *lo_hi))
            files.update(base_depth=f"{item.name}/base_depth.npy", base_depth_color=f"{item.name}/base_depth.png")
        record: dict[str, Any] = {
            "name": item.name, "input": str(item.image), "size_hw": [H, W], "working_size_hw": [h, w],
            "intrinsics": camera.as_dict(), "intrinsics_source": camera_source, "intrinsics_details": camera_fields,
            "K_source": K_note, "stack": stack_info,
            "depth_m": {"min": float(depth.min()), "median": float(depth.median()), "max": float(depth.max())},
            "seconds": {"stack": round(t_stack, 3), "total": round(seconds, 3)}, "files": files}
        if depth_base is not None:
            record["base_depth_m"] = {"min": float(depth_base.min()), "median": float(depth_base.median()),
                                      "max": float(depth_base.max())}
        if not args.no_cloud:
            from bokeh import pointcloud as pc

            clouds = {}
            for prefix, label, values in (("", "BokehDepth", depth), ("base_", "base", depth_base)):
                if values is None:
                    continue
                cloud = pc.depth_to_point_cloud(values, camera.matrix(), image, max_depth_m=args.max_depth)
                cloud, cleaning = pc.clean_point_cloud(cloud, voxel_size_m=args.voxel_size,
                                                       outlier_std_ratio=args.outlier_std or None)
                pc.write_point_cloud(folder / f"{prefix}cloud.ply", cloud, overwrite=True)
                files[f"{prefix}cloud"] = f"{item.name}/{prefix}cloud.ply"
                record[f"{prefix}cloud"] = cleaning
                clouds[label] = cloud
            if args.render:
                import numpy as np

                cameras = pc.view_cameras(np.asarray(clouds["BokehDepth"].points), 480, 360,
                                          intrinsics=camera.matrix(), image_size=(W, H))
                results = pc.render_clouds(dict(reversed(list(clouds.items()))), cameras,
                                           backend=args.render_backend)
                for label, result in results.items():
                    prefix = "base_" if label == "base" else ""
                    for view, picture in result.images.items():
                        write_image(folder / f"{prefix}render_{view}.png", picture)
                        files[f"{prefix}render_{view}"] = f"{item.name}/{prefix}render_{view}.png"
                if len(results) > 1:
                    write_image(folder / "side_by_side.png", pc.side_by_side(results))
                    files["side_by_side"] = f"{item.name}/side_by_side.png"
                record["renderer"] = next(iter(results.values())).message
                print(record["renderer"])
        summary["images"].append(record)
        print(f"{item.name}: {H}x{W} (HxW) -> depth {record['depth_m']['min']:.2f}-{record['depth_m']['max']:.2f} m "
              f"(median {record['depth_m']['median']:.2f}), intrinsics from {camera_source}, {seconds:.1f} s")
    if not summary["images"]:  # a failure: the output folder goes back to what it held before
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in summary["skipped"])
        raise DatasetError(f"no input could be read ({len(summary['skipped'])} skipped: {reasons})")
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (DatasetError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped = summary["skipped"]
    print(f"wrote {len(summary['images'])} result(s) to {args.out}" + (f"; skipped {len(skipped)}: "
          + ", ".join(s["name"] for s in skipped) if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
