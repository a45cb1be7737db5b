"""Depth maps as 3-D point clouds: lifting, cleaning, PLY files, cloud-to-cloud distances, offscreen renders.

Conventions: camera frame of the photo (OpenCV: x right, y down, z forward), metres; intrinsics are a pinhole
matrix [3, 3] in pixels with integer pixel centres (kornia's convention). The unprojection is kornia's
``depth_to_3d_v2``; clouds, outlier removal, voxel grids, nearest-neighbour distances and PLY files are Open3D's.

Rendering: :func:`render_views` draws a cloud from a few viewpoints with Open3D's offscreen renderer
(``OffscreenRenderer``: Filament on a Vulkan device; software Vulkan needs the Debian packages libvulkan1 and
mesa-vulkan-drivers), else the legacy ``Visualizer(visible=False)`` (headless EGL; libegl1 + libgl1-mesa-dri),
else a z-buffered point splat written here in numpy (no Open3D renderer draws without a GPU context), and says
which one it used. The three share the same virtual cameras, so their pictures agree to a pixel.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from bokeh.io import atomic_path, colorize_depth, image_grid

RENDER_BACKENDS = ("offscreen", "legacy", "splat")

#: Viewpoints: (yaw about the vertical axis, pitch about the horizontal axis) in degrees, orbiting the cloud's
#: centre. "camera" is the photo's own viewpoint (identity pose, true intrinsics).
DEFAULT_VIEWS: dict[str, tuple[float, float]] = {"camera": (0.0, 0.0), "left": (35.0, 0.0), "right": (-35.0, 0.0),
                                                 "top": (0.0, -40.0)}


def _open3d() -> Any:
    """Import Open3D with an actionable message when its shared libraries are missing."""
    try:
        import open3d  # noqa: PLC0415 - optional heavy import
    except ImportError as error:
        raise ImportError(
            f"Open3D cannot be imported ({error}). It needs the Debian packages libusb-1.0-0, libgl1, libegl1 and "
            "libgomp1 (run `bash scripts/setup.sh` as root, or `sudo apt-get install libusb-1.0-0 libgl1 libegl1 "
            "libgomp1`) and the pip package open3d-cpu."
        ) from error
    return open3d


# ------------------------------------------------------------------------------------------------------ lifting


def _as_matrix(intrinsics: Any) -> torch.Tensor:
    """Intrinsics as Tensor[3, 3] float64 from a 3x3 matrix, [fx, fy, cx, cy], a mapping or an object with fx..cy."""
    if hasattr(intrinsics, "matrix") and callable(intrinsics.matrix):
        intrinsics = intrinsics.matrix()
    if isinstance(intrinsics, Mapping):
        intrinsics = [intrinsics[k] for k in ("fx", "fy", "cx", "cy")]
    K = torch.as_tensor(np.asarray(intrinsics, dtype=np.float64) if not isinstance(intrinsics, torch.Tensor)
                        else intrinsics.detach().cpu(), dtype=torch.float64)
    if K.shape == (4,):
        fx, fy, cx, cy = K.tolist()
        K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    if K.shape != (3, 3):
        raise ValueError(f"intrinsics must be a 3x3 matrix or [fx, fy, cx, cy], got shape {tuple(K.shape)}")
    if not torch.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsics must be finite with fx, fy > 0 pixels, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def _depth_2d(depth_m: torch.Tensor | np.ndarray, name: str = "depth_m") -> torch.Tensor:
    depth = torch.as_tensor(np.asarray(depth_m) if not isinstance(depth_m, torch.Tensor) else depth_m.detach().cpu())
    depth = depth.to(torch.float64)
    while depth.ndim > 2 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise ValueError(f"{name} must be [H, W] or [1, H, W] metres, got shape {tuple(depth.shape)}")
    return depth


def lift_depth(depth_m: torch.Tensor | np.ndarray, intrinsics: Any, image: torch.Tensor | np.ndarray | None = None,
               valid: torch.Tensor | np.ndarray | None = None, *, min_depth_m: float = 1e-3,
               max_depth_m: float | None = None, stride: int = 1) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Unproject a depth map into camera-frame points.

    Args:
        depth_m: [H, W] or [1, H, W] z-depth in metres (0 = invalid).
        intrinsics: pinhole K (3x3 / [fx, fy, cx, cy] / mapping) in pixels of this depth map.
        image: optional [3, H, W] float sRGB in [0, 1] (or uint8 [H, W, 3]) giving each point its colour.
        valid: optional [H, W] / [1, H, W] bool mask of pixels to keep (ANDed with the depth range).
        min_depth_m, max_depth_m: depth range kept; stride: keep every ``stride``-th row and column.

    Returns:
        points [M, 3] float64 metres (``x = (u - cx) z / fx``, ``y = (v - cy) z / fy``, ``z``),
        colours [M, 3] float64 in [0, 1] or None, and the flat pixel index [M] of each point in the full map.
    """
    from kornia.geometry.depth import depth_to_3d_v2  # noqa: PLC0415

    depth = _depth_2d(depth_m)
    K = _as_matrix(intrinsics)
    height, width = depth.shape
    keep = torch.isfinite(depth) & (depth > 0) & (depth >= min_depth_m)
    if max_depth_m is not None:
        keep &= depth <= max_depth_m
    if valid is not None:
        mask = _depth_2d(torch.as_tensor(np.asarray(valid)) if not isinstance(valid, torch.Tensor) else valid, "valid")
        if mask.shape != depth.shape:
            raise ValueError(f"valid mask is {tuple(mask.shape)} but depth is {tuple(depth.shape)}")
        keep &= mask > 0
    if stride > 1:
        grid = torch.zeros_like(keep)
        grid[::stride, ::stride] = True
        keep &= grid
    xyz = depth_to_3d_v2(torch.where(keep, depth, torch.zeros_like(depth)), K[None])  # [H, W, 3]
    index = torch.nonzero(keep.reshape(-1)).squeeze(1)
    points = xyz.reshape(-1, 3)[index].numpy()
    colours = None
    if image is not None:
        rgb = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if rgb.ndim == 3 and rgb.shape[0] == 3 and rgb.shape[-1] != 3:
            rgb = rgb.transpose(1, 2, 0)
        if rgb.shape[:2] != (height, width):
            raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but depth is {width}x{height} (WxH)")
        rgb = rgb.astype(np.float64) / (255.0 if rgb.dtype == np.uint8 else 1.0)
        colours = np.clip(rgb.reshape(-1, 3)[index.numpy()], 0.0, 1.0)
    return points, colours, index.numpy()


