#!/usr/bin/env python
"""Turn a run directory (fit / eval / infer / lift3d outputs) into one self-contained HTML page.

    python tools/report.py runs/eval/20261123-1530 [--out report.html] [--link-images] [--overwrite]

The page holds, per sub-folder of the run: JSON files as tables (a mapping of mappings -> one row per key, e.g. a
metrics table per method; a flat mapping -> key/value rows; a list of records -> one row each), CSV logs (last
rows), pictures (grids, colour maps, point-cloud renders) embedded as base64 (or linked relative to the page with
``--link-images``), the resolved config (YAML) and short text files, the point-cloud files present, and a
"Warnings" list of every sample a tool skipped. Written atomically to ``<run>/report.html`` by default; an existing
page is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401

from PIL import Image  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
TEXT_SUFFIXES = {".yaml", ".yml", ".txt", ".md", ".log"}
CLOUD_SUFFIXES = {".ply", ".pcd"}
SKIP_DIRS = {"checkpoints", "__pycache__", ".git", "tensorboard", "lightning_logs"}
MAX_TEXT_CHARS = 20_000
MAX_CSV_ROWS = 20

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;
     color:#222;padding:0 16px}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em} h3{font-size:1.05em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em} th,td{border:1px solid #ddd;padding:4px 8px}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:6px;vertical-align:top} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.85em;color:#555} pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:400px}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 12px} .meta{color:#666;font-size:0.9em}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="run directory written by fit / eval / infer / lift3d")
    parser.add_argument("--out", help="HTML file to write (default: <run_dir>/report.html)")
    parser.add_argument("--title", help="page title (default: the run directory's name)")
    parser.add_argument("--link-images", action="store_true",
                        help="link pictures relative to the page instead of embedding them (smaller page)")
    parser.add_argument("--max-image-side", type=int, default=1600,
                        help="embedded pictures larger than this (px) are downscaled; 0 keeps them as they are")
    parser.add_argument("--max-images", type=int, default=300, help="at most this many pictures on the page")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing page")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ formatting


def _fmt(value: Any) -> tuple[str, bool]:
    """(text, is_number) for one table cell: floats to 4 significant digits, containers as compact JSON."""
    if isinstance(value, bool) or value is None:
        return html.escape(str(value)), False
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value), True
        return (f"{value:.4g}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"), True
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return html.escape(text if len(text) <= 200 else text[:197] + "..."), False
    return html.escape(str(value)), False


def _cell(value: Any, tag: str = "td") -> str:
    text, number = _fmt(value)
    return f'<{tag} class="num">{text}</{tag}>' if number else f"<{tag}>{text}</{tag}>"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(value: Any, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested mappings -> dotted keys (up to 3 levels; deeper content stays JSON)."""
    if isinstance(value, dict) and depth < 3:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}.", depth + 1))
        return flat
    return {prefix[:-1]: value}


def json_to_html(content: Any) -> str:
    """Tables for one JSON document (see the module docstring for the shapes recognised)."""
    if isinstance(content, list) and content and all(isinstance(r, dict) for r in content):
        columns = list(dict.fromkeys(k for r in content for k in r))
        return _table(columns, [[r.get(c, "") for c in columns] for r in content])
    if not isinstance(content, dict):
        return _table(["value"], [[content]])
    parts = []
    matrix = {k: v for k, v in content.items() if isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values())}
    if len(matrix) >= 2 or (matrix and len(matrix) == len(content)):
        columns = list(dict.fromkeys(c for row in matrix.values() for c in row))
        parts.append(_table([""] + columns, [[k] + [row.get(c, "") for c in columns] for k, row in matrix.items()]))
        rest = {k: v for k, v in content.items() if k not in matrix}
    else:
        rest = content
    if rest:
        flat = _flatten(rest)
        parts.append(_table(["key", "value"], [[k, v] for k, v in flat.items()]))
    return "".join(parts)


