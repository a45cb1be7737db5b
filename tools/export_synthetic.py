#!/usr/bin/env python
"""Write synthetic scenes (physics.scenes) as an RGB-D folder + JSONL manifests, optionally with physics stacks.

    python tools/export_synthetic.py --out data/syn_train --split train --num 1000 --size 112 112
    python tools/export_synthetic.py --out data/syn_train --split train --num 1000 --physics-K 2 5 12 --focus-m 100
    python tools/export_synthetic.py ... --scene-options '{"appearance_cues": 1.0}'   # scenes whose look carries depth

The scenes are those of Stage-2's synthetic DataModule: split s, scene i has seed ``seed + offset[s] + i``
(lightning_modules.data.SPLIT_SEED_OFFSETS), so an exported split holds exactly the pictures the physics-stack
default trains / tests on (8-bit PNG, like its uint8 cache). Output (every file written atomically):

    rgb/<name>.png            sharp all-in-focus image (sRGB)
    depth/<name>.npy          float32 [H, W] metres (z along the optical axis)
    intrinsics.json           {name: {fx, fy, cx, cy}} in pixels (bokeh.datasets generic RGB-D folder layout)
    scenes.jsonl              {image, depth, intrinsics: [fx, fy, cx, cy], focus_m, seed}: tools/make_stack.py input
    physics/<name>_k<i>.png   with --physics-K: frames rendered by physics.stacks.bokeh_stack at each scene's focus
                              (its nearest subject) or at --focus-m (stage2.yaml and stage1.yaml: 100 m)
    stacks_physics.jsonl      with --physics-K: {image, depth, stack, K_px_m, intrinsics, focus_m}: a Stage-2
                              manifest (configs/data/manifest.yaml), the physics twin of make_stack.py's stacks.jsonl
    export.json               settings
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401
from physics.render import check_blur_radius  # noqa: E402

import torch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--num", type=int, required=True, help="number of scenes")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="seed range (Stage-2's splits)")
    p.add_argument("--seed", type=int, default=0, help="base seed (data.synthetic.seed)")
    p.add_argument("--size", type=int, nargs=2, default=(112, 112), metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--physics-K", type=float, nargs="+", default=None,
                   help="also render physics stacks at these strengths (px*m at this width) + stacks_physics.jsonl")
    p.add_argument("--focus-m", type=float, default=None,
                   help="one focus distance for every scene's physics stack (default: each scene's nearest subject)")
    p.add_argument("--layer-ratio", type=float, default=1.5,
                   help="renderer layer spacing (configs/data/synthetic.yaml)")
    p.add_argument("--scene-options", default="{}", metavar="JSON",
                   help='physics.scenes.make_scene keywords as a JSON object, e.g. \'{"appearance_cues": 1.0}\' '
                        "(the scenes configs/stage1.yaml trains on); default {} = Stage-2's depth-hiding scenes")
    p.add_argument("--batch-size", type=int, default=32, help="scenes rendered per batch")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)




def check_settings(*, num: int, height: int, width: int, physics_K: list[float] | None, focus_m: float | None,
                   scene_options: dict[str, Any] | None, batch_size: int, layer_ratio: float = 1.5) -> None:
    """Refuse bad export settings (ValueError naming the option) before anything is written.

    A --physics-K is refused when its largest blur radius, K * max |1/focus - 1/depth| over the scenes' depth range
    (scene_options' depth_range_m, else make_scene's default), exceeds what physics.render accepts
    (physics.render.check_blur_radius)."""
    from physics.scenes import make_scene

    if num <= 0:
        raise ValueError(f"--num must be a positive number of scenes, got {num}")
    if focus_m is not None and not (math.isfinite(focus_m) and focus_m > 0):
        raise ValueError(f"--focus-m must be a positive distance in metres, got {focus_m}")
    if height < 8 or width < 8:
        raise ValueError(f"--size must be at least 8x8 pixels, got {height}x{width}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 scene, got {batch_size}")
    if not (math.isfinite(layer_ratio) and layer_ratio > 1):
        raise ValueError(f"--layer-ratio must be a finite number > 1, got {layer_ratio}")
    if scene_options:
        check_scene_options(scene_options, height, width)
    if physics_K is None:
        return
    if not physics_K or any(not (math.isfinite(k) and k > 0) for k in physics_K):
        raise ValueError(f"--physics-K must list positive finite strengths (px*m), got {physics_K}")
    default_range = inspect.signature(make_scene).parameters["depth_range_m"].default
    depth_range = (scene_options or {}).get("depth_range_m", default_range)
    try:
        near, far = (float(v) for v in depth_range)
    except (TypeError, ValueError):
        near = far = math.nan
    if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
        raise ValueError(f"--scene-options depth_range_m must be [near, far] metres with 0 < near < far, "
                         f"got {depth_range!r}")
    for k in physics_K:  # nearest-subject focus (focus_m None) lies at or beyond `near`: the widest case is `near`
        check_blur_radius(k, focus_m if focus_m is not None else near, near, far, height, width, name="--physics-K")


def check_scene_options(scene_options: dict[str, Any], height: int, width: int) -> None:
    """Make one scene with ``scene_options`` so that a value make_scene refuses (``{"num_objects": 3}`` where it
    expects [lo, hi]; its message names the key) is a ValueError naming --scene-options, before anything is
    written."""
    from physics.scenes import make_scene

    try:
        make_scene(0, height, width, **scene_options)
    except ValueError as error:
        raise ValueError(f"--scene-options {json.dumps(scene_options)}: {error}") from None


def export(out: Path, *, num: int, split: str = "train", seed: int = 0, height: int = 112, width: int = 112,
           physics_K: list[float] | None = None, focus_m: float | None = None, layer_ratio: float = 1.5,
           scene_options: dict[str, Any] | None = None, batch_size: int = 32,
           progress: bool = True) -> dict[str, Any]:
    """Write the scenes into the (prepared, empty) folder ``out``; returns the export settings and counts."""
    from bokeh.io import write_image, write_json, write_npy, write_text
    from lightning_modules.data import SPLIT_SEED_OFFSETS, render_synthetic_split
    from physics.scenes import make_scene

    check_settings(num=num, height=height, width=width, physics_K=physics_K, focus_m=focus_m,
                   scene_options=scene_options, batch_size=batch_size, layer_ratio=layer_ratio)
    scene_options = dict(scene_options or {})
    seeds = [seed + SPLIT_SEED_OFFSETS[split] + i for i in range(num)]
    scenes_lines, stack_lines, cameras = [], [], {}
    chunks = range(0, num, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"exporting {num} {split} scenes", unit="batch")
    for start in chunks:
        chunk = seeds[start : start + batch_size]
        if physics_K is not None:
            data = render_synthetic_split(chunk, height=height, width=width, K_px_m=physics_K, focus_m=focus_m,
                                          scene_options=scene_options, render_options={"layer_ratio": layer_ratio},
                                          batch_size=len(chunk), progress=False)
            images, depths = data.image.float() / 255.0, data.depth_m
            focus, intr, frames = data.focus_m, data.intrinsics, data.stack
        else:
            scenes = [make_scene(s, height, width, **scene_options) for s in chunk]
            images = torch.stack([torch.as_tensor(s.image, dtype=torch.float32) for s in scenes])
            depths = torch.stack([torch.as_tensor(s.depth_m, dtype=torch.float32) for s in scenes])
            focus = torch.tensor([float(focus_m or s.focus_m) for s in scenes])
            intr = torch.stack([torch.as_tensor(s.intrinsics, dtype=torch.float32) for s in scenes])
            frames = None
        for j, s in enumerate(chunk):
            name = f"{split}_{s:08d}"
            write_image(out / "rgb" / f"{name}.png", images[j])
            write_npy(out / "depth" / f"{name}.npy", depths[j, 0].float().numpy())
            k = intr[j]
            camera = [float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])]
            cameras[name] = dict(zip(("fx", "fy", "cx", "cy"), camera))
            row = {"image": f"rgb/{name}.png", "depth": f"depth/{name}.npy", "intrinsics": camera,
                   "focus_m": round(float(focus[j]), 6), "seed": int(s)}
            scenes_lines.append(json.dumps(row))
            if frames is not None:
                paths = []
                for i in range(frames.shape[1]):
                    write_image(out / "physics" / f"{name}_k{i}.png", frames[j, i].float() / 255.0)
                    paths.append(f"physics/{name}_k{i}.png")
                stack_lines.append(json.dumps({**row, "stack": paths, "K_px_m": [float(v) for v in physics_K]}))
    write_json(out / "intrinsics.json", cameras)
    write_text(out / "scenes.jsonl", "\n".join(scenes_lines) + "\n")
    if stack_lines:
        write_text(out / "stacks_physics.jsonl", "\n".join(stack_lines) + "\n")
    settings = {"num": num, "split": split, "seed": seed, "seeds": [seeds[0], seeds[-1]], "height": height,
                "width": width, "physics_K_px_m": physics_K, "focus_m": focus_m, "layer_ratio": layer_ratio,
                "scene_options": scene_options,
                "manifests": ["scenes.jsonl"] + (["stacks_physics.jsonl"] if stack_lines else [])}
    write_json(out / "export.json", settings)
    return settings


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bokeh.io import output_dir

    args = parse_args(argv)
    if args.num <= 0:
        raise ValueError(f"--num must be a positive number of scenes, got {args.num}")
    from physics.scenes import scene_options_from_json

    scene_options = scene_options_from_json(args.scene_options, "--scene-options")
    check_settings(num=args.num, height=args.size[0], width=args.size[1], physics_K=args.physics_K,
                   focus_m=args.focus_m, scene_options=scene_options, batch_size=args.batch_size,
                   layer_ratio=args.layer_ratio)
    with output_dir(args.out, overwrite=args.overwrite) as out:
        settings = export(out, num=args.num, split=args.split, seed=args.seed, height=args.size[0],
                          width=args.size[1], physics_K=args.physics_K, focus_m=args.focus_m,
                          layer_ratio=args.layer_ratio, scene_options=scene_options, batch_size=args.batch_size)
    print(f"wrote {args.num} {args.split} scenes to {out} ({', '.join(settings['manifests'])})")
    return settings


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as error:  # OSError: FileExistsError, cannot create --out, ...
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
