"""Image, depth and result I/O shared by every tool, with atomic writes.

Readers return torch tensors in the project's conventions (images: float32 sRGB in [0, 1], shape [3, H, W];
depth: float32 metres, shape [1, H, W], 0 where invalid). Writers never leave a half-written file behind: they
write to a hidden temporary name in the same folder and rename it into place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image or depth file is missing, unreadable or of an unexpected kind."""


# --------------------------------------------------------------------------------------------------- writers


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success, delete it on error.

    The temporary name keeps the suffix so that libraries choosing a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written to the temporary file for {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _as_2d(array: np.ndarray) -> np.ndarray:
    """Drop a leading or trailing channel axis of size 1 ([1,H,W] or [H,W,1] -> [H,W])."""
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        return array[..., 0]
    return array


def _to_uint8_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().float()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.permute(1, 2, 0)
        array = array.numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be [3,H,W] / [H,W,3] / [H,W], got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values; expected finite values in [0, 1]")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def write_image(path: str | Path, image: torch.Tensor | np.ndarray) -> Path:
    """Write an image atomically. Floats are sRGB in [0, 1] ([3,H,W] tensor or [H,W,3] array); uint8 as is."""
    path = Path(path)
    array = _to_uint8_hwc(image)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)
    return path


def write_npy(path: str | Path, array: torch.Tensor | np.ndarray) -> Path:
    """Write a ``.npy`` file atomically."""
    path = Path(path)
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write JSON atomically (tensors, numpy values and paths are converted)."""
    return write_text(path, json.dumps(obj, indent=indent, default=_json_default, allow_nan=True) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def check_output_dir(path: str | Path, overwrite: bool) -> bool:
    """Refuse a file, or a non-empty folder without ``overwrite`` (FileExistsError naming it); True when the folder
    holds a previous output. For tools that want to refuse before loading anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output path {path} exists and is a file; expected a folder (or a new path)")
    for parent in path.absolute().parents:
        if parent.exists() and not parent.is_dir():  # mkdir would fail later with a bare NotADirectoryError
            raise FileExistsError(f"output path {path}: {parent} is a file, not a folder")
    previous = path.is_dir() and any(path.iterdir())
    if previous and not overwrite:
        raise FileExistsError(f"output folder {path} exists and is not empty; pass --overwrite to replace it")
    return previous