def to_open3d(points: np.ndarray, colours: np.ndarray | None = None) -> Any:
    """Open3D ``PointCloud`` from points [M, 3] (metres) and optional colours [M, 3] in [0, 1]."""
    o3d = _open3d()
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    if colours is not None:
        cloud.colors = o3d.utility.Vector3dVector(np.asarray(colours, np.float64))
    return cloud


def depth_to_point_cloud(depth_m: torch.Tensor | np.ndarray, intrinsics: Any,
                         image: torch.Tensor | np.ndarray | None = None, valid: Any = None, *,
                         colour_by_depth: bool = True, **kwargs: Any) -> Any:
    """Coloured Open3D cloud of a depth map (see :func:`lift_depth`); without ``image`` coloured by depth."""
    points, colours, index = lift_depth(depth_m, intrinsics, image, valid, **kwargs)
    if colours is None and colour_by_depth and len(points):
        depth = _depth_2d(depth_m).numpy()
        colours = colorize_depth(depth).reshape(-1, 3)[index].astype(np.float64) / 255.0
    return to_open3d(points, colours)


def clean_point_cloud(cloud: Any, *, voxel_size_m: float | None = None, outlier_neighbors: int = 20,
                      outlier_std_ratio: float | None = 2.0) -> tuple[Any, dict[str, Any]]:
    """Voxel-downsample (``voxel_size_m``) then drop statistical outliers (Open3D's functions).

    A point is an outlier when its mean distance to its ``outlier_neighbors`` nearest neighbours exceeds the
    cloud's mean of that distance by ``outlier_std_ratio`` standard deviations (None: no removal).
    Returns the cleaned cloud and a JSON-ready record of the point counts.
    """
    info: dict[str, Any] = {"points_in": len(cloud.points)}
    if voxel_size_m is not None:
        if voxel_size_m <= 0:
            raise ValueError(f"voxel_size_m must be > 0 metres, got {voxel_size_m}")
        cloud = cloud.voxel_down_sample(voxel_size_m)
        info.update(voxel_size_m=voxel_size_m, points_after_voxel=len(cloud.points))
    if outlier_std_ratio is not None and len(cloud.points) > outlier_neighbors:
        if outlier_std_ratio <= 0 or outlier_neighbors < 1:
            raise ValueError(f"outlier removal needs neighbours >= 1 and std ratio > 0, got {outlier_neighbors}, "
                             f"{outlier_std_ratio}")
        cloud, _ = cloud.remove_statistical_outlier(nb_neighbors=outlier_neighbors, std_ratio=outlier_std_ratio)
        info.update(outlier_neighbors=outlier_neighbors, outlier_std_ratio=outlier_std_ratio)
    info["points_out"] = len(cloud.points)
    return cloud, info


