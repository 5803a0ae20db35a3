"""Labelled image grids: "real vs synthetic per class" sheets and `dermabench data preview`.

One row per (label, images); the label is written on the left in PIL's default
font, every image is fitted into a square cell (aspect kept, centred), and the
PNG is written atomically (temp file in the same folder, fsync, os.replace), so
a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dermabench.errors import DermabenchError
from dermabench.results import atomic_file

__all__ = ["image_grid", "save_grid"]

Rows = Sequence[tuple[str, Sequence[Image.Image]]]

_PAD = 4
_BACKGROUND = (255, 255, 255)
_EMPTY_CELL = (236, 236, 236)
_TEXT = (20, 20, 20)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _fit(image: Image.Image, cell: int) -> Image.Image:
    """The image as RGB, scaled (aspect kept) to fit a cell x cell square."""
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, _BACKGROUND)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        else:
            image = image.convert("RGB")
    w, h = image.size
    scale = cell / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image
    method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    return image.resize(size, method)


def image_grid(rows: Rows, cell: int = 96, title: str | None = None) -> Image.Image:
    """Draw the grid and return it as an RGB image.

    rows: (label, images) pairs, one grid row each; rows may hold different numbers
    of images (short rows are padded with grey cells). cell: side of each square
    image cell in pixels. title: optional line above the grid.
    """
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 8:
        raise DermabenchError(f"grid cell size must be an integer >= 8 pixels, got {cell!r}")
    rows = [(str(label), list(images)) for label, images in rows]
    if not rows:
        raise DermabenchError("nothing to draw: the grid has no rows")
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_size(probe, label, font)[0] for label, _ in rows)
    label_col = label_w + 2 * _PAD if label_w else 0
    n_cols = max(1, max(len(images) for _, images in rows))
    title_h = _text_size(probe, title, font)[1] + 2 * _PAD if title else 0
    width = _PAD + label_col + n_cols * (cell + _PAD)
    height = _PAD + title_h + len(rows) * (cell + _PAD)
    if title:
        width = max(width, _text_size(probe, title, font)[0] + 2 * _PAD)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.multiline_text((_PAD, _PAD), title, fill=_TEXT, font=font)
    for r, (label, images) in enumerate(rows):
        top = _PAD + title_h + r * (cell + _PAD)
        if label:
            _, text_h = _text_size(draw, label, font)
            draw.multiline_text((_PAD, top + (cell - text_h) // 2), label, fill=_TEXT, font=font)
        for c in range(n_cols):
            left = _PAD + label_col + c * (cell + _PAD)
            if c >= len(images):
                draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill=_EMPTY_CELL)
                continue
            tile = _fit(images[c], cell)
            sheet.paste(tile, (left + (cell - tile.width) // 2, top + (cell - tile.height) // 2))
    return sheet


def save_grid(rows: Rows, path: str | os.PathLike[str], cell: int = 96, title: str | None = None) -> Path:
    """Write a labelled PNG grid (see `image_grid`) atomically to `path`; return the path.

    Missing parent folders are created. The file appears complete or not at all.
    """
    path = Path(path)
    sheet = image_grid(rows, cell=cell, title=title)
    with atomic_file(path) as handle:
        sheet.save(handle, format="PNG")
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows it (POSIX); ignore elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