def prepare_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create an output folder; refuse an existing non-empty one unless ``overwrite`` (then it is emptied at once).
    Tools use :func:`output_dir`, which keeps the previous output until the new one is complete."""
    path = Path(path)
    if check_output_dir(path, overwrite):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """``with output_dir(out, overwrite) as out: ...``: a tool's output folder that ends up holding either the
    complete new output or, when the body fails, exactly what it held before -- never a half-written mix.

    Checked before anything is touched: a file at ``path``, or a non-empty folder without ``overwrite``, is a
    FileExistsError. With ``overwrite`` the previous contents are moved aside (a hidden sibling, one rename), restored
    if the body raises (any exception, SystemExit and KeyboardInterrupt included) and deleted once it returns. A
    folder the body fails in is removed (or left empty if it existed empty), with the parent folders made for it.
    A parent that is a file is a FileExistsError before anything is touched. The body writes into ``path`` itself,
    so paths recorded in the outputs are the final ones.
    """
    path = Path(path)
    existed = path.is_dir()
    previous = None
    if check_output_dir(path, overwrite):
        previous = path.with_name(f".{path.name}.previous-{uuid.uuid4().hex[:8]}")
        path.rename(previous)
    # the outermost folder this call creates: a failed body removes it, with any parents made for the output
    created = path
    while not created.parent.exists():
        created = created.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # no permission, a read-only disk: the same error type, saying what could not be made
        if previous is not None:
            previous.rename(path)
        raise type(error)(f"cannot create output folder {path}: {error.strerror or error}") from error
    try:
        yield path
    except BaseException:
        shutil.rmtree(path if existed or previous is not None else created, ignore_errors=True)
        if previous is not None:
            previous.rename(path)
        elif existed:
            path.mkdir(parents=True, exist_ok=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- readers


def _what(kind: str, name: str | None) -> str:
    """How a message names the file: ``kind`` ("image", "depth"), or ``name`` (the option it came from, "--depth")
    with the kind when they differ."""
    if name is None:
        return kind
    return name if name.lstrip("-") == kind else f"{name} ({kind})"


def _open_image(path: Path, kind: str = "image", name: str | None = None) -> Image.Image:
    what = _what(kind, name)
    if not path.exists():
        raise ImageReadError(f"{what} file not found: {path}")
    if not path.is_file():
        expected = "a depth file (.npy in metres, or a PNG)" if kind == "depth" else "an image file"
        raise ImageReadError(f"{what} {path} is a {'folder' if path.is_dir() else 'special file'}, not a file; "
                             f"expected {expected}")
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageReadError(f"cannot read {_what(kind, name)} {path}: the file is corrupt or not an image ({error})"
                             ) from error


def read_image(path: str | Path, *, exif_orientation: bool = False, name: str | None = None) -> torch.Tensor:
    """Read an image as float32 sRGB in [0, 1], shape [3, H, W].

    Grayscale is replicated to RGB and RGBA loses its alpha (composited on nothing: alpha dropped), each with a
    warning, because every model here expects three colour channels. 16-bit images keep their precision.
    ``exif_orientation``: turn the pixels upright as the EXIF Orientation tag says (photos from phones and cameras);
    off by default, because dataset images are stored aligned with their depth maps, whatever a tag says.
    ``name``: what messages call the file (the option it was given as, e.g. "--image"); default "image".
    """
    path = Path(path)
    image = _open_image(path, "image", name)
    if exif_orientation:
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32) / (65535.0 if mode.startswith("I;16") else float(max(np.asarray(image).max(), 1)))
        warnings.warn(f"{path}: grayscale image ({mode}) replicated to RGB", stacklevel=2)
        array = np.repeat(array[..., None], 3, axis=-1)
    else:
        if mode in ("L", "LA", "1"):
            warnings.warn(f"{path}: grayscale image replicated to RGB", stacklevel=2)
        elif mode in ("RGBA", "PA") or (mode == "P" and "transparency" in image.info):
            warnings.warn(f"{path}: alpha channel dropped (RGBA -> RGB)", stacklevel=2)
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def read_depth(path: str | Path, *, depth_scale: float | None = None, name: str | None = None) -> torch.Tensor:
    """Read a depth map in metres, shape [1, H, W]; 0 marks invalid pixels.

    ``.npy`` files hold metres (NaN/inf become 0). Integer PNGs are divided by ``depth_scale`` (units per metre:
    1000 for millimetre PNGs such as NYUv2, 256 for KITTI); a 16-bit PNG without ``depth_scale`` is an error,
    because guessing the unit silently would make every metric wrong.
    ``name``: what messages call the file (the option it was given as, e.g. "--depth"); default "depth".
    """
    path = Path(path)
    if not path.exists() or not path.is_file():  # a folder: named as the depth, not as an image
        _open_image(path, "depth", name)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path)
        except (ValueError, OSError, EOFError) as error:
            raise ImageReadError(f"cannot read depth {path}: corrupt .npy file ({error})") from error
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ImageReadError(f"depth {path} holds {array.dtype} values; expected numbers (metres)")
        array = array.astype(np.float32)
        array = _as_2d(array)
        if array.ndim != 2:
            raise ImageReadError(f"depth {path} must be a 2-D [H, W] array of metres, got shape {array.shape}")
        array = np.where(np.isfinite(array), array, 0.0)
    else:
        image = _open_image(path, "depth", name)
        array = np.asarray(image).astype(np.float32)
        if array.ndim != 2:
            raise ImageReadError(f"depth image {path} must be single-channel, got shape {array.shape}")
        if depth_scale is None:
            raise ImageReadError(
                f"depth image {path}: depth_scale (units per metre, e.g. 1000 for mm, 256 for KITTI) is required"
            )
        if depth_scale <= 0:
            raise ValueError(f"depth_scale must be > 0 (units per metre), got {depth_scale}")
        array = array / float(depth_scale)
    if (array < 0).any():
        raise ImageReadError(f"depth {path} has negative values (min {array.min():.4g}); expected metres >= 0")
    return torch.from_numpy(np.ascontiguousarray(array))[None]


def read_depth_for_image(path: str | Path, image_hw: Sequence[int], *, image_name: str | Path = "its image",
                         depth_scale: Any = None) -> tuple[torch.Tensor, int]:
    """The depth map of an image: :func:`read_depth`, then a ValueError naming the file when ``depth_scale`` is not
    a number, when its size differs from the image's ``image_hw`` (H, W; both named), or when no pixel is valid.

    Returns: (depth [1,H,W] metres, 0 where invalid; the number of invalid pixels -- 0, NaN or inf in the file), so
    that a caller can report holes the way its use of them needs.
    """
    path = Path(path)
    if depth_scale is not None and (isinstance(depth_scale, bool) or not isinstance(depth_scale, (int, float))):
        raise ValueError(f"depth_scale of {path} must be a number (units per metre), got {depth_scale!r}")
    depth = read_depth(path, depth_scale=depth_scale)
    depth_hw, image_hw = tuple(depth.shape[-2:]), tuple(int(v) for v in image_hw)
    if depth_hw != image_hw:
        raise ValueError(f"depth {path} is {depth_hw[0]}x{depth_hw[1]} (HxW) but {image_name} is "
                         f"{image_hw[0]}x{image_hw[1]} (HxW); expected the same size")
    invalid = int((depth <= 0).sum())
    if invalid == depth.numel():
        raise ValueError(f"depth {path} has no valid pixel (all {invalid} are 0, NaN or inf); expected metres > 0")
    return depth, invalid


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted; an empty or missing folder is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"image folder {folder} holds no images (expected one of {IMAGE_SUFFIXES})")
    return files


# ------------------------------------------------------------------------------------------------- pictures


def colorize_depth(
    depth_m: torch.Tensor | np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "turbo",
    inverse: bool = True,
) -> np.ndarray:
    """Colour-map a depth map ([1,H,W] or [H,W], metres) to uint8 [H,W,3]; invalid (<= 0) pixels are black.

    With ``inverse`` the colours follow 1/depth (near = warm), which spreads indoor and outdoor ranges evenly.
    The range defaults to the 2nd-98th percentile of valid pixels.
    """
    from matplotlib import colormaps

    array, valid = _depth_array(depth_m)
    out = np.zeros(array.shape + (3,), np.uint8)
    if not valid.any():
        return out
    lo, hi = _depth_range(array, valid, vmin, vmax)
    t = _colour_level(np.clip(array, lo, hi), lo, hi, inverse)
    colours = colormaps[cmap](np.clip(t, 0, 1))[..., :3]
    out[valid] = (colours[valid] * 255 + 0.5).astype(np.uint8)
    return out


def _depth_array(depth_m: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth [H,W] as numpy, its valid mask: finite and > 0) of a [1,H,W] or [H,W] map."""
    array = depth_m.detach().cpu().float().numpy() if isinstance(depth_m, torch.Tensor) else np.asarray(depth_m, np.float32)
    array = _as_2d(array)
    if array.ndim != 2:
        raise ValueError(f"depth must be [1,H,W] or [H,W], got shape {array.shape}")
    return array, np.isfinite(array) & (array > 0)