# ------------------------------------------------------------------------------------------------------- files


def write_point_cloud(path: str | Path, cloud: Any, *, overwrite: bool = False, binary: bool = True) -> Path:
    """Write a cloud (PLY by the file's extension) atomically; an existing file is refused unless ``overwrite``."""
    o3d = _open3d()
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if path.suffix.lower() not in (".ply", ".pcd", ".xyz", ".pts"):
        raise ValueError(f"point-cloud path must end in .ply (or .pcd/.xyz/.pts), got {path.name}")
    with atomic_path(path) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), cloud, write_ascii=not binary):
            raise OSError(f"Open3D could not write {path}")
    return path


def read_point_cloud(path: str | Path) -> Any:
    """Read a point-cloud file; a missing or empty file is an error naming it."""
    o3d = _open3d()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point-cloud file not found: {path}")
    cloud = o3d.io.read_point_cloud(str(path))
    if len(cloud.points) == 0:
        raise ValueError(f"{path} holds no points (corrupt or empty point-cloud file)")
    return cloud


# --------------------------------------------------------------------------------------------------- distances


def cloud_distances(pred: Any, gt: Any) -> dict[str, float]:
    """Nearest-neighbour distances between two clouds (Open3D ``compute_point_cloud_distance``), metres.

    Returns ``chamfer_m`` = (mean pred->gt + mean gt->pred) / 2 (so a rigid shift by s small against the point
    spacing gives s), both directed means, ``rmse_m`` = RMS of pred->gt distances (point-to-point RMSE against the
    ground-truth cloud), ``hausdorff_m`` and the point counts.
    """
    if len(pred.points) == 0 or len(gt.points) == 0:
        raise ValueError(f"cloud distances need non-empty clouds, got {len(pred.points)} and {len(gt.points)} points")
    to_gt = np.asarray(pred.compute_point_cloud_distance(gt))
    to_pred = np.asarray(gt.compute_point_cloud_distance(pred))
    return {
        "chamfer_m": float(0.5 * (to_gt.mean() + to_pred.mean())),
        "pred_to_gt_mean_m": float(to_gt.mean()),
        "gt_to_pred_mean_m": float(to_pred.mean()),
        "rmse_m": float(np.sqrt(np.mean(to_gt**2))),
        "hausdorff_m": float(max(to_gt.max(), to_pred.max())),
        "pred_points": int(len(to_gt)),
        "gt_points": int(len(to_pred)),
    }


