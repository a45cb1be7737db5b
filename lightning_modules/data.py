"""Stage-2 data: LightningDataModules over synthetic physics stacks, JSONL manifests and real aperture pairs.

Every dataset yields the same sample dict (shapes per sample; the default collate stacks them into a batch):

    image       Tensor[3,H,W]   float32 sRGB in [0,1], the sharp reference frame
    stack       Tensor[N,3,H,W] float32 sRGB in [0,1], bokeh frames of the same view
    K_px_m      Tensor[N]       float32, blur strength of each frame on the metric axis (px*m)
    depth_m     Tensor[1,H,W]   float32 metres; 0 where invalid (NaN, zero, outside [min_depth_m, max_depth_m])
    valid       Tensor[1,H,W]   bool, pixels that count in losses and metrics
    focus_m     Tensor[]        float32 metres, NaN when unknown
    intrinsics  Tensor[3,3]     float32 pixels (fx, fy, cx, cy of the image as delivered, after crops/resizes)
    name        str

Sizes must be multiples of the ViT patch (14) for the Stage-2 encoders; the DataModules take care of it through
their ``height``/``width`` or ``crop`` settings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bokeh.datasets import resize_sample
from lightning_modules.config import check_focus_option, check_number
from physics.render import RENDERER_VERSION

# Seeds of the synthetic splits are disjoint by construction: split s uses seeds base + offset[s] + i, i < count,
# and counts are far below the offsets.
SPLIT_SEED_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000, "predict": 2_000_000}


class DataError(ValueError):
    """A sample or a dataset description is invalid; the message names the file, line or field."""


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def valid_depth_mask(depth_m: torch.Tensor, min_depth_m: float = 1e-3, max_depth_m: float = math.inf) -> torch.Tensor:
    """Pixels with a usable depth: finite, > 0 and within [min_depth_m, max_depth_m]. Returns bool, shape of depth_m."""
    return torch.isfinite(depth_m) & (depth_m > 0) & (depth_m >= min_depth_m) & (depth_m <= max_depth_m)


def clean_depth(depth_m: torch.Tensor, *, name: str, min_depth_m: float, max_depth_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (depth with invalid pixels set to 0, valid mask). Raises DataError if no pixel is valid.

    Args:
        depth_m: Tensor[1,H,W] metres, may hold NaN / inf / 0 / negatives for missing values.
        name: what to call the sample in the error message (file, manifest line...).
    """
    valid = valid_depth_mask(depth_m, min_depth_m, max_depth_m)
    if not bool(valid.any()):
        finite = depth_m[torch.isfinite(depth_m)]
        span = f"finite values span [{finite.min():.4g}, {finite.max():.4g}] m" if finite.numel() else "no finite value"
        raise DataError(
            f"{name}: depth has no valid pixel (valid = finite, > 0 and within [{min_depth_m}, {max_depth_m}] m; "
            f"{span}). Check the depth file and its depth_scale."
        )
    return torch.where(valid, depth_m, torch.zeros_like(depth_m)), valid


def crop_and_flip(sample: dict[str, Any], top: int, left: int, height: int, width: int, flip: bool) -> dict[str, Any]:
    """Apply ONE crop window (and optional horizontal flip) to the image, every stack frame, the depth and mask.

    All frames share the same window, so a pixel (y, x) of the output is pixel (top + y, left + x) of every input
    frame (mirrored as x -> W_crop - 1 - x when flipped). Intrinsics follow: cx -= left, cy -= top; flip cx -> W-1-cx.
    """
    sl = (..., slice(top, top + height), slice(left, left + width))
    out = dict(sample)
    for key in ("image", "stack", "depth_m", "valid"):
        out[key] = sample[key][sl]
        if flip:
            out[key] = out[key].flip(-1)
    k = sample["intrinsics"].clone()
    k[0, 2] -= left
    k[1, 2] -= top
    if flip:
        k[0, 2] = (width - 1) - k[0, 2]
    out["intrinsics"] = k
    return out


