"""What every task's pictures share: the outline width and font for an image's size, and text labels on filled
boxes placed so that they stay inside the image."""

from __future__ import annotations

from typing import Sequence, Tuple

__all__ = ["line_width", "font_for", "draw_labels"]


def line_width(width: int, height: int) -> int:
    """Box outline width in pixels: 2 px up to 800 px images, then growing with the longer side (15 px at 6000).

    >>> line_width(640, 480), line_width(6000, 4000)
    (2, 15)
    """
    return max(2, round(max(width, height) / 400))


def font_for(line: int):
    """A scalable font sized for outlines of ``line`` pixels (the fixed bitmap font on an old Pillow)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(11, 6 * line))
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def draw_labels(draw, labels: Sequence[Tuple[str, float, float, Tuple[int, int, int]]], lw: int, font,
                below: bool = False) -> None:
    """``(text, x, y, colour)`` labels on filled boxes with a readable text colour: above the point (``below``: under
    it), or below it at the image's top edge."""
    for text, x, y, colour in labels:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * lw, bottom - top + 2 * lw
        y0 = y if below or y - th < 0 else y - th  # above the box, or inside it at the image's top edge
        draw.rectangle([x, y0, x + tw, y0 + th], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((x + lw - left, y0 + lw - top), text, font=font, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255))