def compare_depth_clouds(pred_depth_m: Any, gt_depth_m: Any, intrinsics: Any, valid: Any = None, *,
                         min_depth_m: float = 1e-3, max_depth_m: float | None = None, max_points: int = 100_000,
                         seed: int = 0) -> dict[str, float]:
    """3-D errors of a predicted depth map against ground truth, both lifted with the same intrinsics.

    ``pixel_rmse_m``/``pixel_mean_m``: distance between the two points of the same pixel over pixels valid in
    the ground truth (the point-to-point error with known correspondences); plus :func:`cloud_distances` of the
    two clouds (no correspondences; each cloud subsampled to ``max_points`` with a fixed seed for speed).
    """
    pred = _depth_2d(pred_depth_m, "pred_depth_m")
    gt = _depth_2d(gt_depth_m, "gt_depth_m")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth is "
                         f"{gt.shape[1]}x{gt.shape[0]} (WxH); resize the prediction first")
    mask = torch.isfinite(gt) & (gt >= min_depth_m) & (gt > 0) & torch.isfinite(pred) & (pred > 0)
    if max_depth_m is not None:
        mask &= gt <= max_depth_m
    if valid is not None:
        mask &= _depth_2d(torch.as_tensor(np.asarray(valid)) if not isinstance(valid, torch.Tensor) else valid) > 0
    if not mask.any():
        raise ValueError("no pixel is valid in both the prediction and the ground truth")
    gt_points, _, _ = lift_depth(gt, intrinsics, valid=mask, min_depth_m=0.0)
    pred_points, _, _ = lift_depth(pred, intrinsics, valid=mask, min_depth_m=0.0)
    per_pixel = np.linalg.norm(pred_points - gt_points, axis=1)
    rng = np.random.default_rng(seed)
    if len(gt_points) > max_points:
        pick = rng.choice(len(gt_points), max_points, replace=False)
        gt_points, pred_points = gt_points[pick], pred_points[pick]
    result = {"pixel_rmse_m": float(np.sqrt(np.mean(per_pixel**2))), "pixel_mean_m": float(per_pixel.mean()),
              "pixels": int(mask.sum())}
    result.update(cloud_distances(to_open3d(pred_points), to_open3d(gt_points)))
    return result


# ------------------------------------------------------------------------------------------------------ cameras


