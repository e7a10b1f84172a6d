"""Built-in 5x7 bitmap alphabet, so the synthetic task never depends on system fonts.

A glyph is a boolean `[7, 5]` bitmap; `render_code` lays glyphs out left to right with a one-column gap and
scales the bitmap by an integer factor `s` (nearest neighbour), so a code of n glyphs is `[7s, (6n-1)s]` pixels
and every stroke is exactly `s` pixels wide. Stroke width is what decides legibility after a resize by a factor
r: an area-average resize turns an `s`-pixel stroke into `s/r` pixels, and below one pixel neighbouring strokes
blur into each other (the synthetic task relies on that; see synthetic.py).
"""
from __future__ import annotations

import numpy as np

GLYPH_H, GLYPH_W, GLYPH_GAP = 7, 5, 1

# Rows top to bottom, '#' = ink. Classic 5x7 LCD shapes.
_FONT_ROWS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}

ALPHABET: str = "".join(_FONT_ROWS)  # every glyph the font can draw, in a fixed order


def _bitmap(ch: str) -> np.ndarray:
  rows = _FONT_ROWS.get(ch)
  if rows is None:
    raise KeyError(f"glyphs.py: no bitmap for {ch!r}; the font has {ALPHABET!r}")
  return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


GLYPHS: dict[str, np.ndarray] = {ch: _bitmap(ch) for ch in _FONT_ROWS}  # ch -> bool [7, 5]

for _ch, _g in GLYPHS.items():  # the font is the one source of truth: check its shape once at import
  assert _g.shape == (GLYPH_H, GLYPH_W), (_ch, _g.shape)


def code_size(n_glyphs: int, scale: int) -> tuple[int, int]:
  """(height, width) in pixels of an n-glyph code drawn at integer `scale`."""
  return GLYPH_H * scale, (n_glyphs * (GLYPH_W + GLYPH_GAP) - GLYPH_GAP) * scale


def render_code(code: str, scale: int) -> np.ndarray:
  """Ink mask of `code`: bool `[7*scale, (6*len(code)-1)*scale]`, glyphs separated by one blank column."""
  if not code:
    raise ValueError("render_code: empty code")
  if scale < 1:
    raise ValueError(f"render_code: scale={scale} must be >= 1")
  gap = np.zeros((GLYPH_H, GLYPH_GAP), dtype=bool)
  parts = []
  for i, ch in enumerate(code):
    if i:
      parts.append(gap)
    parts.append(GLYPHS[ch] if ch in GLYPHS else _bitmap(ch))
  mask_hw = np.concatenate(parts, axis=1)
  return np.repeat(np.repeat(mask_hw, scale, axis=0), scale, axis=1)


def draw_code(img_hw3: np.ndarray, code: str, scale: int, top: int, left: int, ink_rgb) -> None:
  """Draws `code` in place into `img_hw3` (uint8 [H, W, 3]) with its top-left corner at (top, left)."""
  mask = render_code(code, scale)
  h, w = mask.shape
  if top < 0 or left < 0 or top + h > img_hw3.shape[0] or left + w > img_hw3.shape[1]:
    raise ValueError(f"draw_code: code {code!r} ({h}x{w} px) at ({top}, {left}) leaves the "
                     f"{img_hw3.shape[0]}x{img_hw3.shape[1]} image")
  img_hw3[top:top + h, left:left + w][mask] = np.asarray(ink_rgb, dtype=np.uint8)