def _colour_level(values: np.ndarray | float, lo: float, hi: float, inverse: bool) -> np.ndarray | float:
    """Colour-map position t (0 at ``hi``, 1 at ``lo`` with ``inverse``, which follows 1/depth; the reverse without)
    of depth values already clipped to [lo, hi]."""
    return (1.0 / values - 1.0 / hi) / (1.0 / lo - 1.0 / hi) if inverse else (values - lo) / (hi - lo)


def _depth_range(array: np.ndarray, valid: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """(lo, hi) of a colour map: the given bounds, else the 2nd / 98th percentile of the valid values."""
    lo = float(np.percentile(array[valid], 2)) if vmin is None else float(vmin)
    hi = float(np.percentile(array[valid], 98)) if vmax is None else float(vmax)
    return lo, max(hi, lo * (1 + 1e-6) + 1e-9)


def depth_display_range(depth_m: torch.Tensor | np.ndarray) -> tuple[float, float] | None:
    """(lo, hi) that :func:`colorize_depth` uses by default (2nd / 98th percentile of the valid values), or None when
    no value is valid: pass it as vmin / vmax to show several maps on one scale."""
    array, valid = _depth_array(depth_m)
    return _depth_range(array, valid, None, None) if valid.any() else None


def _round_sig(value: float, digits: int = 2, direction: str = "nearest") -> float:
    """``value`` (> 0) to ``digits`` significant digits: to the nearest, or "up" / "down" (ticks inside a range)."""
    if direction == "nearest":
        return float(f"{value:.{digits}g}")
    quantum = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    steps = value / quantum
    steps = math.ceil(steps - 1e-9) if direction == "up" else math.floor(steps + 1e-9)
    return float(f"{steps * quantum:.{digits}g}")


def colorize_depth_with_legend(
    depth_m: torch.Tensor | np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "turbo",
    inverse: bool = True,
    unit: str = "m",
) -> np.ndarray:
    """:func:`colorize_depth` with a colour bar on the right, labelled in ``unit``: uint8 [H, W + bar, 3].

    The bar runs from ``lo`` (top) to ``hi`` (bottom) on the map's own scale (inverse depth by default, so equal
    steps in 1/depth are equal heights). Tick values are rounded to two significant digits and drawn at the rows
    whose bar colour is the map's colour for exactly that value; both ends are always labelled (rounded inwards with
    up to five digits for a near-constant map, else at their own value; a constant map shows its one value).
    Hand-written: matplotlib's colorbar needs a figure and would resample the map; this keeps the map's pixels as
    they are.
    """
    from matplotlib import colormaps

    array, valid = _depth_array(depth_m)
    h = array.shape[0]
    if not valid.any() or h < 8:
        return colorize_depth(array, vmin, vmax, cmap, inverse)
    lo, hi = _depth_range(array, valid, vmin, vmax)
    picture = colorize_depth(array, lo, hi, cmap, inverse)

    # the bar runs from lo (top row) to hi (bottom row), its colour-map position linear in the row
    def fraction_down(value: float) -> float:
        t = _colour_level(value, lo, hi, inverse)
        return 1.0 - t if inverse else t

    def value_at(fraction: float) -> float:
        return 1.0 / (1.0 / lo + (1.0 / hi - 1.0 / lo) * fraction) if inverse else lo + (hi - lo) * fraction

    n_ticks = int(min(6, max(2, h // 28)))
    # evenly spaced on the bar, then rounded to two significant digits; the two ends inwards, with more digits (up to
    # 5) while two would leave the range or land far inside it (a near-constant map), else at their exact value: both
    # ends are always labelled (a constant map: its one value, once). Each label sits at the row whose colour is its
    # value's.
    ticks: dict[str, float] = {}  # label text -> value
    for k in (0, n_ticks - 1, *range(1, n_ticks - 1)):
        value = value_at(k / (n_ticks - 1))
        if 0 < k < n_ticks - 1:
            tick = _round_sig(value, 2)
            if lo <= tick <= hi and f"{tick:g}" not in ticks:
                ticks[f"{tick:g}"] = tick
            continue
        candidates = [tick for digits in (2, 3, 4, 5) if lo <= (tick := _round_sig(value, digits, "up" if k == 0 else
                                                                                    "down")) <= hi]
        candidates = [tick for tick in candidates if f"{tick:g}" not in ticks]
        near_end = [tick for tick in candidates if abs(fraction_down(tick) - fraction_down(value)) <= 0.2]
        if near_end or candidates:
            tick = (near_end or candidates)[0]
            ticks[f"{tick:g}"] = tick
        else:  # no rounded value inside the range: the end's own value, to 4 digits
            ticks.setdefault(f"{value:.4g}", lo if k == 0 else hi)
    strip, gap = max(8, h // 24), 4
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([52] + [measure.textbbox((0, 0), f"{text} {unit}")[2] + 7 for text in ticks])
    bar = np.full((h, gap + strip + label_w, 3), 255, np.uint8)
    fractions = np.arange(h, dtype=np.float64) / (h - 1)
    t_rows = 1.0 - fractions if inverse else fractions
    bar[:, gap : gap + strip] = (colormaps[cmap](t_rows)[:, :3] * 255 + 0.5).astype(np.uint8)[:, None]
    picture_bar = Image.fromarray(bar)
    draw = ImageDraw.Draw(picture_bar)
    for label, tick in ticks.items():
        row = int(round(fraction_down(tick) * (h - 1)))
        draw.line([(gap + strip, row), (gap + strip + 3, row)], fill=(0, 0, 0))
        text = f"{label} {unit}"
        box = draw.textbbox((0, 0), text)
        y = min(max(row - (box[3] - box[1]) // 2 - 1, 0), h - (box[3] - box[1]) - 2)
        draw.text((gap + strip + 5, y), text, fill=(0, 0, 0))
    return np.concatenate([picture, np.asarray(picture_bar)], axis=1)


def colorize_signed(values: torch.Tensor | np.ndarray, limit: float | None = None, cmap: str = "coolwarm") -> np.ndarray:
    """Colour-map a signed map (e.g. CoC radius in px, an error map) symmetric around 0 to uint8 [H,W,3]."""
    from matplotlib import colormaps

    array = _as_2d(values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else np.asarray(values))
    limit = float(np.nanmax(np.abs(array))) if limit is None else float(limit)
    limit = max(limit, 1e-9)
    colours = colormaps[cmap](np.clip(0.5 + 0.5 * array / limit, 0, 1))[..., :3]
    return (colours * 255 + 0.5).astype(np.uint8)


def image_grid(
    rows: Sequence[Sequence[torch.Tensor | np.ndarray]],
    labels: Sequence[Sequence[str]] | Sequence[str] | None = None,
    pad: int = 2,
    background: int = 255,
) -> np.ndarray:
    """Tile images (tensors [3,H,W] in [0,1] or uint8 [H,W,3]) into one uint8 [H,W,3] grid.

    Cells are padded to the largest cell size. ``labels`` is one label per column (a header row) or one per cell,
    drawn in the top-left corner of each cell.
    """
    cells = [[_to_uint8_hwc(image) for image in row] for row in rows]
    if not cells or not any(cells):
        raise ValueError("image_grid needs at least one image")
    cell_h = max(c.shape[0] for row in cells for c in row)
    cell_w = max(c.shape[1] for row in cells for c in row)
    n_cols = max(len(row) for row in cells)
    grid = np.full((len(cells) * (cell_h + pad) + pad, n_cols * (cell_w + pad) + pad, 3), background, np.uint8)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            y, x = pad + i * (cell_h + pad), pad + j * (cell_w + pad)
            grid[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    if labels:
        picture = Image.fromarray(grid)
        draw = ImageDraw.Draw(picture)
        for i in range(len(cells)):
            for j in range(len(cells[i])):
                if isinstance(labels[0], str):
                    text = labels[j] if i == 0 and j < len(labels) else ""  # type: ignore[index]
                else:
                    text = labels[i][j] if i < len(labels) and j < len(labels[i]) else ""  # type: ignore[index]
                if text:
                    y, x = pad + i * (cell_h + pad), pad + j * (cell_w + pad)
                    box = draw.textbbox((x + 2, y + 1), str(text))
                    draw.rectangle(box, fill=(0, 0, 0))
                    draw.text((x + 2, y + 1), str(text), fill=(255, 255, 255))
        grid = np.asarray(picture)
    return grid