@dataclass
class ViewCamera:
    """A virtual pinhole camera: ``intrinsic`` [3, 3] px for a ``width`` x ``height`` picture, ``extrinsic``
    [4, 4] world(photo camera frame) -> view camera."""

    name: str
    intrinsic: np.ndarray
    extrinsic: np.ndarray
    width: int
    height: int


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Camera-to-world rotation of a view: yaw about +y (down), then pitch about +x."""
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    yaw = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    pitch = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return yaw @ pitch


def view_cameras(points: np.ndarray, width: int, height: int, views: Mapping[str, tuple[float, float]] | Sequence[str]
                 = DEFAULT_VIEWS, intrinsics: Any = None, image_size: tuple[int, int] | None = None
                 ) -> list[ViewCamera]:
    """Virtual cameras orbiting the cloud's centre (the median-depth point on the optical axis).

    ``views``: names from :data:`DEFAULT_VIEWS` or a mapping name -> (yaw, pitch) degrees. The "camera" view uses
    the photo's intrinsics scaled to the render size when ``intrinsics`` and ``image_size`` (W, H) are given;
    every other view picks its focal length so the central 98 % of the points fill ~90 % of the frame.
    """
    if isinstance(views, Mapping):
        spec = dict(views)
    else:
        unknown = [v for v in views if v not in DEFAULT_VIEWS]
        if unknown:
            raise ValueError(f"unknown views {unknown}; expected names from {list(DEFAULT_VIEWS)} or yaw,pitch pairs")
        spec = {v: DEFAULT_VIEWS[v] for v in views}
    points = np.asarray(points, np.float64)
    if len(points) == 0:
        raise ValueError("cannot place cameras around an empty cloud")
    centre = np.array([0.0, 0.0, float(np.median(points[:, 2]))])
    cameras = []
    for name, (yaw, pitch) in spec.items():
        rotation = _rotation(yaw, pitch)
        eye = centre - rotation @ centre
        extrinsic = np.eye(4)
        extrinsic[:3, :3] = rotation.T
        extrinsic[:3, 3] = -rotation.T @ eye
        if name == "camera" and yaw == 0 and pitch == 0 and intrinsics is not None and image_size is not None:
            K = _as_matrix(intrinsics).numpy().copy()
            sx, sy = width / image_size[0], height / image_size[1]
            K[0, 0], K[1, 1] = K[0, 0] * sx, K[1, 1] * sy
            K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
        else:
            local = points @ extrinsic[:3, :3].T + extrinsic[:3, 3]
            local = local[local[:, 2] > 1e-6]
            if len(local) == 0:
                raise ValueError(f"view {name!r}: every point lies behind the virtual camera")
            spread_x = np.percentile(np.abs(local[:, 0] / local[:, 2]), 98) + 1e-9
            spread_y = np.percentile(np.abs(local[:, 1] / local[:, 2]), 98) + 1e-9
            focal = min(0.45 * width / spread_x, 0.45 * height / spread_y)
            K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1.0]])
        cameras.append(ViewCamera(name, K, extrinsic, width, height))
    return cameras


# ---------------------------------------------------------------------------------------------------- rendering


@dataclass
class RenderResult:
    """Pictures of one cloud: ``images`` name -> uint8 [H, W, 3], the ``backend`` used and a ``message``."""

    images: dict[str, np.ndarray]
    backend: str
    message: str
    cameras: list[ViewCamera] = field(default_factory=list)


# The Open3D renderers run in a child process: Filament aborts the whole process (C++ PreconditionPanic) when a
# renderer is destroyed while its scene holds geometry or when two renderers coexist, and the legacy
# Visualizer cannot start in a process that already used Filament. A child that renders every view of every cloud
# and leaves with os._exit keeps the caller safe, and a child that dies means "fall back", never a crash.
_WORKER = textwrap.dedent("""
    import os, sys, numpy as np
    backend, source, target = sys.argv[1:4]
    data = np.load(source)
    import open3d as o3d
    width, height, point_size = (int(v) for v in data["size"])
    names = [str(n) for n in data["names"]]
    images = np.zeros((int(data["num_clouds"]), len(names), height, width, 3), np.uint8)
    clouds = []
    for i in range(int(data["num_clouds"])):
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(data[f"points_{i}"].astype(np.float64)))
        cloud.colors = o3d.utility.Vector3dVector(data[f"colours_{i}"].astype(np.float64))
        clouds.append(cloud)
    if backend == "offscreen":
        rendering = o3d.visualization.rendering
        renderer = rendering.OffscreenRenderer(width, height)
        renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
        renderer.scene.view.set_post_processing(False)  # exact colours: no tone mapping
        material = rendering.MaterialRecord()
        material.shader = "defaultUnlit"
        material.point_size = float(point_size)
        for i, cloud in enumerate(clouds):
            renderer.scene.clear_geometry()
            renderer.scene.add_geometry(f"cloud{i}", cloud, material)
            for j in range(len(names)):
                renderer.setup_camera(data["intrinsics"][j], data["extrinsics"][j], width, height)
                images[i, j] = np.asarray(renderer.render_to_image())[..., :3]
    else:
        vis = o3d.visualization.Visualizer()
        if not vis.create_window(visible=False, width=width, height=height):
            sys.stderr.write("legacy Visualizer could not create a hidden window\\n")
            os._exit(3)
        option = vis.get_render_option()
        option.point_size = float(point_size)
        option.background_color = np.array([1.0, 1.0, 1.0])
        for i, cloud in enumerate(clouds):
            vis.clear_geometries()
            vis.add_geometry(cloud)
            for j in range(len(names)):
                params = o3d.camera.PinholeCameraParameters()
                params.intrinsic = o3d.camera.PinholeCameraIntrinsic(width, height, data["intrinsics"][j])
                params.extrinsic = data["extrinsics"][j]
                if not vis.get_view_control().convert_from_pinhole_camera_parameters(params, allow_arbitrary=True):
                    sys.stderr.write("legacy Visualizer refused a camera\\n")
                    os._exit(4)
                vis.poll_events()
                vis.update_renderer()
                buffer = np.asarray(vis.capture_screen_float_buffer(do_render=True))
                images[i, j] = (np.clip(buffer, 0, 1) * 255 + 0.5).astype(np.uint8)
    np.save(target, images)
    sys.stdout.flush()
    os._exit(0)  # skip Open3D's destructors (see the note above)