SKIPPED_KEYS = ("skipped", "skipped_samples")


def _find_skipped(content: Any, where: str, found: list[tuple[str, Any]]) -> None:
    """Collect every non-empty ``skipped`` / ``skipped_samples`` list (make_stack, infer / eval) in a JSON
    document."""
    if isinstance(content, dict):
        for key, value in content.items():
            if key in SKIPPED_KEYS and isinstance(value, list) and value:
                found.extend((where, item) for item in value)
            else:
                _find_skipped(value, where, found)
    elif isinstance(content, list):
        for item in content:
            _find_skipped(item, where, found)


def _image_html(path: Path, page_dir: Path, link: bool, max_side: int) -> str:
    caption = html.escape(path.name)
    if link:
        src = html.escape(os.path.relpath(path, page_dir).replace(os.sep, "/"))
    else:
        data = path.read_bytes()
        mime = {".jpg": "jpeg", ".jpeg": "jpeg"}.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
        if max_side:
            with Image.open(path) as picture:
                picture.load()  # a truncated file fails here (OSError: a warning), not as half a picture
                if max(picture.size) > max_side:
                    picture.thumbnail((max_side, max_side))
                    buffer = io.BytesIO()
                    picture.convert("RGB").save(buffer, format="PNG")
                    data, mime = buffer.getvalue(), "png"
        src = f"data:image/{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<figure><img src="{src}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _csv_html(path: Path) -> str:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return "<p class='meta'>(empty)</p>"
    header, body = rows[0], rows[1:]
    note = f"<p class='meta'>last {MAX_CSV_ROWS} of {len(body)} rows</p>" if len(body) > MAX_CSV_ROWS else ""

    def number(text: str) -> Any:
        try:
            return float(text) if text else ""
        except ValueError:
            return text

    return note + _table(header, [[number(v) for v in row] for row in body[-MAX_CSV_ROWS:]])


# ---------------------------------------------------------------------------------------------------- page


