"""Readers for real RGB-D evaluation data: NYUv2-style, KITTI-style, generic RGB-D folders, aperture pairs.

Every reader is a ``torch.utils.data.Dataset`` whose items are dicts in the project's conventions:

- ``image``: Tensor[3, H, W] float32 sRGB in [0, 1]
- ``depth_m``: Tensor[1, H, W] float32 metres along the optical axis (z), 0 where there is no measurement
- ``valid``: Tensor[1, H, W] bool: finite, > 0 and inside the dataset's depth caps (and crop, when one is set)
- ``intrinsics``: Tensor[3, 3] float32 pinhole matrix in pixels (integer pixel centres, as kornia);
  ``fx``, ``fy``, ``cx``, ``cy``: the same as floats
- ``name``: str; ``dataset``: str
- aperture pairs also carry ``frames``: Tensor[N, 3, H, W] (the other exposures), ``frame_f_numbers``:
  Tensor[N], ``f_number`` (of ``image``) and ``f_mm``.

Samples whose files are missing or corrupt are skipped with a warning when the dataset is built (the rest are
kept); they are listed in ``dataset.skipped`` (dicts with ``name``, ``path``, ``reason``) so that tools can report
them. A depth map of another size than its image, absurd intrinsics, or an empty folder are errors.

Standard evaluation protocol helpers: :data:`DEPTH_CAPS_M` (NYU 1e-3..10 m, KITTI 1e-3..80 m), the Eigen crop
(NYUv2, :func:`eigen_crop_mask`) and the Garg crop (KITTI, :func:`garg_crop_mask`).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from bokeh.io import IMAGE_SUFFIXES, read_depth, read_image

#: (min, max) metres counted as valid ground truth, per dataset kind (the field's standard caps).
DEPTH_CAPS_M: dict[str, tuple[float, float]] = {
    "nyu": (1e-3, 10.0),
    "kitti": (1e-3, 80.0),
    # The DFD-indoor authors filled the Kinect holes; below ~0.5 m and beyond ~4 m the values are mostly filled,
    # so the strict range is the default (see the data notes).
    "dfd_indoor": (0.5, 4.0),
    "generic": (1e-3, 1e4),
}

#: Default crop per dataset kind (None = whole image).
DEFAULT_CROP: dict[str, str | None] = {"nyu": "eigen", "kitti": "garg", "dfd_indoor": None, "generic": None}

#: DFD indoor camera: Nikon D200 (APS-C, 23.6 mm wide sensor), 35 mm lens, photographed at f/2.8 and f/8.
DFD_INDOOR_CAMERA = {"f_mm": 35.0, "sensor_width_mm": 23.6, "f_numbers": {"f2_8": 2.8, "f8": 8.0}}

DEPTH_SUFFIXES = (".npy", ".png", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset folder or manifest cannot be used (empty, inconsistent, or with absurd values)."""


