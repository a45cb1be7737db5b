"""Stage-1 data: the datasets a generator trains on, the targets physics renders for them, the DataModule.

Data (``data.kind``):
- ``synthetic``: physics.scenes, targets rendered by physics.render at K ~ U[K_min, K_max] (metric axis, at the
  training width). Focus policy ``data.synthetic.focus_m``: a number = one fixed focus distance (m) for every scene
  (100 m, the default, is effectively infinity for 0.5-10 m scenes: every surface lies in front of the focal plane,
  |r| = K (1/depth - 1/100), as in Stage-2's stacks); null = each scene's own focus (its nearest subject: the subject
  stays sharp, the rest lies behind the focal plane).
- ``rgbd_manifest``: a JSONL of {image, depth[, depth_scale][, focus_m]}; targets rendered like the synthetic ones.
  Focus: the row's focus_m, else ``data.rgbd.focus_m``, else (null) the 5th percentile of valid depth (the nearest
  subject, :func:`nearest_subject_focus`).
- ``pairs``: a JSONL of real (sharp, bokeh) photos {image, target, K_px_m | camera: {f_mm, f_number, focus_m,
  sensor_width_mm | f35_mm}}: the real bokeh photo IS the target (never re-rendered); K from physics.camera.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lightning_modules.config import ConfigError, check_focus_option
from lightning_modules.data import drops_last_batch

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def nearest_subject_focus(depth_m: torch.Tensor, quantile: float = 0.05) -> float:
    """Focus policy for RGB-D data without a focus distance: the ``quantile`` of valid depth (the nearest subject,
    so most of the scene lies behind the focal plane, as in the synthetic scenes)."""
    valid = depth_m[torch.isfinite(depth_m) & (depth_m > 0)]
    if valid.numel() == 0:
        raise ValueError("depth map has no valid (finite, > 0) pixel")
    return float(torch.quantile(valid.float(), quantile))


def physics_targets(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: torch.Tensor, focus_m: torch.Tensor,
                    render_options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Physics renders [B,3,H,W] (physics.render.render_bokeh, occlusion-aware) at K [B], focus [B]."""
    from physics.render import render_bokeh

    with torch.no_grad():
        out = render_bokeh(image, depth_m, K_px_m, focus_m, **dict(render_options or {}))
    return out.clamp(0, 1)


class SyntheticSplit(Dataset):
    """physics.scenes scenes of one split (seeds disjoint across splits): image, depth_m, focus_m.

    ``focus_m``: None = each scene's own focus (its nearest subject); a number = that focus (m) for every scene.
    """

    def __init__(self, split: str, count: int, height: int, width: int, seed: int, scene_options: Mapping[str, Any],
                 focus_m: float | None = None):
        from physics.scenes import make_scene

        self.make_scene = make_scene
        self.count, self.height, self.width = int(count), int(height), int(width)
        self.base = int(seed) * 10_000_019 + SPLIT_OFFSETS[split]
        self.options = dict(scene_options)
        self.focus_m = check_focus_option(focus_m)
        if self.count > 0:  # a bad scene option fails here, when the run is built, not at the first batch
            try:
                make_scene(self.base, self.height, self.width, **self.options)
            except TypeError as err:
                raise ValueError(f"data.synthetic.scene_options {self.options}: {err}") from None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.make_scene(self.base + index, self.height, self.width, **self.options)
        focus = self.focus_m if self.focus_m is not None else float(scene.focus_m)
        return {"image": scene.image, "depth_m": scene.depth_m, "focus_m": torch.tensor(focus),
                "index": torch.tensor(index)}


def config_synthetic_splits(cfg: Mapping[str, Any], counts: Mapping[str, int], user: str
                            ) -> dict[str, SyntheticSplit]:
    """The Stage-1 synthetic splits of a config (data.height / width / seed, data.synthetic scene_options and focus_m)
    with ``counts[split]`` scenes each, for tools that draw scenes themselves (the probes).

    ConfigError naming ``user`` when data.kind is not synthetic, and for a bad scene option or focus, before any
    scene is drawn.
    """
    data = cfg["data"]
    if data.get("kind", "synthetic") != "synthetic":
        raise ConfigError(f"{user} needs synthetic scenes (data.kind=synthetic); got {data.get('kind')!r}")
    syn = data.get("synthetic") or {}
    try:
        return {split: SyntheticSplit(split, count, int(data["height"]), int(data["width"]), int(data.get("seed", 0)),
                                      dict(syn.get("scene_options") or {}), syn.get("focus_m"))
                for split, count in counts.items()}
    except ValueError as error:  # ConfigError (a bad focus) included: one message naming the setting
        raise ConfigError(str(error)) from None