def build_report(run_dir: str | Path, out: str | Path | None = None, *, title: str | None = None,
                 link_images: bool = False, max_image_side: int = 1600, max_images: int = 300,
                 overwrite: bool = False) -> Path:
    """Write the HTML page for ``run_dir``; returns its path. Errors: missing/empty run dir, existing page."""
    from bokeh.io import write_text  # noqa: PLC0415 - keeps `--help` fast

    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ValueError(f"run directory {run} is a file; expected a run folder (written by fit / eval / infer / "
                         f"lift3d)")
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    if max_image_side < 0:
        raise ValueError(f"--max-image-side must be >= 0 px (0 keeps pictures as they are), got {max_image_side}")
    if max_images < 0:
        raise ValueError(f"--max-images must be >= 0 pictures, got {max_images}")
    page = Path(out) if out else run / "report.html"
    if page.is_dir():
        raise FileExistsError(f"--out {page} is a folder; expected the path of an HTML file to write (e.g. "
                              f"{page / 'report.html'})")
    if page.exists() and not overwrite:
        raise FileExistsError(f"{page} exists; pass --overwrite to replace it")
    if page.parent.exists() and not page.parent.is_dir():
        raise FileExistsError(f"cannot write {page}: {page.parent} is a file, not a folder")
    files = sorted(p for p in run.rglob("*") if p.is_file() and p.resolve() != page.resolve()
                   and not any(part in SKIP_DIRS or part.startswith(".") for part in p.relative_to(run).parts))
    wanted = IMAGE_SUFFIXES | TEXT_SUFFIXES | CLOUD_SUFFIXES | {".json", ".csv"}
    files = [p for p in files if p.suffix.lower() in wanted and p.name != page.name]
    if not files:
        raise ValueError(f"run directory {run} holds no results (JSON, CSV, pictures, configs or point clouds)")
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(str(path.parent.relative_to(run)), []).append(path)
    sections, skipped, images_shown, problems = [], [], 0, []
    for folder, paths in groups.items():
        body, long_json = [], []
        for path in [p for p in paths if p.suffix.lower() == ".json"]:
            try:
                content = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                problems.append(f"{path.relative_to(run)}: not valid JSON ({error})")
                continue
            _find_skipped(content, str(path.relative_to(run)), skipped)
            tables = json_to_html(content)
            if tables.count("<tr>") <= 30:  # metric tables stay in view; long records fold away
                body.append(f"<h3>{html.escape(path.name)}</h3>{tables}")
            else:
                long_json.append(f"<details><summary>{html.escape(path.name)}</summary>{tables}</details>")
        for path in [p for p in paths if p.suffix.lower() == ".csv"]:
            try:
                body.append(f"<h3>{html.escape(path.name)}</h3>{_csv_html(path)}")
            except UnicodeDecodeError as error:
                problems.append(f"{path.relative_to(run)}: not UTF-8 text ({error})")
        figures = []
        pictures = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
        # Comparison pictures first: grids and side-by-side views summarise the rest.
        pictures.sort(key=lambda p: (not any(k in p.stem.lower() for k in ("grid", "side_by_side", "compar")), p.name))
        for path in pictures:
            if images_shown >= max_images:
                problems.append(f"more than {max_images} pictures: {path.relative_to(run)} and later ones left out")
                break
            try:
                figures.append(_image_html(path, page.parent, link_images, max_image_side))
                images_shown += 1
            except (OSError, Image.DecompressionBombError) as error:  # a bomb: a header claiming a huge size
                problems.append(f"{path.relative_to(run)}: unreadable picture ({error})")
        if figures:
            body.append("<div>" + "".join(figures) + "</div>")
        body.extend(long_json)
        for path in [p for p in paths if p.suffix.lower() in TEXT_SUFFIXES]:
            text = path.read_text(errors="replace")
            if len(text) > MAX_TEXT_CHARS:
                text = text[:MAX_TEXT_CHARS] + "\n... (truncated)"
            body.append(f"<details{' open' if path.suffix in ('.yaml', '.yml') else ''}><summary>"
                        f"{html.escape(path.name)}</summary><pre>{html.escape(text)}</pre></details>")
        clouds = [p for p in paths if p.suffix.lower() in CLOUD_SUFFIXES]
        if clouds:
            items = "".join(f"<li>{html.escape(p.name)} ({p.stat().st_size / 1e6:.1f} MB)</li>" for p in clouds)
            body.append(f"<h3>point clouds</h3><ul>{items}</ul>")
        heading = "run directory" if folder == "." else folder
        sections.append(f"<h2>{html.escape(heading)}</h2>" + "".join(body))
    warnings_html = ""
    if skipped or problems:
        items = [f"<li>{html.escape(where)}: skipped {html.escape(json.dumps(item, default=str))}</li>"
                 for where, item in skipped] + [f"<li>{html.escape(p)}</li>" for p in problems]
        warnings_html = f"<h2>Warnings</h2><div class='warn'><ul>{''.join(items)}</ul></div>"
    name = html.escape(title or run.resolve().name)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{name}</title>"
                f"<style>{STYLE}</style></head><body><h1>{name}</h1><p class='meta'>{html.escape(str(run))} - "
                f"report made {stamp} by tools/report.py - {len(files)} files, {images_shown} pictures</p>"
                f"{warnings_html}{''.join(sections)}</body></html>\n")
    try:
        write_text(page, document)
    except OSError as error:  # a parent that is a file, no permission
        raise type(error)(f"cannot create output {page}: {error.strerror or error}") from error
    return page


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        page = build_report(args.run_dir, args.out, title=args.title, link_images=args.link_images,
                            max_image_side=args.max_image_side, max_images=args.max_images, overwrite=args.overwrite)
    except (OSError, ValueError) as error:  # OSError: FileNotFoundError, FileExistsError, cannot create --out
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {page} ({page.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