# ------------------------------------------------------------------------------------------------- intrinsics


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels: ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` (integer pixel centres).

    Construction checks that ``fx``, ``fy`` are finite and > 0 and ``cx``, ``cy`` finite; :meth:`check_image`
    also checks the principal point lies in the image and the field of view is physical.
    """

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        for key in ("fx", "fy", "cx", "cy"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise DatasetError(f"intrinsics {key} must be a finite number of pixels, got {value!r}")
        if self.fx <= 0 or self.fy <= 0:
            raise DatasetError(f"intrinsics fx and fy must be > 0 pixels, got fx={self.fx}, fy={self.fy}")

    def check_image(self, width: int, height: int, where: str = "") -> "Intrinsics":
        """Raise :class:`DatasetError` when these intrinsics cannot belong to a ``width`` x ``height`` image.

        Absurd: principal point outside the image, or a horizontal field of view above 170 deg (fx < 0.044 W)
        or below 0.5 deg (fx > 115 W), which no pinhole photograph has.
        """
        prefix = f"{where}: " if where else ""
        if not (-0.5 <= self.cx <= width - 0.5) or not (-0.5 <= self.cy <= height - 0.5):
            raise DatasetError(
                f"{prefix}principal point (cx={self.cx:.1f}, cy={self.cy:.1f}) lies outside the {width}x{height} "
                "image; are the intrinsics for another resolution?"
            )
        hfov_deg = math.degrees(2 * math.atan(width / (2 * self.fx)))
        if not (0.5 <= hfov_deg <= 170.0):
            raise DatasetError(
                f"{prefix}fx={self.fx:.4g} px gives a {hfov_deg:.3g} deg horizontal field of view on a {width} px "
                "wide image; expected 0.5-170 deg (are the intrinsics in pixels, for this resolution?)"
            )
        return self

    def matrix(self) -> torch.Tensor:
        """Tensor[3, 3] float32 ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``."""
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=torch.float32)

    def scaled(self, scale_x: float, scale_y: float) -> "Intrinsics":
        """Intrinsics of the image resized by (scale_x, scale_y) (align_corners=False pixel-centre convention)."""
        return Intrinsics(self.fx * scale_x, self.fy * scale_y, (self.cx + 0.5) * scale_x - 0.5,
                          (self.cy + 0.5) * scale_y - 0.5)

    def as_dict(self) -> dict[str, float]:
        return {"fx": float(self.fx), "fy": float(self.fy), "cx": float(self.cx), "cy": float(self.cy)}

    @classmethod
    def from_any(cls, value: Any, where: str = "intrinsics") -> "Intrinsics":
        """Parse ``{"fx","fy","cx","cy"}``, ``{"cam_in": [fx,fy,cx,cy]}``, ``{"K": 3x3}``, a 4-list or a 3x3."""
        if isinstance(value, Intrinsics):
            return value
        try:
            if isinstance(value, Mapping):
                if all(k in value for k in ("fx", "fy", "cx", "cy")):
                    return cls(*(float(value[k]) for k in ("fx", "fy", "cx", "cy")))
                for key in ("cam_in", "intrinsics", "K", "camera_matrix"):
                    if key in value:
                        return cls.from_any(value[key], where)
                raise DatasetError(
                    f"{where}: no intrinsics found; expected keys fx, fy, cx, cy (pixels), or cam_in = [fx, fy, cx, "
                    f"cy], or K = 3x3 matrix; got keys {sorted(value)}"
                )
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            if isinstance(error, DatasetError):
                raise
            raise DatasetError(f"{where}: cannot read intrinsics from {value!r} ({error})") from None
        if array.shape == (4,):
            return cls(*map(float, array))
        if array.shape == (3, 3):
            return cls(float(array[0, 0]), float(array[1, 1]), float(array[0, 2]), float(array[1, 2]))
        raise DatasetError(f"{where}: intrinsics must be [fx, fy, cx, cy] or a 3x3 matrix, got shape {array.shape}")


# ------------------------------------------------------------------------------------------- masks and crops


def resize_sample(sample: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    """A sample at (height, width): image, stack / frames antialiased bilinear, depth and mask nearest (a depth edge
    is never blended into a depth that exists nowhere); K (px*m, proportional to the focal length in pixels) scales
    with the width, the intrinsics follow the integer-pixel-centre convention of :meth:`Intrinsics.scaled`
    (cx' = (cx + 0.5) sx - 0.5), and flat fx / fy / cx / cy keys, where the sample has them, follow the matrix.
    The one resize of the Stage-2 loaders and of the evaluation at a model's training scale."""
    h, w = sample["image"].shape[-2:]
    if (h, w) == (height, width):
        return dict(sample)
    sx, sy = width / w, height / h
    out = dict(sample)

    def rgb(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    out["image"] = rgb(sample["image"][None])[0]
    for key in ("stack", "frames"):
        if sample.get(key) is not None:
            out[key] = rgb(sample[key])
    out["depth_m"] = F.interpolate(sample["depth_m"][None], size=(height, width), mode="nearest")[0]
    valid = sample.get("valid", sample["depth_m"] > 0)
    out["valid"] = F.interpolate(valid[None].float(), size=(height, width), mode="nearest")[0] > 0.5
    if sample.get("K_px_m") is not None:
        out["K_px_m"] = torch.as_tensor(sample["K_px_m"], dtype=torch.float32) * sx
    if sample.get("intrinsics") is not None:
        k = torch.as_tensor(sample["intrinsics"], dtype=torch.float32).clone()
        k[0, 0], k[0, 2] = k[0, 0] * sx, (k[0, 2] + 0.5) * sx - 0.5
        k[1, 1], k[1, 2] = k[1, 1] * sy, (k[1, 2] + 0.5) * sy - 0.5
        out["intrinsics"] = k
        if "fx" in sample:
            out.update({"fx": float(k[0, 0]), "fy": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])})
    return out


def depth_cap_mask(depth_m: torch.Tensor, min_depth_m: float, max_depth_m: float) -> torch.Tensor:
    """Bool mask of finite depths in [min_depth_m, max_depth_m] (metres); same shape as ``depth_m``."""
    if not 0 <= min_depth_m < max_depth_m:
        raise ValueError(f"depth caps must satisfy 0 <= min < max, got min={min_depth_m}, max={max_depth_m}")
    return torch.isfinite(depth_m) & (depth_m > 0) & (depth_m >= min_depth_m) & (depth_m <= max_depth_m)


def _box_mask(height: int, width: int, top: float, bottom: float, left: float, right: float) -> torch.Tensor:
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[:, int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    return mask


def eigen_crop_mask(height: int, width: int, dataset: str = "nyu") -> torch.Tensor:
    """Eigen et al. evaluation crop as Tensor[1, H, W] bool.

    NYUv2: rows 45..470, columns 41..600 of the 480x640 frame (scaled proportionally for other sizes).
    KITTI: rows 0.3324-0.9135 H, columns 0.0359-0.9641 W.
    """
    if dataset == "nyu":
        return _box_mask(height, width, 45 / 480, 471 / 480, 41 / 640, 601 / 640)
    if dataset == "kitti":
        return _box_mask(height, width, 0.3324324, 0.91351351, 0.0359477, 0.96405229)
    raise ValueError(f"eigen crop is defined for dataset 'nyu' or 'kitti', got {dataset!r}")


def garg_crop_mask(height: int, width: int) -> torch.Tensor:
    """Garg et al. KITTI evaluation crop (rows 0.4081-0.9919 H, columns 0.0359-0.9641 W) as Tensor[1, H, W] bool."""
    return _box_mask(height, width, 0.40810811, 0.99189189, 0.03594771, 0.96405229)


def crop_mask(crop: str | None, height: int, width: int, dataset: str = "nyu") -> torch.Tensor | None:
    """Mask for a crop name: None, "eigen" (NYU or KITTI flavour by ``dataset``) or "garg" (KITTI)."""
    if crop is None or crop == "none":
        return None
    if crop == "eigen":
        return eigen_crop_mask(height, width, "kitti" if dataset == "kitti" else "nyu")
    if crop == "garg":
        return garg_crop_mask(height, width)
    raise ValueError(f"unknown crop {crop!r}; expected None, 'eigen' or 'garg'")


def evaluation_mask(depth_m: torch.Tensor, dataset: str = "nyu", crop: str | None | bool = True,
                    min_depth_m: float | None = None, max_depth_m: float | None = None) -> torch.Tensor:
    """Standard evaluation mask for ``depth_m`` [1, H, W]: dataset caps, then the dataset's default crop.

    ``crop=True`` takes :data:`DEFAULT_CROP` for ``dataset``; ``False``/None none; a string names the crop.
    """
    if dataset not in DEPTH_CAPS_M:
        raise ValueError(f"unknown dataset kind {dataset!r}; expected one of {sorted(DEPTH_CAPS_M)}")
    lo, hi = DEPTH_CAPS_M[dataset]
    mask = depth_cap_mask(depth_m, lo if min_depth_m is None else min_depth_m, hi if max_depth_m is None else max_depth_m)
    name = DEFAULT_CROP[dataset] if crop is True else (None if crop is False else crop)
    box = crop_mask(name, depth_m.shape[-2], depth_m.shape[-1], dataset)
    return mask if box is None else mask & box


# ------------------------------------------------------------------------------------------------- datasets


@dataclass
class Record:
    """One sample's files (read lazily): image, optional depth, intrinsics, and extra exposures."""

    name: str
    image_path: Path
    depth_path: Path | None
    intrinsics: Intrinsics | None
    depth_scale: float | None = None
    frame_paths: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _image_size(path: Path, decode: bool) -> tuple[int, int]:
    """(width, height) of an image file; ``decode`` fully decodes it to catch truncated files."""
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    if path.suffix.lower() == ".npy":
        array = np.load(path, mmap_mode="r")
        shape = array.shape[1:] if array.ndim == 3 and array.shape[0] == 1 else array.shape[:2]
        return int(shape[1]), int(shape[0])
    try:
        with Image.open(path) as handle:
            if decode:
                handle.load()
            return handle.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read {path}: corrupt or not an image ({error})") from error


class RGBDDataset(torch.utils.data.Dataset):
    """Dataset of :class:`Record` s with the checks every reader shares.

    Args:
        records: the samples' files.
        kind: dataset kind for caps and crops ("nyu", "kitti", "dfd_indoor", "generic").
        min_depth_m, max_depth_m: depth caps for ``valid`` (default :data:`DEPTH_CAPS_M` [kind]).
        crop: crop applied to ``valid``: "default" = :data:`DEFAULT_CROP` [kind], None, "eigen" or "garg".
        check: "decode" (decode every file up front; corrupt ones are skipped), "header" (read sizes only),
            or "none" (trust the files).
        require_depth: a record without a depth file is skipped (True) or kept with an all-invalid depth (False).
    """

    def __init__(self, records: Sequence[Record], *, kind: str = "generic", min_depth_m: float | None = None,
                 max_depth_m: float | None = None, crop: str | None = "default", check: str = "decode",
                 require_depth: bool = True, source: str = "") -> None:
        if kind not in DEPTH_CAPS_M:
            raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(DEPTH_CAPS_M)}")
        if check not in ("decode", "header", "none"):
            raise ValueError(f"check must be 'decode', 'header' or 'none', got {check!r}")
        self.kind = kind
        self.source = source
        lo, hi = DEPTH_CAPS_M[kind]
        self.min_depth_m = lo if min_depth_m is None else float(min_depth_m)
        self.max_depth_m = hi if max_depth_m is None else float(max_depth_m)
        if not 0 <= self.min_depth_m < self.max_depth_m:
            raise ValueError(f"depth caps must satisfy 0 <= min < max, got {self.min_depth_m}, {self.max_depth_m}")
        self.crop = DEFAULT_CROP[kind] if crop == "default" else crop
        crop_mask(self.crop, 8, 8, kind)  # validates the name early
        self.skipped: list[dict[str, str]] = []
        self.records: list[Record] = []
        if not records:
            raise DatasetError(f"{source or 'dataset'}: no samples found")
        for record in records:
            try:
                if check != "none":
                    self._check_record(record, decode=check == "decode", require_depth=require_depth)
            except DatasetError:
                raise
            except ValueError as error:
                self._skip(record.name, str(record.image_path), str(error))
                continue
            self.records.append(record)
        if not self.records:
            raise DatasetError(f"{source or 'dataset'}: none of the {len(records)} samples could be read "
                               f"(first problem: {self.skipped[0]['reason']})")

    def _skip(self, name: str, path: str, reason: str) -> None:
        warnings.warn(f"skipping sample {name}: {reason}", stacklevel=3)
        self.skipped.append({"name": name, "path": path, "reason": reason})

    def _check_record(self, record: Record, *, decode: bool, require_depth: bool) -> None:
        width, height = _image_size(record.image_path, decode)
        if record.depth_path is None:
            if require_depth:
                raise ValueError(f"no depth file for image {record.image_path}")
        else:
            d_width, d_height = _image_size(record.depth_path, decode)
            if (d_width, d_height) != (width, height):
                raise DatasetError(
                    f"sample {record.name}: depth {record.depth_path} is {d_width}x{d_height} (WxH) but image "
                    f"{record.image_path} is {width}x{height}; depth must have the image's size"
                )
        for key, path in record.frame_paths.items():
            f_width, f_height = _image_size(path, decode)
            if (f_width, f_height) != (width, height):
                raise DatasetError(f"sample {record.name}: frame {key} ({path}) is {f_width}x{f_height} but image "
                                   f"{record.image_path} is {width}x{height}")
        if record.intrinsics is None:
            raise DatasetError(f"sample {record.name}: intrinsics missing (give fx, fy, cx, cy in pixels)")
        record.intrinsics.check_image(width, height, where=f"sample {record.name}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = read_image(record.image_path)
        height, width = image.shape[-2:]
        if record.depth_path is not None:
            depth = read_depth(record.depth_path, depth_scale=record.depth_scale)
            if depth.shape[-2:] != image.shape[-2:]:
                raise DatasetError(f"sample {record.name}: depth is {depth.shape[-1]}x{depth.shape[-2]} but image "
                                   f"is {width}x{height} (WxH); depth must have the image's size")
        else:
            depth = torch.zeros(1, height, width)
        valid = depth_cap_mask(depth, self.min_depth_m, self.max_depth_m)
        box = crop_mask(self.crop, height, width, self.kind)
        if box is not None:
            valid = valid & box
        K = record.intrinsics
        assert K is not None
        sample: dict[str, Any] = {
            "image": image, "depth_m": depth, "valid": valid, "intrinsics": K.matrix(),
            "fx": float(K.fx), "fy": float(K.fy), "cx": float(K.cx), "cy": float(K.cy),
            "name": record.name, "dataset": self.kind,
        }
        if record.frame_paths:
            frames = [read_image(path) for path in record.frame_paths.values()]
            for key, frame in zip(record.frame_paths, frames):
                if frame.shape != image.shape:
                    raise DatasetError(f"sample {record.name}: frame {key} has shape {tuple(frame.shape)}, "
                                       f"image {tuple(image.shape)}")
            sample["frames"] = torch.stack(frames)
        sample.update({k: v for k, v in record.meta.items()})
        return sample

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: source, kind, size, caps, crop, skipped samples."""
        return {"source": self.source, "kind": self.kind, "num_samples": len(self), "min_depth_m": self.min_depth_m,
                "max_depth_m": self.max_depth_m, "crop": self.crop, "skipped": list(self.skipped)}


# ------------------------------------------------------------------------------------------ concrete layouts


def _resolve_listed_path(root: Path, listed: str) -> Path:
    """Find a file named in a manifest: relative to ``root`` or its parent, with a leading ``data/`` stripped."""
    candidates = []
    parts = Path(listed).parts
    for drop in range(len(parts)):
        relative = Path(*parts[drop:])
        candidates += [root / relative, root.parent / relative]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    # Not found: report the most natural location (data/ stripped, next to the manifest's folder).
    stripped = Path(*parts[1:]) if parts and parts[0] == "data" and len(parts) > 1 else Path(listed)
    return root.parent / stripped


def annotated_dataset(root: str | Path, kind: str, annotations: str = "test_annotations.json",
                      **kwargs: Any) -> RGBDDataset:
    """NYUv2 / KITTI demo layout: ``root/<annotations>`` lists {rgb, depth, cam_in=[fx,fy,cx,cy], depth_scale}.

    ``kind`` "nyu" (mm PNGs, depth_scale 1000, Eigen crop) or "kitti" (uint16 / 256, sparse, Garg crop).
    Paths in the JSON start with ``data/``; they are resolved against ``root`` and its parent.
    """
    root = Path(root)
    manifest = root / annotations if root.is_dir() else root
    root = manifest.parent
    if not manifest.is_file():
        raise DatasetError(f"annotation file not found: {manifest} (expected a JSON with a 'files' list)")
    try:
        content = json.loads(manifest.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{manifest} is not valid JSON: {error}") from None
    entries = content.get("files") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{manifest}: expected a non-empty 'files' list of {{rgb, depth, cam_in}} entries")
    default_scale = {"nyu": 1000.0, "kitti": 256.0}.get(kind)
    records = []
    for i, entry in enumerate(entries):
        where = f"{manifest} entry {i}"
        if "rgb" not in entry:
            raise DatasetError(f"{where}: missing 'rgb' path")
        if not any(k in entry for k in ("cam_in", "fx", "K", "intrinsics")):
            raise DatasetError(f"{where}: intrinsics missing (expected cam_in = [fx, fy, cx, cy] in pixels)")
        image_path = _resolve_listed_path(root, entry["rgb"])
        depth_path = _resolve_listed_path(root, entry["depth"]) if entry.get("depth") else None
        records.append(Record(name=image_path.stem, image_path=image_path, depth_path=depth_path,
                              intrinsics=Intrinsics.from_any(entry, where),
                              depth_scale=float(entry.get("depth_scale", default_scale or 0)) or None))
    return RGBDDataset(records, kind=kind, source=str(manifest), **kwargs)


def nyu_dataset(root: str | Path, annotations: str = "test_annotations.json", **kwargs: Any) -> RGBDDataset:
    """NYUv2-style folder (see :func:`annotated_dataset`): caps 1e-3..10 m, Eigen crop by default."""
    return annotated_dataset(root, "nyu", annotations, **kwargs)


def kitti_dataset(root: str | Path, annotations: str = "test_annotations.json", **kwargs: Any) -> RGBDDataset:
    """KITTI-style folder (see :func:`annotated_dataset`): sparse uint16/256 depth, caps 1e-3..80 m, Garg crop."""
    return annotated_dataset(root, "kitti", annotations, **kwargs)


def _find_by_stem(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def rgbd_folder_dataset(root: str | Path, *, intrinsics: Any = None, depth_scale: float | None = None,
                        kind: str = "generic", **kwargs: Any) -> RGBDDataset:
    """Generic RGB-D folder: ``root/rgb/<stem>.png|jpg`` + ``root/depth/<stem>.npy|png`` (matched by stem).

    Intrinsics, first found: ``root/intrinsics/<stem>.json`` (per sample), ``root/intrinsics.json`` (one camera
    {fx, fy, cx, cy} / {cam_in} / {K}, or a mapping stem -> camera), then the ``intrinsics`` argument.
    ``.npy`` depth is metres; PNG depth is divided by ``depth_scale`` (argument, else the ``depth_scale`` key of
    ``intrinsics.json``; required for PNG depth: 1000 for millimetres). An RGB image without depth is skipped.
    """
    root = Path(root)
    rgb_dir, depth_dir = root / "rgb", root / "depth"
    if not rgb_dir.is_dir():
        raise DatasetError(f"RGB-D folder {root}: missing 'rgb' subfolder (expected rgb/*.png|jpg and depth/*)")
    images = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise DatasetError(f"RGB-D folder {root}: {rgb_dir} holds no images (expected one of {IMAGE_SUFFIXES})")
    shared: Any = None
    per_stem: dict[str, Any] = {}
    camera_file = root / "intrinsics.json"
    if camera_file.is_file():
        try:
            content = json.loads(camera_file.read_text())
        except json.JSONDecodeError as error:
            raise DatasetError(f"{camera_file} is not valid JSON: {error}") from None
        if isinstance(content, dict) and depth_scale is None and "depth_scale" in content:
            depth_scale = float(content["depth_scale"])
        if isinstance(content, dict) and not any(k in content for k in ("fx", "cam_in", "K", "intrinsics")):
            per_stem = {k: v for k, v in content.items() if k != "depth_scale"}
        else:
            shared = Intrinsics.from_any(content, str(camera_file))
    if shared is None and intrinsics is not None:
        shared = Intrinsics.from_any(intrinsics, "intrinsics argument")
    records = []
    for image_path in images:
        stem = image_path.stem
        camera = shared
        sample_file = root / "intrinsics" / f"{stem}.json"
        if sample_file.is_file():
            camera = Intrinsics.from_any(json.loads(sample_file.read_text()), str(sample_file))
        elif stem in per_stem:
            camera = Intrinsics.from_any(per_stem[stem], f"{camera_file} [{stem}]")
        if camera is None:
            raise DatasetError(
                f"RGB-D folder {root}: intrinsics missing for {image_path.name}; add {camera_file} "
                f"({{\"fx\":..,\"fy\":..,\"cx\":..,\"cy\":..}} in pixels), {sample_file}, or pass intrinsics=")
        depth_path = _find_by_stem(depth_dir, stem, DEPTH_SUFFIXES) if depth_dir.is_dir() else None
        if depth_path is not None and depth_path.suffix.lower() != ".npy" and depth_scale is None:
            raise DatasetError(f"RGB-D folder {root}: PNG depth {depth_path.name} needs depth_scale (units per metre, "
                               "1000 for millimetres): pass depth_scale= or put it in intrinsics.json")
        records.append(Record(stem, image_path, depth_path, camera, depth_scale))
    return RGBDDataset(records, kind=kind, source=str(root), **kwargs)


def dfd_indoor_intrinsics(width: int, height: int) -> Intrinsics:
    """Nikon D200 + 35 mm lens of DFD indoor: fx = fy = 35 / 23.6 * W (957 px at 645 px), centre principal point."""
    fx = DFD_INDOOR_CAMERA["f_mm"] / DFD_INDOOR_CAMERA["sensor_width_mm"] * width
    return Intrinsics(fx, fx, (width - 1) / 2.0, (height - 1) / 2.0)


def dfd_indoor_dataset(root: str | Path, *, image: str = "f8", index: str = "index.csv", focus_m: float = 1.7,
                       **kwargs: Any) -> RGBDDataset:
    """Aperture pairs with depth (DFD-indoor layout): ``index.csv`` with id, rgb_f2_8, rgb_f8, depth_mm.

    ``image`` picks the exposure returned as ``image`` ("f8": deep depth of field, the usual model input; or
    "f2_8"); the other one is ``frames`` [1, 3, H, W] with ``frame_f_numbers`` and ``K_px_m`` [1]: the thin-lens
    strength of that frame at the image's width, ``K = f^2 s1 / (2 N (s1 - f)) * W / sensor_width``
    (physics.camera.k_from_lens; 6.1 px*m at f/2.8 and 2.1 at f/8 for 645 px), with the focus distance
    ``focus_m`` (not recorded by the dataset; ~1.6-1.7 m measured from the f/2.8 blur). Depth is millimetres
    (dense, holes filled by the dataset authors); caps default to 0.5..4 m where the values are measured.
    """
    from physics.camera import k_from_lens  # noqa: PLC0415 - physics is the lower layer; imported when used

    root = Path(root)
    index_path = root / index
    if not index_path.is_file():
        raise DatasetError(f"aperture-pair folder {root}: {index} not found (columns id, rgb_f2_8, rgb_f8, depth_mm)")
    with open(index_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"id", "rgb_f2_8", "rgb_f8", "depth_mm"}
    if not rows:
        raise DatasetError(f"{index_path} lists no samples")
    missing = needed - set(rows[0])
    if missing:
        raise DatasetError(f"{index_path}: missing columns {sorted(missing)}; expected {sorted(needed)}")
    if image not in ("f8", "f2_8"):
        raise ValueError(f"image must be 'f8' or 'f2_8', got {image!r}")
    other = "f2_8" if image == "f8" else "f8"
    f_numbers = DFD_INDOOR_CAMERA["f_numbers"]
    records = []
    for row in rows:
        image_path = root / row[f"rgb_{image}"]
        width_height = None
        try:
            width_height = _image_size(image_path, decode=False)
        except ValueError:
            pass  # reported (and skipped) by the dataset's checks
        camera = dfd_indoor_intrinsics(*width_height) if width_height else Intrinsics(1.0, 1.0, 0.0, 0.0)
        K = k_from_lens(DFD_INDOOR_CAMERA["f_mm"], f_numbers[other], focus_m, width_height[0],
                        sensor_width_mm=DFD_INDOOR_CAMERA["sensor_width_mm"]) if width_height else 0.0
        records.append(Record(
            name=row["id"], image_path=image_path, depth_path=root / row["depth_mm"], intrinsics=camera,
            depth_scale=1000.0, frame_paths={other: root / row[f"rgb_{other}"]},
            meta={"f_number": f_numbers[image], "frame_f_numbers": torch.tensor([f_numbers[other]]),
                  "K_px_m": torch.tensor([K], dtype=torch.float32), "focus_m": float(focus_m),
                  "f_mm": DFD_INDOOR_CAMERA["f_mm"]},
        ))
    return RGBDDataset(records, kind="dfd_indoor", source=str(root), **kwargs)


def open_dataset(path: str | Path, kind: str | None = None, **kwargs: Any) -> RGBDDataset:
    """Open a dataset folder, guessing its layout when ``kind`` is None.

    ``index.csv`` -> aperture pairs (dfd_indoor); ``test_annotations.json`` -> NYU (or KITTI when the folder
    name contains "kitti" or the JSON's depth_scale is 256); ``rgb/`` -> generic RGB-D folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path not found: {path}")
    if kind is None:
        if (path / "index.csv").is_file():
            kind = "dfd_indoor"
        elif (path / "test_annotations.json").is_file() or path.suffix == ".json":
            manifest = path if path.suffix == ".json" else path / "test_annotations.json"
            try:
                entries = json.loads(manifest.read_text()).get("files") or [{}]
            except (json.JSONDecodeError, AttributeError):
                entries = [{}]
            scale = float(entries[0].get("depth_scale", 0) or 0)
            named_kitti = "kitti" in (path.stem if path.suffix == ".json" else path.name).lower()
            kind = "kitti" if scale == 256.0 or (scale == 0 and named_kitti) else "nyu"
        elif (path / "rgb").is_dir():
            kind = "generic"
        else:
            raise DatasetError(f"cannot tell the layout of {path}: expected index.csv (aperture pairs), "
                               "test_annotations.json (NYU/KITTI) or an rgb/ subfolder (generic RGB-D)")
    if kind == "dfd_indoor":
        return dfd_indoor_dataset(path, **kwargs)
    if kind in ("nyu", "kitti"):
        return annotated_dataset(path, kind, **kwargs)
    if kind == "generic":
        return rgbd_folder_dataset(path, **kwargs)
    raise ValueError(f"unknown dataset kind {kind!r}; expected nyu, kitti, generic or dfd_indoor")


__all__ = [
    "DEFAULT_CROP", "DEPTH_CAPS_M", "DFD_INDOOR_CAMERA", "DatasetError", "Intrinsics", "RGBDDataset", "Record",
    "annotated_dataset", "crop_mask", "depth_cap_mask", "dfd_indoor_dataset", "dfd_indoor_intrinsics",
    "eigen_crop_mask", "evaluation_mask", "garg_crop_mask", "kitti_dataset", "nyu_dataset", "open_dataset",
    "rgbd_folder_dataset",
]