def default_intrinsics(height: int, width: int, fx_px: float | None = None) -> torch.Tensor:
    """Pinhole intrinsics [3,3] with the principal point at the image centre (fx = fy = width when unknown)."""
    fx = float(fx_px) if fx_px is not None else float(width)
    return torch.tensor([[fx, 0.0, (width - 1) / 2], [0.0, fx, (height - 1) / 2], [0.0, 0.0, 1.0]])


def parse_intrinsics(value: Any, *, name: str) -> torch.Tensor:
    """[fx, fy, cx, cy] or a 3x3 nested list -> Tensor[3,3]; DataError naming ``name`` otherwise."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.shape == (4,):
        fx, fy, cx, cy = t.tolist()
        return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if t.shape == (3, 3):
        return t
    raise DataError(f"{name}: intrinsics must be [fx, fy, cx, cy] or a 3x3 matrix, got shape {list(t.shape)}")


def _check_multiple(value: int, what: str, multiple: int) -> None:
    if value % multiple:
        raise DataError(f"{what}={value} must be a multiple of {multiple} (the ViT patch size)")


def _io():
    from bokeh import io  # lazy: bokeh.io is the shared reader/writer module

    return io


# ----------------------------------------------------------------------------------------------------------------
# (a) Synthetic physics scenes with cached bokeh stacks
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SyntheticSplit:
    """One rendered split held in memory. Images as uint8 (like photographs) to keep thousands of samples small."""

    image: torch.Tensor  # [S,3,H,W] uint8 sRGB
    stack: torch.Tensor  # [S,N,3,H,W] uint8 sRGB
    depth_m: torch.Tensor  # [S,1,H,W] float32
    K_px_m: torch.Tensor  # [S,N] float32
    focus_m: torch.Tensor  # [S] float32
    intrinsics: torch.Tensor  # [S,3,3] float32
    seeds: torch.Tensor  # [S] int64


def render_synthetic_split(
    seeds: Sequence[int],
    *,
    height: int,
    width: int,
    K_px_m: Sequence[float],
    focus_m: float | None = None,
    scene_options: Mapping[str, Any] | None = None,
    render_options: Mapping[str, Any] | None = None,
    noise_std: float = 0.0,
    batch_size: int = 64,
    progress: bool = True,
) -> SyntheticSplit:
    """Render scenes ``physics.scenes.make_scene(seed, ...)`` and their bokeh stacks in batches.

    Args:
        seeds: one scene per seed (deterministic).
        K_px_m: N strengths (px*m) at this image width; the stack has N frames.
        focus_m: None -> each scene's own focus (nearest subject); a number overrides it for every scene.
        noise_std: std of Gaussian sensor noise added to every frame and the reference (sRGB units), seeded per scene.
    """
    from physics.scenes import make_scene
    from physics.stacks import bokeh_stack

    scene_options = dict(scene_options or {})
    render_options = dict(render_options or {})
    K = torch.tensor(list(K_px_m), dtype=torch.float32)
    images, stacks, depths, focuses, intrinsics = [], [], [], [], []
    seeds = list(seeds)
    iterator = range(0, len(seeds), batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"rendering {len(seeds)} synthetic stacks", unit="batch", leave=False)
    for start in iterator:
        chunk = seeds[start : start + batch_size]
        scenes = [make_scene(int(s), height, width, **scene_options) for s in chunk]
        image = torch.stack([torch.as_tensor(s.image, dtype=torch.float32) for s in scenes])
        depth = torch.stack([torch.as_tensor(s.depth_m, dtype=torch.float32) for s in scenes])
        focus = torch.tensor([float(focus_m) if focus_m is not None else float(s.focus_m) for s in scenes])
        with torch.no_grad():
            frames = bokeh_stack(image, depth, K, focus, **render_options).frames
        if noise_std > 0:
            g = torch.Generator().manual_seed(int(chunk[0]) * 7919 + 17)
            image = image + noise_std * torch.randn(image.shape, generator=g)
            frames = frames + noise_std * torch.randn(frames.shape, generator=g)
        images.append(_to_uint8(image))
        stacks.append(_to_uint8(frames))
        depths.append(depth)
        focuses.append(focus)
        intrinsics.append(torch.stack([torch.as_tensor(s.intrinsics, dtype=torch.float32) for s in scenes]))
    n = len(seeds)
    return SyntheticSplit(
        image=torch.cat(images),
        stack=torch.cat(stacks),
        depth_m=torch.cat(depths),
        K_px_m=K[None].expand(n, -1).clone(),
        focus_m=torch.cat(focuses),
        intrinsics=torch.cat(intrinsics),
        seeds=torch.tensor(seeds, dtype=torch.int64),
    )


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class SyntheticStackDataset(Dataset):
    """Samples of a rendered :class:`SyntheticSplit` in the common sample format."""

    def __init__(self, split: SyntheticSplit, *, min_depth_m: float = 1e-3, max_depth_m: float = math.inf) -> None:
        self.split = split
        self.min_depth_m, self.max_depth_m = min_depth_m, max_depth_m

    def __len__(self) -> int:
        return int(self.split.image.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.split
        name = f"synthetic scene seed={int(s.seeds[i])}"
        depth, valid = clean_depth(s.depth_m[i], name=name, min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)
        return {
            "image": s.image[i].float() / 255.0,
            "stack": s.stack[i].float() / 255.0,
            "K_px_m": s.K_px_m[i],
            "depth_m": depth,
            "valid": valid,
            "focus_m": s.focus_m[i],
            "intrinsics": s.intrinsics[i],
            "name": name,
        }


# In-process cache: the embedded default trains two models (base, BokehDepth) on the same data in one process.
_SPLIT_CACHE: dict[str, SyntheticSplit] = {}


def check_synthetic_options(scene_options: Any, render_options: Any, key: str) -> None:
    """``<key>.scene_options`` (physics.scenes.make_scene's keyword arguments) and ``<key>.render_options``
    (physics.render.render_bokeh's): a ConfigError naming an unknown option when the data config is built, not when
    the first split renders."""
    from lightning_modules.config import check_keyword_options
    from physics.render import render_bokeh
    from physics.scenes import make_scene

    check_keyword_options(scene_options, make_scene, f"{key}.scene_options", exclude=("seed", "height", "width"))
    check_keyword_options(render_options, render_bokeh, f"{key}.render_options",
                          exclude=("image", "depth_m", "K_px_m", "focus_m", "return_radius"))


def drops_last_batch(num_samples: int, batch_size: int) -> bool:
    """Whether a shuffled training loader drops its last, partial batch: when there is at least one full batch (a
    split smaller than one batch still trains, on one short batch)."""
    return num_samples >= batch_size


def training_batches(num_samples: int, batch_size: int, *, drop_last: bool = True) -> int:
    """The batches of one training epoch of ``num_samples`` (one process): :func:`drops_last_batch`'s rule when the
    loader drops a partial batch, else every batch, a partial last one included."""
    if drop_last and drops_last_batch(num_samples, batch_size):
        return num_samples // batch_size
    return math.ceil(num_samples / batch_size)


class SyntheticStackDataModule(L.LightningDataModule):
    """Synthetic RGB-D scenes (physics.scenes) with bokeh stacks (physics.stacks), rendered once and cached.

    Splits use disjoint seeds (``seed + SPLIT_SEED_OFFSETS[split] + i``). Stacks are rendered in batches on first
    use and kept in memory (and, with ``cache_dir``, on disk as ``synthetic_<hash>.pt`` keyed by every setting that
    changes the pixels), so both models of the base-vs-BokehDepth comparison train on identical tensors.
    """

    def __init__(
        self,
        *,
        height: int = 112,
        width: int = 112,
        num_train: int = 1000,
        num_val: int = 100,
        num_test: int = 200,
        seed: int = 0,
        K_px_m: Sequence[float] = (10.0, 20.0, 30.0),
        focus_m: float | None = None,
        scene_options: Mapping[str, Any] | None = None,
        render_options: Mapping[str, Any] | None = None,
        noise_std: float = 0.0,
        hflip: bool = True,
        min_depth_m: float = 1e-3,
        max_depth_m: float = 100.0,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        render_batch_size: int = 64,
        render_threads: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        _check_multiple(height, "data.synthetic.height", 14)
        _check_multiple(width, "data.synthetic.width", 14)
        if len(K_px_m) == 0:
            raise DataError("data.synthetic.K_px_m must list at least one stack strength (px*m), e.g. [10, 20, 30]")
        if any(float(k) <= 0 for k in K_px_m):
            raise DataError(f"data.synthetic.K_px_m must be positive (px*m), got {list(K_px_m)}")
        focus_m = check_focus_option(focus_m, "data.synthetic.focus_m")
        check_synthetic_options(scene_options, render_options, "data.synthetic")
        counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
        for key, value in counts.items():
            if not 0 <= value < 1_000_000:
                raise DataError(f"data.synthetic.{key}={value} must lie in [0, 1000000) so split seeds stay disjoint")
        self.height, self.width = height, width
        self.counts = {"train": num_train, "val": num_val, "test": num_test, "predict": num_test}
        self.seed = seed
        self.K_px_m = [float(k) for k in K_px_m]
        self.focus_m = None if focus_m is None else float(focus_m)
        self.scene_options = dict(scene_options or {})
        self.render_options = dict(render_options or {})
        self.noise_std = noise_std
        self.hflip = hflip
        self.min_depth_m, self.max_depth_m = min_depth_m, max_depth_m
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.render_batch_size = render_batch_size
        if render_threads is not None and int(render_threads) < 1:
            raise DataError(f"data.synthetic.render_threads must be >= 1 or null (all cores), got {render_threads}")
        self.render_threads = render_threads
        self.cache_dir = cache_dir
        self.datasets: dict[str, SyntheticStackDataset] = {}

    def split_seeds(self, split: str) -> list[int]:
        base = self.seed + SPLIT_SEED_OFFSETS[split]
        return list(range(base, base + self.counts[split]))

    def cache_key(self, split: str) -> str:
        key = json.dumps(
            {
                "split": split, "seeds": [self.seed + SPLIT_SEED_OFFSETS[split], self.counts[split]],
                "hw": [self.height, self.width], "K": self.K_px_m, "focus": self.focus_m,
                "scene": self.scene_options, "render": self.render_options, "noise": self.noise_std,
                "renderer_version": RENDERER_VERSION,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def load_split(self, split: str) -> SyntheticSplit:
        """Render (or fetch from the memory / disk cache) one split."""
        key = self.cache_key(split)
        if key in _SPLIT_CACHE:
            return _SPLIT_CACHE[key]
        path = Path(self.cache_dir) / f"synthetic_{key}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            data = SyntheticSplit(**torch.load(path, weights_only=True))
        else:
            # Rendering happens once, before any training: it may use every core even when training runs
            # single-threaded (threads=1, e.g. two variants side by side). The thread count changes float rounding in
            # the last bit, which flips a handful of stored uint8 values by one level (measured: 2 of 7.2 M at 1 vs 2
            # threads); set render_threads for splits identical across machines with different core counts.
            threads = torch.get_num_threads()
            torch.set_num_threads(int(self.render_threads or os.cpu_count() or 1))
            try:
                data = render_synthetic_split(
                    self.split_seeds(split), height=self.height, width=self.width, K_px_m=self.K_px_m,
                    focus_m=self.focus_m, scene_options=self.scene_options, render_options=self.render_options,
                    noise_std=self.noise_std, batch_size=self.render_batch_size,
                )
            finally:
                torch.set_num_threads(threads)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                torch.save(data.__dict__, tmp)
                tmp.replace(path)
        _SPLIT_CACHE[key] = data
        return data

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in wanted.get(stage or "", ["train", "val", "test"]):
            if split not in self.datasets and self.counts[split] > 0:
                self.datasets[split] = SyntheticStackDataset(self.load_split(split), min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "fit", "test": "test"}[split])
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=shuffle and drops_last_batch(len(dataset), self.batch_size),
            num_workers=self.num_workers,
            collate_fn=HFlipCollate(self.hflip and shuffle),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class HFlipCollate:
    """Default collate, then (when enabled) a random horizontal flip per sample applied to ALL its frames alike."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = torch.utils.data.default_collate(samples)
        if self.enabled:
            flip = torch.rand(len(samples)) < 0.5
            if bool(flip.any()):
                for key in ("image", "stack", "depth_m", "valid"):
                    x = batch[key]
                    batch[key] = torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
                w = batch["image"].shape[-1]
                batch["intrinsics"][flip, 0, 2] = (w - 1) - batch["intrinsics"][flip, 0, 2]
        return batch


# ----------------------------------------------------------------------------------------------------------------
# (b) JSONL manifest of real samples
# ----------------------------------------------------------------------------------------------------------------


class ManifestDataset(Dataset):
    """Samples listed in a JSONL manifest, one JSON object per line (paths relative to the manifest's folder):

        {"image": "rgb/0001.png", "depth": "depth/0001.png", "stack": ["f2.8/0001.png", ...],
         "K_px_m": [6.1, ...], "intrinsics": [fx, fy, cx, cy], "focus_m": 1.7, "depth_scale": 1000}

    ``focus_m`` and ``depth_scale`` are optional (``.npy`` depth is metres; PNG depth is divided by depth_scale, the
    dataset-level ``depth_scale`` by default). Every file is checked when the manifest is read, so a missing file
    fails at once, naming the manifest line and the path. With ``crop`` = (h, w), one random window (and with
    ``hflip`` one random flip) is drawn per sample and applied to every frame, the depth and the intrinsics, so the
    frames stay pixel-aligned; ``random_crop=False`` takes the centre window (evaluation). ``resize`` = (h, w) first
    resizes everything (K and intrinsics scale with the width).
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        crop: Sequence[int] | None = None,
        resize: Sequence[int] | None = None,
        random_crop: bool = True,
        hflip: bool = False,
        depth_scale: float | None = None,
        min_depth_m: float = 1e-3,
        max_depth_m: float = math.inf,
    ) -> None:
        self.path = Path(manifest)
        if not self.path.is_file():
            raise DataError(f"manifest {self.path} does not exist")
        self.crop = tuple(crop) if crop else None
        self.resize = tuple(resize) if resize else None
        self.random_crop, self.hflip = random_crop, hflip
        self.depth_scale = depth_scale
        self.min_depth_m, self.max_depth_m = min_depth_m, max_depth_m
        self.records = [self._parse_line(n, line) for n, line in self._lines()]
        if not self.records:
            raise DataError(f"manifest {self.path} lists no sample")

    def _lines(self) -> list[tuple[int, str]]:
        lines = self.path.read_text().splitlines()
        return [(n, line) for n, line in enumerate(lines, start=1) if line.strip() and not line.lstrip().startswith("#")]

    def _parse_line(self, n: int, line: str) -> dict[str, Any]:
        where = f"{self.path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error})") from error
        if not isinstance(rec, dict):
            raise DataError(f"{where}: each line must be a JSON object, got {type(rec).__name__}")
        for key in ("image", "depth", "stack", "K_px_m"):
            if key not in rec:
                raise DataError(f"{where}: missing field '{key}' (fields: image, depth, stack, K_px_m, intrinsics, focus_m?)")
        stack, ks = rec["stack"], rec["K_px_m"]
        if isinstance(stack, str):
            stack = [stack]
        if not isinstance(ks, list):
            ks = [ks]
        if len(stack) != len(ks):
            raise DataError(f"{where}: {len(stack)} stack frames but {len(ks)} K_px_m values; give one K per frame")
        if not stack:
            raise DataError(f"{where}: 'stack' lists no frame")
        try:
            ks = [float(k) for k in ks]
        except (TypeError, ValueError) as error:
            raise DataError(f"{where}: K_px_m must be numbers (px*m), got {rec['K_px_m']!r}") from error
        if any(not math.isfinite(k) or k < 0 for k in ks):
            raise DataError(f"{where}: K_px_m must be finite and >= 0 (px*m), got {ks}")
        root = self.path.parent
        paths = {"image": root / rec["image"], "depth": root / rec["depth"]}
        frames = [root / p for p in stack]
        for field, p in list(paths.items()) + [(f"stack[{i}]", p) for i, p in enumerate(frames)]:
            if not p.is_file():
                raise DataError(f"{where}: {field} file {p} does not exist")
        out = {"where": where, "image": paths["image"], "depth": paths["depth"], "stack": frames, "K_px_m": ks}
        out["intrinsics"] = parse_intrinsics(rec["intrinsics"], name=where) if rec.get("intrinsics") is not None else None
        out["focus_m"] = float(rec["focus_m"]) if rec.get("focus_m") is not None else math.nan
        out["depth_scale"] = rec.get("depth_scale", self.depth_scale)
        return out

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> dict[str, Any]:
        """Read sample i at full size (no crop), checking sizes."""
        io = _io()
        rec = self.records[i]
        where = rec["where"]
        image = io.read_image(rec["image"])
        h, w = image.shape[-2:]
        frames = []
        for j, p in enumerate(rec["stack"]):
            frame = io.read_image(p)
            if frame.shape[-2:] != (h, w):
                raise DataError(
                    f"{where}: stack[{j}] {p} is {frame.shape[-1]}x{frame.shape[-2]} but the image is {w}x{h}; "
                    "frames must be registered to the reference at the same size"
                )
            frames.append(frame)
        depth = io.read_depth(rec["depth"], depth_scale=rec["depth_scale"])
        if depth.shape[-2:] != (h, w):
            raise DataError(f"{where}: depth {rec['depth']} is {depth.shape[-1]}x{depth.shape[-2]} but the image is {w}x{h}")
        depth, valid = clean_depth(depth.float(), name=f"{where} ({rec['depth']})", min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)
        intrinsics = rec["intrinsics"] if rec["intrinsics"] is not None else default_intrinsics(h, w)
        return {
            "image": image, "stack": torch.stack(frames), "K_px_m": torch.tensor(rec["K_px_m"], dtype=torch.float32),
            "depth_m": depth, "valid": valid, "focus_m": torch.tensor(rec["focus_m"], dtype=torch.float32),
            "intrinsics": intrinsics.clone(), "name": Path(rec["image"]).stem,
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.load(i)
        if self.resize:
            sample = resize_sample(sample, *self.resize)
        if self.crop:
            ch, cw = self.crop
            h, w = sample["image"].shape[-2:]
            if ch > h or cw > w:
                raise DataError(f"{self.records[i]['where']}: crop {ch}x{cw} is larger than the image {h}x{w}")
            if self.random_crop:  # the global RNG: seeded by seed_everything (and per worker by Lightning)
                top = int(torch.randint(0, h - ch + 1, (1,)))
                left = int(torch.randint(0, w - cw + 1, (1,)))
            else:
                top, left = (h - ch) // 2, (w - cw) // 2
            flip = self.hflip and bool(torch.rand(1) < 0.5)
            sample = crop_and_flip(sample, top, left, ch, cw, flip)
            if not bool(sample["valid"].any()):
                raise DataError(f"{self.records[i]['where']}: the crop at ({top}, {left}) holds no valid depth pixel")
        return sample


# ----------------------------------------------------------------------------------------------------------------
# (c) Aperture pairs: sharp photo + real defocused photo(s) + camera settings
# ----------------------------------------------------------------------------------------------------------------


class AperturePairsDataset(Dataset):
    """Real aperture pairs listed in a CSV index (the layout of DFD-indoor):

        id,rgb_f2_8,rgb_f8,depth_mm
        dev_000,f2.8/dev_000.jpg,f8/dev_000.jpg,depth/dev_000.png

    The ``reference`` column (narrow aperture, e.g. f/8) is the sharp image; each ``stack`` column is one real
    defocused frame whose K comes from the thin lens (``physics.camera.k_from_lens``) with the given f-number, the
    lens focal length, the focus distance and the sensor width, at the delivered image width. Images are resized to
    (height, width) (multiples of 14); K and intrinsics scale with the width.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        index: str = "index.csv",
        reference: str = "rgb_f8",
        stack: Sequence[str] = ("rgb_f2_8",),
        f_numbers: Sequence[float] = (2.8,),
        f_mm: float = 35.0,
        sensor_width_mm: float = 23.6,
        focus_m: float = 1.7,
        depth: str = "depth_mm",
        depth_scale: float = 1000.0,
        height: int | None = None,
        width: int | None = None,
        min_depth_m: float = 1e-3,
        max_depth_m: float = math.inf,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root)
        index_path = self.root / index
        if not index_path.is_file():
            raise DataError(f"aperture-pairs index {index_path} does not exist")
        if len(stack) != len(f_numbers):
            raise DataError(f"{len(stack)} stack columns {list(stack)} but {len(f_numbers)} f_numbers {list(f_numbers)}; give one f-number per column")
        if any(float(n) <= 0 for n in f_numbers):
            raise DataError(f"f_numbers must be positive, got {list(f_numbers)}")
        if height is not None:
            _check_multiple(height, "height", 14)
        if width is not None:
            _check_multiple(width, "width", 14)
        self.reference, self.stack_columns, self.f_numbers = reference, list(stack), [float(n) for n in f_numbers]
        self.f_mm, self.sensor_width_mm, self.focus_m = float(f_mm), float(sensor_width_mm), float(focus_m)
        self.depth_column, self.depth_scale = depth, depth_scale
        self.height, self.width = height, width
        self.min_depth_m, self.max_depth_m = min_depth_m, max_depth_m
        with index_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            for col in [reference, depth, *stack]:
                if col not in columns:
                    raise DataError(f"{index_path}: no column '{col}' (columns: {columns})")
            self.rows = []
            for n, row in enumerate(reader, start=2):
                for col in [reference, depth, *stack]:
                    if not (self.root / row[col]).is_file():
                        raise DataError(f"{index_path}:{n}: {col} file {self.root / row[col]} does not exist")
                self.rows.append((n, row))
        if limit is not None:
            self.rows = self.rows[:limit]
        if not self.rows:
            raise DataError(f"{index_path} lists no sample")
        self.index_path = index_path

    def __len__(self) -> int:
        return len(self.rows)

    def k_px_m(self, image_width_px: int) -> list[float]:
        """Thin-lens K (px*m) of each stack column at the given image width."""
        from physics.camera import k_from_lens

        return [
            float(k_from_lens(self.f_mm, n, self.focus_m, image_width_px, sensor_width_mm=self.sensor_width_mm))
            for n in self.f_numbers
        ]

    def __getitem__(self, i: int) -> dict[str, Any]:
        io = _io()
        n, row = self.rows[i]
        where = f"{self.index_path}:{n}"
        image = io.read_image(self.root / row[self.reference])
        h, w = image.shape[-2:]
        frames = []
        for col in self.stack_columns:
            frame = io.read_image(self.root / row[col])
            if frame.shape[-2:] != (h, w):
                raise DataError(f"{where}: {col} is {frame.shape[-1]}x{frame.shape[-2]} but {self.reference} is {w}x{h}")
            frames.append(frame)
        depth = io.read_depth(self.root / row[self.depth_column], depth_scale=self.depth_scale).float()
        if depth.shape[-2:] != (h, w):
            raise DataError(f"{where}: depth is {depth.shape[-1]}x{depth.shape[-2]} but {self.reference} is {w}x{h}")
        depth, valid = clean_depth(depth, name=f"{where} ({row[self.depth_column]})", min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)
        fx = self.f_mm / self.sensor_width_mm * w
        sample = {
            "image": image, "stack": torch.stack(frames), "K_px_m": torch.tensor(self.k_px_m(w), dtype=torch.float32),
            "depth_m": depth, "valid": valid, "focus_m": torch.tensor(self.focus_m),
            "intrinsics": default_intrinsics(h, w, fx), "name": str(row.get("id", n)),
        }
        if self.height is not None and self.width is not None:
            sample = resize_sample(sample, self.height, self.width)
        return sample


# ----------------------------------------------------------------------------------------------------------------
# DataModules over (b) and (c), and the config builder
# ----------------------------------------------------------------------------------------------------------------


class FileDataModule(L.LightningDataModule):
    """Wraps per-split datasets (manifest or aperture pairs) into loaders; a split given as None is skipped."""

    def __init__(self, datasets: Mapping[str, Dataset | None], *, batch_size: int = 4, eval_batch_size: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        self.datasets = {k: v for k, v in datasets.items() if v is not None}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise DataError(f"this data config has no '{split}' split (splits: {sorted(self.datasets)})")
        return DataLoader(self.datasets[split], batch_size=self.batch_size if shuffle else self.eval_batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def build_datamodule(data_cfg: Mapping[str, Any]) -> L.LightningDataModule:
    """Build a DataModule from ``cfg.data``: loader settings at the top, one section per dataset kind.

        data:
          kind: synthetic            # synthetic | manifest | aperture_pairs: which section below is used
          batch_size: 16             # per process
          eval_batch_size: 32
          num_workers: 0
          synthetic: {...}           # keyword arguments of SyntheticStackDataModule
          manifest: {train, val, test (paths or null), crop, resize, hflip, depth_scale, min_depth_m, max_depth_m}
          aperture_pairs: {...}      # keyword arguments of AperturePairsDataset (root, ...); used for every split

    Sections of other kinds are not used (their keys are checked), so configs of several kinds can be merged and
    switched with ``data.kind``.
    """
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    kind = cfg.get("kind", "synthetic")
    kinds = ("synthetic", "manifest", "aperture_pairs")
    if kind not in kinds:
        raise DataError(f"data.kind='{kind}' is unknown; expected one of {', '.join(kinds)}")
    loader = {k: cfg[k] for k in ("batch_size", "eval_batch_size", "num_workers") if k in cfg}
    for key, low in (("batch_size", 1), ("eval_batch_size", 1), ("num_workers", 0)):
        if loader.get(key) is not None:
            check_number(loader[key], f"data.{key}", low, integer=True,
                         expected=f"an integer >= {low}" + (" or null (= batch_size)" if key == "eval_batch_size" else ""))
    from lightning_modules.config import check_keyword_options

    # the keys of every kind's section (present ones), so that a misspelt key fails even in a section not used now
    check_keyword_options(cfg.get("synthetic"), SyntheticStackDataModule.__init__, "data.synthetic",
                          exclude=("batch_size", "eval_batch_size", "num_workers"))
    check_keyword_options(cfg.get("manifest"), ManifestDataset.__init__, "data.manifest",
                          exclude=("manifest", "random_crop"), extra=("train", "val", "test"))
    check_keyword_options(cfg.get("aperture_pairs"), AperturePairsDataset.__init__, "data.aperture_pairs")
    section = dict(cfg.get(kind) or {})
    if kind == "synthetic":
        return SyntheticStackDataModule(**section, **loader)
    if kind == "manifest":
        splits = {s: section.pop(s, None) for s in ("train", "val", "test")}
        if not any(splits.values()):
            raise DataError("data.manifest needs at least one of train / val / test (JSONL manifest paths)")
        crop, hflip = section.pop("crop", None), section.pop("hflip", False)
        datasets = {
            s: ManifestDataset(p, crop=crop, random_crop=(s == "train"), hflip=bool(hflip) and s == "train", **section) if p else None
            for s, p in splits.items()
        }
        return FileDataModule(datasets, **loader)
    if "root" not in section or not section["root"]:
        raise DataError("data.aperture_pairs.root must name the folder holding the index CSV")
    ds = AperturePairsDataset(**section)
    return FileDataModule({"train": ds, "val": ds, "test": ds}, **loader)
