"""bokeh.io: readers in project conventions, clear errors, atomic writers that leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bokeh.io import (
    ImageReadError,
    atomic_path,
    colorize_depth,
    colorize_depth_with_legend,
    image_grid,
    list_images,
    output_dir,
    prepare_output_dir,
    read_depth,
    read_image,
    write_image,
    write_json,
    write_npy,
)


def test_image_round_trip_is_exact_at_8_bit(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", array)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(array))


def test_grayscale_and_rgba_are_converted_with_a_warning(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 128, np.uint8), "L").save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="grayscale"):
        gray = read_image(tmp_path / "g.png")
    assert gray.shape == (3, 4, 4) and torch.allclose(gray, torch.full_like(gray, 128 / 255))
    Image.fromarray(np.full((4, 4, 4), 200, np.uint8), "RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha"):
        assert read_image(tmp_path / "a.png").shape == (3, 4, 4)


def test_missing_and_corrupt_images_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found.*nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match="corrupt.*bad.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_depth_png_scale_and_npy(tmp_path: Path) -> None:
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    Image.fromarray(mm).save(tmp_path / "d.png")
    depth = read_depth(tmp_path / "d.png", depth_scale=1000.0)
    assert depth.shape == (1, 2, 2)
    assert torch.allclose(depth[0], torch.tensor([[0.0, 1.0], [2.5, 65.535]]))
    with pytest.raises(ImageReadError, match="depth_scale"):
        read_depth(tmp_path / "d.png")
    np.save(tmp_path / "d.npy", np.array([[1.5, np.nan]], np.float32))
    assert torch.equal(read_depth(tmp_path / "d.npy"), torch.tensor([[[1.5, 0.0]]]))
    np.save(tmp_path / "neg.npy", np.array([[1.5, -1.0]], np.float32))
    with pytest.raises(ImageReadError, match="negative"):
        read_depth(tmp_path / "neg.npy")


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []
    write_json(target, {"a": torch.tensor(1.5), "b": np.float32(2), "p": Path("q")})
    assert target.read_text().count('"a": 1.5') == 1
    write_npy(tmp_path / "z.npy", torch.ones(2))
    assert np.load(tmp_path / "z.npy").tolist() == [1.0, 1.0]


def test_nan_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "n.png", torch.full((3, 2, 2), float("nan")))
    assert not list(tmp_path.iterdir())


def test_prepare_output_dir_refuses_non_empty_unless_overwrite(tmp_path: Path) -> None:
    out = prepare_output_dir(tmp_path / "run")
    (out / "f.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_output_dir(out)
    assert not any(prepare_output_dir(out, overwrite=True).iterdir())


def test_output_dir_keeps_the_previous_output_until_the_new_one_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with output_dir(out) as folder:
        (folder / "old.txt").write_text("first run")
    with pytest.raises(FileExistsError, match="--overwrite"):  # refused before anything is touched
        with output_dir(out):
            pass
    assert (out / "old.txt").read_text() == "first run"
    # a failing overwrite (a bad input found half-way) leaves the first run's output exactly as it was
    with pytest.raises(SystemExit):
        with output_dir(out, overwrite=True) as folder:
            assert folder == out and not (folder / "old.txt").exists()  # the body writes into the final path
            (folder / "half.txt").write_text("partial")
            raise SystemExit(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and [p.name for p in out.iterdir()] == ["old.txt"]
    # a successful overwrite replaces it, with no hidden leftovers
    with output_dir(out, overwrite=True) as folder:
        (folder / "new.txt").write_text("second run")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["run"]
    # a new folder the body fails in is not left behind
    with pytest.raises(ValueError):
        with output_dir(tmp_path / "fresh" / "deep"):
            raise ValueError("bad K")
    assert not (tmp_path / "fresh").exists()  # nor the parent made for it


def test_a_folder_that_cannot_be_made_is_an_error_of_its_type_naming_it(tmp_path: Path, monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PermissionError, match=r"cannot create output folder .*out: Permission denied"):
        with output_dir(tmp_path / "out"):
            pass


def test_an_output_under_a_file_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"not a folder")
    with pytest.raises(FileExistsError, match=r"photo\.png is a file, not a folder"):
        with output_dir(tmp_path / "photo.png" / "a" / "b"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_list_images_errors_on_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(tmp_path)


def test_colorize_depth_orders_near_and_far_and_blacks_invalid() -> None:
    depth = torch.tensor([[[1.0, 2.0, 4.0, 0.0]]])
    colours = colorize_depth(depth, vmin=1.0, vmax=4.0, cmap="gray")
    assert colours.shape == (1, 4, 3)
    assert colours[0, 0, 0] == 255 and colours[0, 2, 0] == 0 and colours[0, 3].tolist() == [0, 0, 0]
    # 1/depth is linear in the colour: 1/2 m sits at (1/2 - 1/4) / (1 - 1/4) = 1/3 of the scale.
    assert abs(int(colours[0, 1, 0]) - round(255 / 3)) <= 1


def test_depth_legend_labels_the_rows_whose_colour_is_that_depth() -> None:
    h, w, lo, hi = 112, 40, 0.5, 8.0
    depth = torch.linspace(lo, hi, h).view(1, h, 1).expand(1, h, w)
    picture = colorize_depth_with_legend(depth, vmin=lo, vmax=hi, cmap="gray")
    assert np.array_equal(picture[:, :w], colorize_depth(depth, vmin=lo, vmax=hi, cmap="gray"))  # map unchanged
    bar = picture[:, w:].astype(int)
    strip = int(np.flatnonzero(bar[h // 2, :, 0] < 255)[0])  # first column of the colour strip (white gap before)
    # 4 ticks (h // 28) evenly spaced in 1/depth, rounded to 2 digits (the ends inwards): 0.5, 0.73, 1.3, 8 m
    ticks = [0.5, 0.73, 1.3, 8.0]
    level = lambda d: (1 / d - 1 / hi) / (1 / lo - 1 / hi)  # noqa: E731  (position on the inverse-depth scale)
    expected_rows = [round((1 - level(d)) * (h - 1)) for d in ticks]
    right_of_strip = bar[:, strip:, 0]
    strip_w = int(np.argmax(right_of_strip[h // 2] == 255))
    tick_rows = [int(r) for r in np.flatnonzero(right_of_strip[:, strip_w] == 0)]
    assert tick_rows == expected_rows
    for d, row in zip(ticks, expected_rows):  # the strip's colour there is the map's colour for that depth
        want = int(colorize_depth(torch.tensor([[d]]), vmin=lo, vmax=hi, cmap="gray")[0, 0, 0])
        assert abs(int(bar[row, strip, 0]) - want) <= 2


def test_image_grid_layout() -> None:
    a = np.zeros((4, 6, 3), np.uint8)
    b = torch.ones(3, 2, 3)
    grid = image_grid([[a, b], [b]], pad=1)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 3)
    assert grid[1, 1].tolist() == [0, 0, 0] and grid[1, 8].tolist() == [255, 255, 255]


def test_read_image_turns_photos_upright_only_when_asked(tmp_path):
    """EXIF Orientation 6 (rotate 90 degrees clockwise to view): a 4-wide, 2-high stored image is 2 wide, 4 high."""
    from PIL import Image

    from bokeh.io import read_image

    stored = np.zeros((2, 4, 3), dtype=np.uint8)
    stored[0, 0] = 255  # top-left red
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.png"
    Image.fromarray(stored).save(path, exif=exif)
    assert tuple(read_image(path).shape) == (3, 2, 4)  # datasets: as stored
    upright = read_image(path, exif_orientation=True)
    assert tuple(upright.shape) == (3, 4, 2)
    # rotating 90 degrees clockwise moves the stored top-left pixel to the top-right
    assert upright[0, 0, 1] == 1.0 and upright[0, 0, 0] == 0.0


def test_a_npy_depth_of_strings_is_named_not_numeric(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.array([["1.0", "2.0"], ["3.0", "x"]]))
    with pytest.raises(ValueError, match=r"d\.npy holds <U3 values; expected numbers \(metres\)"):
        read_depth(tmp_path / "d.npy")


def test_a_depth_path_that_is_a_folder_is_named_by_its_option(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    with pytest.raises(ImageReadError, match=r"^--depth .*maps is a folder, not a file; expected a depth file "
                                             r"\(\.npy in metres, or a PNG\)$"):
        read_depth(tmp_path / "maps", name="--depth")


def test_depth_of_another_size_labels_both_sizes_height_by_width(tmp_path: Path) -> None:
    from bokeh.io import read_depth_for_image

    np.save(tmp_path / "d.npy", np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"d\.npy is 2x3 \(HxW\) but its image is 3x2 \(HxW\); expected the same "
                                         r"size"):
        read_depth_for_image(tmp_path / "d.npy", (3, 2))


def test_depth_legend_labels_both_ends_of_a_near_constant_map() -> None:
    """2.0-2.003 m: two significant digits give 2 m at both ends; the bottom end takes more digits (2.003 m)."""
    h, w, lo, hi = 112, 40, 2.0, 2.003
    depth = torch.linspace(lo, hi, h).view(1, h, 1).expand(1, h, w)
    bar = colorize_depth_with_legend(depth, vmin=lo, vmax=hi, cmap="gray")[:, w:].astype(int)
    strip = int(np.flatnonzero(bar[h // 2, :, 0] < 255)[0])
    right_of_strip = bar[:, strip:, 0]
    strip_w = int(np.argmax(right_of_strip[h // 2] == 255))
    assert [int(r) for r in np.flatnonzero(right_of_strip[:, strip_w] == 0)] == [0, h - 1]