class RenderingCollate:
    """Collate, then render the batch's physics targets in ONE renderer call at fresh K ~ U[k_min, k_max].

    Used as the training DataLoader's collate_fn, so loader workers render while the main process trains.
    """

    def __init__(self, k_range: tuple[float, float], render_options: Mapping[str, Any] | None = None) -> None:
        self.k_min, self.k_max = float(k_range[0]), float(k_range[1])
        self.render_options = dict(render_options or {})

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from torch.utils.data import default_collate

        batch = default_collate(items)
        K = self.k_min + (self.k_max - self.k_min) * torch.rand(batch["image"].shape[0])
        batch["target"] = physics_targets(batch["image"], batch["depth_m"], K, batch["focus_m"], self.render_options)
        batch["K_px_m"] = K
        return batch


def _resize_crop(t: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Scale so the image covers (height, width), then centre-crop (aspect ratio kept, no distortion)."""
    h, w = t.shape[-2:]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    kwargs = {"mode": mode} if mode == "nearest" else {"mode": mode, "align_corners": False, "antialias": True}
    t = F.interpolate(t[None], size=(nh, nw), **kwargs)[0]
    top, left = (nh - height) // 2, (nw - width) // 2
    return t[..., top:top + height, left:left + width]


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{i}: not valid JSON ({error})") from error
    if not rows:
        raise ValueError(f"manifest {path} has no entries")
    return rows


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


class RGBDManifest(Dataset):
    """JSONL rows {image, depth[, depth_scale][, focus_m]}; paths relative to the manifest's folder.

    Focus of a row: its own ``focus_m``, else ``focus_m`` given here (a fixed focus, m), else (None) the nearest
    subject (:func:`nearest_subject_focus`).
    """

    def __init__(self, manifest: str | Path, height: int, width: int, focus_m: float | None = None) -> None:
        self.rows, self.base = _read_jsonl(manifest), Path(manifest).parent
        self.height, self.width = height, width
        self.focus_m = check_focus_option(focus_m, "data.rgbd.focus_m")
        for i, row in enumerate(self.rows, 1):
            for key in ("image", "depth"):
                if key not in row:
                    raise ValueError(f"{manifest}:{i}: missing '{key}' (rows need image and depth)")
            if row.get("focus_m") is not None:
                try:
                    check_focus_option(row["focus_m"], f"{manifest}:{i}: focus_m")
                except ConfigError as error:
                    raise ValueError(str(error)) from None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from bokeh.io import read_depth_for_image, read_image

        row = self.rows[index]
        image_path = _resolve(self.base, row["image"])
        image = read_image(image_path)
        # another size than the image is refused: resizing would silently pair the depth with other pixels
        depth, invalid = read_depth_for_image(_resolve(self.base, row["depth"]), image.shape[-2:],
                                              image_name=f"its image {image_path}", depth_scale=row.get("depth_scale"))
        n_depth = depth.numel()
        image = _resize_crop(image, self.height, self.width, "bilinear").clamp(0, 1)
        depth = _resize_crop(depth, self.height, self.width, "nearest")
        if row.get("focus_m") is not None:
            focus = float(row["focus_m"])
        else:
            focus = self.focus_m if self.focus_m is not None else nearest_subject_focus(depth)
        # holes (0 / NaN: no measurement) are rendered as far background rather than dropped: the renderer needs a depth
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.full_like(depth, 1e3))
        return {"image": image, "depth_m": depth, "focus_m": torch.tensor(focus), "index": torch.tensor(index),
                "invalid_depth_px": torch.tensor([invalid, n_depth])}  # holes of the file, of its pixels


def pair_k_px_m(row: Mapping[str, Any], image_width_px: int) -> float:
    """K of a real bokeh photo: given directly (``K_px_m``, for the stored width) or from its camera settings."""
    if "K_px_m" in row:
        return float(row["K_px_m"])
    cam = row.get("camera")
    if not cam:
        raise ValueError("a pair needs K_px_m or camera: {f_mm, f_number, focus_m, sensor_width_mm | f35_mm}")
    from physics.camera import k_from_lens

    return float(k_from_lens(cam["f_mm"], cam["f_number"], cam["focus_m"], image_width_px,
                             sensor_width_mm=cam.get("sensor_width_mm"), f35_mm=cam.get("f35_mm")))


class PairManifest(Dataset):
    """Real (sharp, bokeh) pairs used as they are: rows {image, target, K_px_m | camera}. K is converted to the
    training width (K scales with width)."""

    def __init__(self, manifest: str | Path, height: int, width: int) -> None:
        self.rows, self.base = _read_jsonl(manifest), Path(manifest).parent
        self.height, self.width = height, width

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from bokeh.io import read_image

        row = self.rows[index]
        image = read_image(_resolve(self.base, row["image"]))
        target = read_image(_resolve(self.base, row["target"]))
        if image.shape != target.shape:
            raise ValueError(f"pair {index}: image {tuple(image.shape)} and target {tuple(target.shape)} differ in size")
        h0, w0 = image.shape[-2:]
        K = pair_k_px_m(row, w0)
        image = _resize_crop(image, self.height, self.width, "bilinear").clamp(0, 1)
        target = _resize_crop(target, self.height, self.width, "bilinear").clamp(0, 1)
        scale = max(self.height / h0, self.width / w0)
        return {"image": image, "target": target, "K_px_m": torch.tensor(K * scale), "index": torch.tensor(index)}


class Stage1DataModule(L.LightningDataModule):
    """Train/val/test splits of one data kind (see the module docstring)."""

    def __init__(self, cfg: Mapping[str, Any], k_range: tuple[float, float] | None = None,
                 render_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.render_k = k_range
        self.render_options = dict(render_options or {})
        self.render_in_loader = False
        kind = self.cfg.get("kind", "synthetic")
        if kind not in ("synthetic", "rgbd_manifest", "pairs"):
            raise ConfigError(f"data.kind must be synthetic, rgbd_manifest or pairs, got {kind!r}")
        self.kind = kind
        # checked here, so a bad focus fails when the run is built, before anything trains
        self.synthetic_focus_m = check_focus_option((self.cfg.get("synthetic") or {}).get("focus_m"),
                                                    "data.synthetic.focus_m")
        self.rgbd_focus_m = check_focus_option((self.cfg.get("rgbd") or {}).get("focus_m"), "data.rgbd.focus_m")
        self.splits: dict[str, Dataset] = {}

    def check(self) -> None:
        """What a fit reads, checked before it starts (a ConfigError naming the key): a manifest kind needs
        ``data.manifest.train``, and every manifest given must exist and hold valid rows. Synthetic data passes (its
        settings are checked when the module is built)."""
        if self.kind == "synthetic":
            return
        manifests = self.cfg.get("manifest") or {}
        if not manifests.get("train"):
            raise ConfigError(f"data.manifest.train is required for data.kind={self.kind} (expected a JSONL manifest "
                              f"path, e.g. data.manifest.train=/data/train.jsonl)")
        h, w = int(self.cfg["height"]), int(self.cfg["width"])
        for split in ("train", "val", "test"):
            path = manifests.get(split)
            if path:
                try:
                    RGBDManifest(path, h, w, self.rgbd_focus_m) if self.kind == "rgbd_manifest" else PairManifest(path, h, w)
                except (OSError, ValueError) as error:
                    raise ConfigError(f"data.manifest.{split}={path}: {error}") from None

    def setup(self, stage: str | None = None) -> None:
        c = self.cfg
        h, w = int(c["height"]), int(c["width"])
        if self.splits:
            return
        if self.kind == "synthetic":
            syn = dict(c.get("synthetic") or {})
            for split in ("train", "val", "test"):
                self.splits[split] = SyntheticSplit(split, int(syn[f"num_{split}"]), h, w, int(c.get("seed", 0)),
                                                    syn.get("scene_options") or {}, self.synthetic_focus_m)
            self.render_in_loader = bool(syn.get("render_in_loader", False)) and self.render_k is not None
        else:
            for split in ("train", "val", "test"):
                path = (c.get("manifest") or {}).get(split)
                if path:
                    self.splits[split] = (RGBDManifest(path, h, w, self.rgbd_focus_m) if self.kind == "rgbd_manifest"
                                          else PairManifest(path, h, w))
            if "train" not in self.splits:
                raise ConfigError(f"data.manifest.train is required for data.kind={self.kind}")

    def _loader(self, split: str, shuffle: bool) -> DataLoader | list:
        if split not in self.splits:
            return []
        bs = int(self.cfg["batch_size"] if split == "train" else self.cfg.get("eval_batch_size", self.cfg["batch_size"]))
        workers = int(self.cfg.get("num_workers", 0)) if split == "train" else 0
        collate = RenderingCollate(self.render_k, self.render_options) if split == "train" and self.render_in_loader else None
        return DataLoader(self.splits[split], batch_size=bs, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                          drop_last=shuffle and drops_last_batch(len(self.splits[split]), bs), persistent_workers=workers > 0)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