""")

_LABELS = {"offscreen": "Open3D OffscreenRenderer", "legacy": "Open3D legacy Visualizer (hidden window)",
           "splat": "numpy point splat"}
_failed_backends: dict[str, str] = {}  # backend -> why it failed in this process (not retried)


def _render_open3d(backend: str, clouds: Sequence[tuple[np.ndarray, np.ndarray]], cameras: list[ViewCamera],
                   point_size: int, timeout_s: float) -> np.ndarray:
    """Render clouds x views with an Open3D renderer in a child process; uint8 [C, V, H, W, 3]."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bokehdepth-render-") as folder:
        source, target = Path(folder) / "in.npz", Path(folder) / "out.npy"
        arrays: dict[str, Any] = {f"points_{i}": p.astype(np.float32) for i, (p, _) in enumerate(clouds)}
        arrays.update({f"colours_{i}": c.astype(np.float32) for i, (_, c) in enumerate(clouds)})
        np.savez(source, num_clouds=len(clouds), names=np.array([c.name for c in cameras]),
                 size=np.array([cameras[0].width, cameras[0].height, point_size]),
                 intrinsics=np.stack([c.intrinsic for c in cameras]),
                 extrinsics=np.stack([c.extrinsic for c in cameras]), **arrays)
        try:
            done = subprocess.run([sys.executable, "-c", _WORKER, backend, str(source), str(target)],
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"no picture within {timeout_s:.0f} s") from None
        if done.returncode != 0 or not target.exists():
            lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip() and "WARNING" not in ln]
            raise RuntimeError(lines[-1].strip() if lines else f"exit code {done.returncode}")
        return np.load(target)


def choose_backend(requested: str = "auto") -> list[str]:
    """Renderers to try in order for ``requested`` ("auto" = $BOKEHDEPTH_RENDER_BACKEND or offscreen, legacy,
    splat); the numpy splat always closes the list. Renderers that already failed in this process are left out.
    """
    if requested == "auto":
        requested = os.environ.get("BOKEHDEPTH_RENDER_BACKEND", "auto") or "auto"
    if requested not in ("auto",) + RENDER_BACKENDS:
        raise ValueError(f"render backend must be auto, {', '.join(RENDER_BACKENDS)}; got {requested!r}")
    order = ["offscreen", "legacy"] if requested == "auto" else [requested]
    return [b for b in order if b != "splat" and b not in _failed_backends] + ["splat"]


def render_clouds(clouds: Mapping[str, Any], cameras: list[ViewCamera], *, backend: str = "auto",
                  point_size: int = 2, timeout_s: float = 300.0) -> dict[str, RenderResult]:
    """Render several clouds from the same ``cameras``; one renderer start for all of them.

    ``clouds``: label -> Open3D cloud or (points [M, 3], colours [M, 3] | None). Tries the renderers of
    :func:`choose_backend` in order; each result's ``message`` says which one drew it and why others did not.
    """
    arrays = []
    for label, cloud in clouds.items():
        if isinstance(cloud, tuple):
            points, colours = np.asarray(cloud[0], np.float64), cloud[1]
        else:
            points = np.asarray(cloud.points)
            colours = np.asarray(cloud.colors) if cloud.has_colors() else None
        if len(points) == 0:
            raise ValueError(f"cannot render the empty point cloud {label!r}")
        colours = np.full_like(points, 0.4) if colours is None else np.asarray(colours, np.float64)
        arrays.append((points, colours))
    reasons = [f"{b}: {why}" for b, why in _failed_backends.items()]
    for chosen in choose_backend(backend):
        if chosen == "splat":
            stack = np.stack([np.stack([splat_render(p, c, cam, point_size) for cam in cameras]) for p, c in arrays])
        else:
            try:
                _open3d()
                stack = _render_open3d(chosen, arrays, cameras, point_size, timeout_s)
            except Exception as error:  # noqa: BLE001 - any renderer failure falls back to the next one
                _failed_backends[chosen] = str(error)
                reasons.append(f"{chosen}: {error}")
                continue
        message = f"renderer: {_LABELS[chosen]}"
        if chosen == "splat" and backend != "splat":
            message += " (fallback; " + "; ".join(reasons) + ")" if reasons else ""
            warnings.warn(f"Open3D rendering unavailable, {message}", stacklevel=2)
        return {label: RenderResult({cam.name: stack[i, j] for j, cam in enumerate(cameras)}, chosen, message,
                                    cameras) for i, label in enumerate(clouds)}
    raise AssertionError("unreachable: the splat renderer always draws")


