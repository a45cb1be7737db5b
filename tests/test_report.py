"""tools/report.py on a fixture run directory: tables, embedded or linked pictures, warnings, refusals."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from _tools import error_line, load_tool


@pytest.fixture(scope="module")
def report():
    return load_tool("report", "report_tool")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run / "config.yaml").write_text("model:\n  encoder: vits\nseed: 0\n")
    (run / "metrics.json").write_text(json.dumps({
        "base": {"abs_rel": 0.123456, "delta1": 0.8},
        "BokehDepth (physics stacks, oracle)": {"abs_rel": 0.0987654, "delta1": 0.9}}))
    (run / "summary.json").write_text(json.dumps({"checkpoint": "none", "skipped": [
        {"name": "img_003", "path": "in/img_003.jpg", "reason": "corrupt image"}]}))
    (run / "eval.json").write_text(json.dumps({"datasets": [{"dataset": "nyu", "skipped_samples": [
        {"name": "img_007", "reason": "depth file missing"}]}]}))  # tools/eval.py's key
    (run / "metrics.csv").write_text("epoch,loss\n" + "".join(f"{i},{1.0 / (i + 1)}\n" for i in range(30)))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(run / "samples" / "grid_000.png")
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(run / "samples" / "render_a.png")
    (run / "samples" / "cloud_a.ply").write_bytes(b"ply\n" + b"0" * 2000)
    return run


def test_report_tables_pictures_config_and_warnings(report, run_dir: Path) -> None:
    assert report.main([str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    # metric table: one row per method, values to 4 significant digits
    assert "<th>abs_rel</th><th>delta1</th>" in page
    assert "<td>BokehDepth (physics stacks, oracle)</td><td class=\"num\">0.09877</td>" in page
    assert '<td>base</td><td class="num">0.1235</td><td class="num">0.8</td>' in page
    # skipped samples are gathered into the warnings box
    assert "Warnings" in page and "img_003" in page and "corrupt image" in page
    box = page[page.index("<div class='warn'>"):]
    box = box[:box.index("</div>")]
    assert "img_003" in box and "img_007" in box and "depth file missing" in box  # eval.py's skipped_samples too
    # resolved config and the last CSV rows (loss of epoch 29 = 1/30), point-cloud file listed
    assert "encoder: vits" in page and "last 20 of 30 rows" in page and '<td class="num">0.03333</td>' in page
    assert "cloud_a.ply" in page
    assert "last.ckpt" not in page  # checkpoints are not results
    # pictures are embedded and decode back to the same pixels; the grid comes first in its folder
    sources = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page)
    assert [alt for _, alt in sources] == ["grid_000.png", "render_a.png"]
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(sources[0][0]))))
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(run_dir / "samples" / "grid_000.png")))
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # atomic write left no temporary


def test_linked_pictures_resolve_relative_to_the_page(report, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pages" / "r.html"
    assert report.main([str(run_dir), "--out", str(out), "--link-images"]) == 0
    sources = re.findall(r'<img src="([^"]+)"', out.read_text())
    assert sources and all((out.parent / s).resolve().is_file() for s in sources)


def test_large_pictures_are_downscaled_when_embedded(report, run_dir: Path) -> None:
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(run_dir / "big.png")
    assert report.main([str(run_dir), "--max-image-side", "100"]) == 0
    page = (run_dir / "report.html").read_text()
    data = dict((alt, src) for src, alt in re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page))
    assert Image.open(io.BytesIO(base64.b64decode(data["big.png"]))).size == (100, 75)


def test_existing_page_is_refused_unless_overwrite(report, run_dir: Path, capsys) -> None:
    (run_dir / "report.html").write_text("old")
    assert report.main([str(run_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (run_dir / "report.html").read_text() == "old"
    assert report.main([str(run_dir), "--overwrite"]) == 0
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_missing_or_empty_run_directory_is_an_error(report, tmp_path: Path, capsys) -> None:
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "holds no results" in capsys.readouterr().err


def test_broken_json_is_reported_not_fatal(report, run_dir: Path) -> None:
    (run_dir / "broken.json").write_text("{not json")
    assert report.main([str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "broken.json: not valid JSON" in page and "abs_rel" in page


def test_out_folder_is_refused_even_with_overwrite(report, run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "pages").mkdir()
    assert report.main([str(run_dir), "--out", str(tmp_path / "pages"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "is a folder" in err and "HTML file" in err


@pytest.mark.parametrize("extra, message", [
    (["--max-image-side", "-5"], "--max-image-side must be >= 0"),
    (["--max-images", "-1"], "--max-images must be >= 0"),
])
def test_negative_limits_are_refused_naming_the_option(report, run_dir: Path, capsys, extra, message) -> None:
    assert report.main([str(run_dir), *extra]) == 2
    assert message in capsys.readouterr().err and not (run_dir / "report.html").exists()


def test_a_file_given_as_run_directory_is_named_as_a_file(report, run_dir: Path, capsys) -> None:
    assert report.main([str(run_dir / "metrics.json")]) == 2
    err = capsys.readouterr().err
    assert "is a file; expected a run folder" in err and "not found" not in err


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb to PIL)."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # chunk type + 13 data bytes, CRC after
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_decompression_bomb_picture_is_a_warning_not_fatal(report, run_dir: Path) -> None:
    (run_dir / "samples" / "big.png").write_bytes(_png_claiming(30000, 30000))
    assert report.main([str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "samples/big.png: unreadable picture (Image size (900000000 pixels) exceeds limit" in page
    assert "grid_000.png" in page and "abs_rel" in page


def test_truncated_picture_is_a_warning_not_half_a_picture(report, run_dir: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    (run_dir / "samples" / "cut.png").write_bytes(buffer.getvalue()[:300])
    assert report.main([str(run_dir)]) == 0  # 64 px, under the default 1600: it used to be embedded as it was
    page = (run_dir / "report.html").read_text()
    assert "samples/cut.png: unreadable picture" in page


def test_csv_that_is_not_utf8_is_a_warning_naming_it(report, run_dir: Path) -> None:
    (run_dir / "log.csv").write_bytes(b"step,loss\n1,\xff\xfe\n")
    assert report.main([str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "log.csv: not UTF-8 text (&#x27;utf-8&#x27; codec can&#x27;t decode byte 0xff" in page
    assert "<h3>log.csv</h3>" not in page and "<h3>metrics.csv</h3>" in page


def test_page_under_a_file_is_an_error_line(report, run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "blocker").write_text("a file")
    page = tmp_path / "blocker" / "sub" / "r.html"
    assert report.main([str(run_dir), "--out", str(page)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: cannot create output {page}: ") and not page.parent.exists()


def test_page_that_cannot_be_written_is_an_error_line(report, run_dir: Path, capsys, monkeypatch) -> None:
    import bokeh.io

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bokeh.io, "write_text", refuse)
    assert report.main([str(run_dir)]) == 2
    assert error_line(capsys) == f"error: cannot create output {run_dir / 'report.html'}: Permission denied"