def splat_render(points: np.ndarray, colours: np.ndarray, camera: ViewCamera, point_size: int = 2,
                 background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Z-buffered point splat: each point a ``point_size`` px square, nearest point wins. Returns uint8 [H, W, 3].

    Hand-written because no Open3D renderer draws without a GPU/EGL/Vulkan context; numpy only.
    """
    width, height = camera.width, camera.height
    local = np.asarray(points, np.float64) @ camera.extrinsic[:3, :3].T + camera.extrinsic[:3, 3]
    in_front = local[:, 2] > 1e-6
    local, colours = local[in_front], np.asarray(colours)[in_front]
    K = camera.intrinsic
    u = K[0, 0] * local[:, 0] / local[:, 2] + K[0, 2]
    v = K[1, 1] * local[:, 1] / local[:, 2] + K[1, 2]
    offsets = np.arange(point_size) - (point_size - 1) / 2.0
    us = np.rint(u[:, None, None] + offsets[None, None, :]).astype(np.int64)
    vs = np.rint(v[:, None, None] + offsets[None, :, None]).astype(np.int64)
    us, vs = np.broadcast_arrays(us, vs)
    owner = np.broadcast_to(np.arange(len(u))[:, None, None], us.shape)
    us, vs, owner = us.reshape(-1), vs.reshape(-1), owner.reshape(-1)
    inside = (us >= 0) & (us < width) & (vs >= 0) & (vs < height)
    us, vs, owner = us[inside], vs[inside], owner[inside]
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = background
    if len(owner):
        pixel = vs * width + us
        order = np.lexsort((local[owner, 2], pixel))  # by pixel, then nearest first
        first = order[np.unique(pixel[order], return_index=True)[1]]
        rgb = (np.clip(colours[owner[first]], 0, 1) * 255 + 0.5).astype(np.uint8)
        picture.reshape(-1, 3)[pixel[first]] = rgb
    return picture


def render_views(cloud: Any, *, width: int = 480, height: int = 360,
                 views: Mapping[str, tuple[float, float]] | Sequence[str] = DEFAULT_VIEWS, intrinsics: Any = None,
                 image_size: tuple[int, int] | None = None, backend: str = "auto", point_size: int = 2,
                 cameras: list[ViewCamera] | None = None) -> RenderResult:
    """Render one cloud (Open3D, or (points [M,3], colours [M,3])) from several viewpoints, offscreen.

    Cameras come from :func:`view_cameras` (pass ``intrinsics`` and the photo's ``image_size`` (W, H) to make
    the "camera" view match the photo). See :func:`render_clouds` for the renderer choice.
    """
    if cameras is None:
        points = np.asarray(cloud[0] if isinstance(cloud, tuple) else cloud.points)
        cameras = view_cameras(points, width, height, views, intrinsics, image_size)
    return render_clouds({"cloud": cloud}, cameras, backend=backend, point_size=point_size)["cloud"]


def side_by_side(renders: Mapping[str, RenderResult], pad: int = 4) -> np.ndarray:
    """One picture: a row per labelled cloud (e.g. base / BokehDepth / ground truth), a column per view.

    Returns uint8 [H, W, 3]; each cell is labelled "<label> <view>".
    """
    if not renders:
        raise ValueError("side_by_side needs at least one render")
    view_names = list(next(iter(renders.values())).images)
    rows, labels = [], []
    for label, result in renders.items():
        rows.append([result.images[name] for name in view_names if name in result.images])
        labels.append([f"{label} {name}" for name in view_names if name in result.images])
    return image_grid(rows, labels=labels, pad=pad)


def lift_compare_render(depths: Mapping[str, Any], intrinsics: Any, *, image: Any = None, gt_depth_m: Any = None,
                        valid: Any = None, out_dir: str | Path | None = None, gt_label: str = "ground truth",
                        views: Mapping[str, tuple[float, float]] | Sequence[str] = DEFAULT_VIEWS,
                        render_size: tuple[int, int] = (480, 360), backend: str = "auto", point_size: int = 2,
                        voxel_size_m: float | None = None, outlier_std_ratio: float | None = 2.0,
                        outlier_neighbors: int = 20, min_depth_m: float = 1e-3, max_depth_m: float | None = None,
                        overwrite: bool = False) -> dict[str, Any]:
    """Depth maps -> coloured clouds -> PLY files, renders from shared viewpoints, side-by-side, 3-D errors.

    The one entry point tools (lift3d, infer, eval) share.

    Args:
        depths: label -> depth [1, H, W] / [H, W] metres (e.g. {"base": ..., "BokehDepth": ...}).
        intrinsics: pinhole K of the depth maps (3x3, [fx, fy, cx, cy] or mapping), pixels.
        image: optional [3, H, W] sRGB in [0, 1] colouring every cloud (else coloured by depth).
        gt_depth_m: optional ground truth [1, H, W]: lifted as ``gt_label`` and each depth compared with it
            (:func:`compare_depth_clouds`, on pixels valid in the ground truth and ``valid``).
        valid: optional [1, H, W] bool mask (e.g. a dataset's caps and crop) applied to every cloud and metric.
        out_dir: where to write ``cloud_<label>.ply``, ``render_<label>_<view>.png`` and ``side_by_side.png``;
            None writes nothing. Existing files are refused unless ``overwrite``.
        voxel_size_m / outlier_std_ratio / outlier_neighbors: cleaning (:func:`clean_point_cloud`) of the
            written and rendered clouds; errors use the raw depth maps.

    Returns:
        Summary: renderer message and backend, per-label point counts and cleaning, metrics per label against
        the ground truth (metres), written file names (relative to ``out_dir``), and under ``renders`` the
        :class:`RenderResult` per label (pictures in memory; pop it before writing the rest as JSON).
    """
    from bokeh.io import write_image  # noqa: PLC0415

    if not depths:
        raise ValueError("lift_compare_render needs at least one depth map")
    maps = dict(depths)
    if gt_depth_m is not None:
        if gt_label in maps:
            raise ValueError(f"label {gt_label!r} is reserved for the ground truth")
        maps[gt_label] = gt_depth_m
    shapes = {label: tuple(_depth_2d(d, label).shape) for label, d in maps.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"depth maps must share one size, got (H, W) = {shapes}")
    height, width = next(iter(shapes.values()))
    out = Path(out_dir) if out_dir is not None else None
    summary: dict[str, Any] = {"clouds": {}, "metrics": {}, "files": {}}
    clouds = {}
    for label, depth in maps.items():
        cloud = depth_to_point_cloud(depth, intrinsics, image, valid,
                                     min_depth_m=min_depth_m, max_depth_m=max_depth_m)
        if len(cloud.points) == 0:
            raise ValueError(f"depth map {label!r} has no valid pixel in [{min_depth_m}, {max_depth_m}] m")
        cloud, info = clean_point_cloud(cloud, voxel_size_m=voxel_size_m, outlier_std_ratio=outlier_std_ratio,
                                        outlier_neighbors=outlier_neighbors)
        clouds[label] = cloud
        summary["clouds"][label] = info
        if out is not None:
            name = f"cloud_{_slug(label)}.ply"
            write_point_cloud(out / name, cloud, overwrite=overwrite)
            summary["files"].setdefault("ply", {})[label] = name
        if gt_depth_m is not None and label != gt_label:
            summary["metrics"][label] = compare_depth_clouds(depth, gt_depth_m, intrinsics, valid,
                                                             min_depth_m=min_depth_m, max_depth_m=max_depth_m)
    reference = clouds.get(gt_label, next(iter(clouds.values())))
    cameras = view_cameras(np.asarray(reference.points), render_size[0], render_size[1], views, intrinsics,
                           (width, height))
    renders = render_clouds(clouds, cameras, backend=backend, point_size=point_size)
    first = next(iter(renders.values()))
    summary.update(renderer=first.message, backend=first.backend, views=[c.name for c in cameras])
    if out is not None:
        for label, result in renders.items():
            for view, picture in result.images.items():
                name = f"render_{_slug(label)}_{view}.png"
                _refuse_existing(out / name, overwrite)
                write_image(out / name, picture)
                summary["files"].setdefault("renders", {}).setdefault(label, {})[view] = name
        if len(renders) > 1:
            _refuse_existing(out / "side_by_side.png", overwrite)
            write_image(out / "side_by_side.png", side_by_side(renders))
            summary["files"]["side_by_side"] = "side_by_side.png"
    summary["renders"] = renders
    return summary


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label.strip().lower()) or "cloud"


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")


__all__ = [
    "DEFAULT_VIEWS", "RENDER_BACKENDS", "RenderResult", "ViewCamera", "choose_backend", "clean_point_cloud",
    "cloud_distances", "compare_depth_clouds", "lift_compare_render", "depth_to_point_cloud", "lift_depth", "render_clouds",
    "read_point_cloud", "render_views", "side_by_side", "splat_render", "to_open3d", "view_cameras",
    "write_point_cloud",
]
