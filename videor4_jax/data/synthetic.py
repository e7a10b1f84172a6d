"""Synthetic text-rich video task: small codes on coloured signs that only rumination can read.

A video is F frames of `source_hw` pixels: a plain noisy background and up to `grid` cells, each holding at most
one coloured sign; a sign may carry a code (1-3 glyphs of `alphabet`, drawn by glyphs.py). The model sees the
*global view* (every frame resized to `global_hw`, default 4x smaller) and may ask for observations re-encoded at
`obs_hw` from the *source* frames: a crop of one grid cell, or a clip of whole frames.

Legibility is a matter of stroke width. A glyph drawn at integer scale s has s-pixel strokes; a view that shrinks
the source by a factor r leaves s/r-pixel strokes, and below one pixel the strokes of a 5x7 glyph merge. So

  crop text scale  s_crop = ceil(crop_text_px * box / obs)     -> crop_text_px-pixel strokes in the gold crop,
  clip text scale  s_clip = ceil(clip_text_px * source / obs)  -> clip_text_px-pixel strokes in a clipped frame,

where `box` is the side of the gold crop box (`crop_box_frac` of a grid cell, centred on it). `SyntheticConfig`
refuses settings where either scale leaves strokes wider than `max_global_stroke_px` (default 0.5) in the global
view (s * global / source), because then the question could be answered without ruminating: 0.75-pixel strokes
(scale 3 at a 4x smaller global view) were checked by eye to stay legible, 0.5-pixel strokes are blobs.
(tests/test_data_synthetic.py quantifies it: two codes differ clearly in the gold observation and hardly in the
global view.)

Question types (the kind of gold trajectory in brackets):
  crop      static small text on one of several signs: "What is written on the red sign?"   [deliberate: crop]
  clip      larger text on one sign on a few consecutive frames only                          [deliberate: clip]
  clip_crop small text on one sign on a few frames only                                       [compositional: clip, crop]
Gold crop boxes are grid cells (a small set, learnable by a tiny model). Frame indices are 1-based.
Every example is a pure function of (config, seed, split, index), so any split is random-access and reproducible.
"""
from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from videor4_jax.data import glyphs, teacher
from videor4_jax.data.schema import Trajectory, validate

QUESTION_TYPES = ("crop", "clip", "clip_crop")

# name -> (sign RGB, ink RGB); ink contrasts with the sign.
PALETTE: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red": ((210, 40, 40), (255, 255, 255)),
    "green": ((40, 170, 60), (0, 0, 0)),
    "blue": ((40, 70, 210), (255, 255, 255)),
    "yellow": ((235, 210, 40), (0, 0, 0)),
    "orange": ((240, 140, 30), (0, 0, 0)),
    "purple": ((140, 50, 190), (255, 255, 255)),
    "cyan": ((40, 200, 210), (0, 0, 0)),
    "white": ((235, 235, 235), (0, 0, 0)),
}


PLATE_RGB, PLATE_INK = (235, 235, 235), (0, 0, 0)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Difficulty knobs of the synthetic task (all validated in __post_init__).

  num_frames:       F source frames per video.
  source_hw:        source resolution; rumination crops from it.
  global_hw:        resolution of each frame in the prompt's global view.
  obs_hw:           resolution of a re-encoded observation (crop output and clipped frames).
  grid:             (rows, cols) of sign cells; gold crop boxes are these cells.
  alphabet:         glyphs codes are drawn from (subset of glyphs.ALPHABET).
  code_len:         (min, max) glyphs per code.
  num_distractors:  signs besides the target (at most rows*cols - 1); they carry static small codes.
  sign_frac:        sign side as a fraction of the cell side.
  jitter_px:        max random offset of a sign from its cell centre (the sign never leaves its cell).
  noise_std:        std of the static Gaussian texture of the background (and of the signs).
  frame_noise_std:  std of extra per-frame Gaussian noise. Default 0: lossless mp4 cannot compress temporal
                    noise (8x224x224 videos grow from about 0.1 MB to 0.8 MB at std 6).
  flash_len:        (min, max) consecutive frames the target text of clip questions is visible.
  max_clip_frames:  K, most frames a gold clip selects (must cover flash_len[1]).
  question_types:   the types drawn, uniformly.
  crop_text_px:     stroke width (pixels) of crop-question text in its gold crop; larger is easier to read.
  clip_text_px:     stroke width (pixels) of clip-question text in a clipped frame.
  crop_box_frac:    side of the gold crop box as a fraction of the cell side (centred on the cell; rounded to two
                    decimals like every box the grammar writes). Below 1 the crop zooms into the sign's middle.
  max_global_stroke_px: the widest text stroke allowed in the global view (legibility bound above).
  text_plate:       codes sit on a static light plate (the gold box's size) in black ink, as on a label, rather
                    than in the sign's ink colour on the sign: the crop then varies with the text, not the sign.
  plate_flashes:    with text_plate, a flashing text's plate shows only on the text's frames (a caption box that
                    pops up with its caption): *when* the text is shown is visible in the global view, *what* it
                    says is not. Without it the only temporal change is 0.5-px strokes, which a tiny model did not
                    localise in time (measured: one constant clip for every clip_crop question after CRP-SFT).
  name_position:    questions name where the sign is ("... on the red sign at the top left?"), so the crop box
                    follows from the question. Without it the model must find the sign by its colour in the
                    global view: mapping a colour to a grid position through relative (rotary) positions only is
                    a grounding skill a tiny model does not learn in minutes (measured: 4-6 of 23 gold boxes after
                    300 SFT steps, below chance), while it reads every gold crop it gets.
  name_time:        flashing text occupies one of F // flash_len[1] fixed windows (frames 1-2, 3-4, ... at
                    flash_len (2, 2)) and the question names it ("... in the second quarter?"), so the clip, like
                    the crop box under name_position, follows from the question. Without it the tiny model did
                    not localise the flash from the global view (README, Results: one constant clip).
  confusable_frac:  fraction of crop questions asked about a sign with a neighbouring sign (the first distractor
                    sits in the cell beside the target, same row) and saying so: "... at the top left, next to the
                    blue sign?". The attribute is stated in the question, so a policy can condition on it.
  teacher_flaw_prob: p, how often the imperfect teacher of the gold trajectories takes a wrong but plausible
                    action on a confusable question, and answers from what that action shows (teacher.py):
                      crop questions that name a neighbouring sign: it crops the neighbour and reads its code;
                      clip_crop questions whose window is an inner one (name_time, >= 3 windows): it clips the
                      adjacent window towards the nearer end of the video, crops a blank plate there and guesses.
                    With clip_flaw_windows="all" the first and last windows are flawed too (the window beside
                    them is clipped): every clip_crop question, not only half of them.
                    The right action stays learnable from the question; with p > 0.5 SFT learns the teacher's
                    mixture and its greedy policy takes the wrong action, which GRPO with the accuracy reward can
                    fix (its groups of samples contain both outcomes). 0: a flawless teacher.
  """
  num_frames: int = 8
  source_hw: tuple[int, int] = (224, 224)
  global_hw: tuple[int, int] = (56, 56)
  obs_hw: tuple[int, int] = (112, 112)
  grid: tuple[int, int] = (2, 2)
  alphabet: str = "0123456789"
  code_len: tuple[int, int] = (1, 3)
  num_distractors: int = 2
  sign_frac: float = 0.6
  jitter_px: int = 4
  noise_std: float = 6.0
  frame_noise_std: float = 0.0
  flash_len: tuple[int, int] = (2, 3)
  max_clip_frames: int = 4
  question_types: tuple[str, ...] = QUESTION_TYPES
  crop_text_px: float = 1.0
  clip_text_px: float = 1.0
  crop_box_frac: float = 1.0
  max_global_stroke_px: float = 0.5
  text_plate: bool = False
  plate_flashes: bool = False
  name_position: bool = False
  name_time: bool = False
  confusable_frac: float = 0.0
  teacher_flaw_prob: float = 0.0
  clip_flaw_windows: str = "inner"

  def __post_init__(self):
    for f in ("source_hw", "global_hw", "obs_hw", "grid", "code_len", "flash_len", "question_types"):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    bad = lambda msg: ValueError(f"SyntheticConfig: {msg}")  # noqa: E731
    if self.num_frames < 2 or self.num_frames % 2:
      raise bad(f"num_frames={self.num_frames} must be even and >= 2 (temporal patch 2)")
    for f in ("source_hw", "global_hw", "obs_hw"):
      if any(s % 28 for s in getattr(self, f)):
        raise bad(f"{f}={getattr(self, f)}: sides must be multiples of 28 (patch 14 x merge 2)")
    if any(g > s for g, s in zip(self.global_hw, self.source_hw)):
      raise bad(f"global_hw={self.global_hw} must not exceed source_hw={self.source_hw}")
    if self.grid[0] < 1 or self.grid[1] < 1 or any(s % g for s, g in zip(self.source_hw, self.grid)):
      raise bad(f"grid={self.grid} must divide source_hw={self.source_hw}")
    if bad_ch := set(self.alphabet) - set(glyphs.ALPHABET):
      raise bad(f"alphabet has glyphs {sorted(bad_ch)} that glyphs.py cannot draw")
    if len(set(self.alphabet)) < 2:
      raise bad(f"alphabet={self.alphabet!r} needs at least two distinct glyphs")
    if not 1 <= self.code_len[0] <= self.code_len[1]:
      raise bad(f"code_len={self.code_len} must satisfy 1 <= min <= max")
    if not 0 <= self.num_distractors < self.grid[0] * self.grid[1]:
      raise bad(f"num_distractors={self.num_distractors} must be in [0, cells-1={self.grid[0] * self.grid[1] - 1}]")
    if self.num_distractors + 1 > len(PALETTE):
      raise bad(f"num_distractors={self.num_distractors}: only {len(PALETTE)} sign colours exist")
    if not 1 <= self.flash_len[0] <= self.flash_len[1] <= min(self.num_frames - 1, self.max_clip_frames):
      raise bad(f"flash_len={self.flash_len} must satisfy 1 <= min <= max <= min(F-1, max_clip_frames)")
    if not self.question_types or set(self.question_types) - set(QUESTION_TYPES):
      raise bad(f"question_types={self.question_types} must be a non-empty subset of {QUESTION_TYPES}")
    if self.crop_text_px <= 0 or self.clip_text_px <= 0:
      raise bad(f"crop_text_px={self.crop_text_px} and clip_text_px={self.clip_text_px} must be > 0")
    if not 0.0 < self.crop_box_frac <= 1.0:
      raise bad(f"crop_box_frac={self.crop_box_frac} must be in (0, 1]")
    if not 0.0 < self.sign_frac <= 1.0 or self.jitter_px < 0 or min(self.noise_std, self.frame_noise_std) < 0:
      raise bad(f"sign_frac={self.sign_frac} in (0,1], jitter_px={self.jitter_px} >= 0, noise_std >= 0 required")
    if not 0.0 <= self.confusable_frac <= 1.0 or not 0.0 <= self.teacher_flaw_prob <= 1.0:
      raise bad(f"confusable_frac={self.confusable_frac} and teacher_flaw_prob={self.teacher_flaw_prob} must be "
                f"in [0, 1]")
    if self.confusable_frac > 0 and (self.num_distractors < 1 or self.grid[1] < 2 or not self.name_position):
      raise bad(f"confusable_frac={self.confusable_frac} needs a sign beside the target: num_distractors >= 1 "
                f"(got {self.num_distractors}), grid columns >= 2 (got {self.grid}) and name_position=True")
    if self.clip_flaw_windows not in ("inner", "all"):
      raise bad(f"clip_flaw_windows={self.clip_flaw_windows!r} must be 'inner' (inner windows only) or 'all'")
    if self.name_time and self.num_frames // self.flash_len[1] < 2:
      raise bad(f"name_time needs >= 2 windows of flash_len[1]={self.flash_len[1]} frames in num_frames="
                f"{self.num_frames}; lower flash_len")
    # Legibility: the text must need the observation (strokes < 1 px in the global view).
    scales = [("crop", self.crop_text_scale)] + [("clip", self.clip_text_scale)] * ("clip" in self.question_types)
    for name, s in scales:
      stroke = s * self.global_hw[0] / self.source_hw[0]
      if stroke > self.max_global_stroke_px:
        raise bad(f"{name} text at scale {s} keeps {stroke:.2f}-px strokes in the global view {self.global_hw}: "
                  f"readable without rumination; raise obs_hw={self.obs_hw} or lower global_hw")
    sign_h, sign_w = self.sign_hw
    for name, s in scales:
      th, tw = glyphs.code_size(self.code_len[1], s)
      if th + 2 > sign_h or tw + 2 > sign_w:
        raise bad(f"a {self.code_len[1]}-glyph {name} code ({th}x{tw} px at scale {s}) does not fit the "
                  f"{sign_h}x{sign_w} sign; raise sign_frac or lower code_len")
    th, tw = glyphs.code_size(self.code_len[1], self.crop_text_scale)
    box_h, box_w = (int(c * self.crop_box_frac) for c in self.cell_hw)
    if th + 2 * self.jitter_px > box_h or tw + 2 * self.jitter_px > box_w:
      raise bad(f"a {self.code_len[1]}-glyph crop code ({th}x{tw} px) with jitter_px={self.jitter_px} can leave "
                f"the {box_h}x{box_w} gold crop box; raise crop_box_frac or lower code_len / jitter_px")

  @property
  def cell_hw(self) -> tuple[int, int]:
    return self.source_hw[0] // self.grid[0], self.source_hw[1] // self.grid[1]

  @property
  def sign_hw(self) -> tuple[int, int]:
    return int(self.cell_hw[0] * self.sign_frac), int(self.cell_hw[1] * self.sign_frac)

  @property
  def crop_text_scale(self) -> int:
    box_hw = (c * self.crop_box_frac for c in self.cell_hw)
    return max(1, math.ceil(self.crop_text_px * max(b / o for b, o in zip(box_hw, self.obs_hw)) - 1e-9))

  @property
  def clip_text_scale(self) -> int:
    return max(1, math.ceil(self.clip_text_px * max(s / o for s, o in zip(self.source_hw, self.obs_hw)) - 1e-9))

  @property
  def num_windows(self) -> int:
    """name_time: the number of fixed flash windows (flash_len[1] frames each, from frame 1)."""
    return self.num_frames // self.flash_len[1]

  def neighbour_cell(self, cell: int) -> int:
    """The cell beside `cell` in its row (to the right, or to the left in the last column)."""
    r, c = divmod(cell, self.grid[1])
    return r * self.grid[1] + (c + 1 if c + 1 < self.grid[1] else c - 1)

  def cell_box(self, cell: int) -> tuple[float, float, float, float]:
    """Normalized (x1, y1, x2, y2) of grid cell `cell` (row-major)."""
    r, c = divmod(cell, self.grid[1])
    return (c / self.grid[1], r / self.grid[0], (c + 1) / self.grid[1], (r + 1) / self.grid[0])

  def gold_box(self, cell: int) -> tuple[float, float, float, float]:
    """The gold crop box of `cell`: `crop_box_frac` of the cell, centred on it, rounded to two decimals."""
    x1, y1, x2, y2 = self.cell_box(cell)
    hx, hy = (x2 - x1) * self.crop_box_frac / 2, (y2 - y1) * self.crop_box_frac / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return tuple(round(v, 2) for v in (cx - hx, cy - hy, cx + hx, cy + hy))


@dataclasses.dataclass(frozen=True)
class SyntheticExample:
  """One generated question: source frames `frames_fhw3` (uint8 [F, H, W, 3]) and its gold trajectory."""
  frames_fhw3: np.ndarray
  trajectory: Trajectory
  question_type: str

  def rl_row(self) -> Trajectory:
    """The same question as an RL row (question and answers only)."""
    return dataclasses.replace(self.trajectory, kind="rl", steps=())


def _position_name(cfg: SyntheticConfig, cell: int) -> str:
  r, c = divmod(cell, cfg.grid[1])
  rows = {1: ["middle"], 2: ["top", "bottom"], 3: ["top", "middle", "bottom"]}.get(cfg.grid[0])
  cols = {1: ["centre"], 2: ["left", "right"], 3: ["left", "centre", "right"]}.get(cfg.grid[1])
  if rows and cols:
    return f"{rows[r]} {cols[c]}"
  return f"row {r + 1}, column {c + 1}"


def _draw_codes(rng, cfg, n) -> list[str]:
  """n distinct random codes."""
  out: list[str] = []
  while len(out) < n:
    k = int(rng.integers(cfg.code_len[0], cfg.code_len[1] + 1))
    code = "".join(rng.choice(list(cfg.alphabet), size=k))
    if code not in out:
      out.append(code)
  return out


def render_video(cfg: SyntheticConfig, rng: np.random.Generator, signs: list[dict]) -> np.ndarray:
  """Frames uint8 [F, H, W, 3]. `signs`: dicts with cell, colour, code, scale, frames (0-based set or None = all)."""
  h, w = cfg.source_hw
  bg_rgb = rng.integers(60, 196, size=3)
  base_hw3 = np.broadcast_to(bg_rgb, (h, w, 3)).astype(np.float32)
  # Static texture (luminance + per channel) so background and signs are not flat; constant over time.
  base_hw3 = base_hw3 + rng.normal(0, cfg.noise_std, size=(h, w, 1)).astype(np.float32)
  texture_hw3 = rng.normal(0, cfg.noise_std, size=(h, w, 3)).astype(np.float32)
  sh, sw = cfg.sign_hw
  ch, cw = cfg.cell_hw
  layout = []
  for s in signs:
    r, c = divmod(s["cell"], cfg.grid[1])
    slack_y, slack_x = (ch - sh) // 2, (cw - sw) // 2
    jy, jx = (int(rng.integers(-min(cfg.jitter_px, d), min(cfg.jitter_px, d) + 1)) for d in (slack_y, slack_x))
    top, left = r * ch + slack_y + jy, c * cw + slack_x + jx
    layout.append((top, left))
    base_hw3[top:top + sh, left:left + sw] = PALETTE[s["colour"]][0]
  plates = []   # (sign, plate slices) of plates drawn per frame
  for s, (top, left) in zip(signs, layout):
    if cfg.text_plate and s["code"]:
      # A light plate under the text, a little larger than the gold crop box (or the code).
      th, tw = glyphs.code_size(len(s["code"]), s["scale"])
      ph, pw = (max(t + 2, round(c * cfg.crop_box_frac) + 2) for t, c in ((th, ch), (tw, cw)))   # +2: box rounding
      cy, cx = top + (sh - th) // 2 + th // 2, left + (sw - tw) // 2 + tw // 2
      plate = (slice(cy - ph // 2, cy - ph // 2 + ph), slice(cx - pw // 2, cx - pw // 2 + pw))
      if cfg.plate_flashes and s["frames"] is not None:
        plates.append((s, plate))
      else:
        base_hw3[plate] = PLATE_RGB
  frames = []
  for f in range(cfg.num_frames):
    img = base_hw3 + texture_hw3
    for s, plate in plates:
      if f in s["frames"]:
        img[plate] = np.asarray(PLATE_RGB, np.float32) + texture_hw3[plate]
    if cfg.frame_noise_std > 0:
      img = img + rng.normal(0, cfg.frame_noise_std, size=(h, w, 3)).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    for s, (top, left) in zip(signs, layout):
      if s["code"] and (s["frames"] is None or f in s["frames"]):
        th, tw = glyphs.code_size(len(s["code"]), s["scale"])
        glyphs.draw_code(img, s["code"], s["scale"], top + (sh - th) // 2, left + (sw - tw) // 2,
                         PLATE_INK if cfg.text_plate else PALETTE[s["colour"]][1])
    frames.append(img)
  return np.stack(frames)


# Longer than a screen: one example's random draws happen in a fixed order (the data of a seed must not change when
# the code is reorganised), so the drawing stays in one function; the pieces it calls are teacher.py and glyphs.py.
def generate(cfg: SyntheticConfig, seed: int, index: int, *, split: str = "train",
             question_type: str | None = None) -> SyntheticExample:
  """Example `index` of split `split` of the stream `seed`: a pure function of its arguments."""
  rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
  qtype = question_type or cfg.question_types[int(rng.integers(len(cfg.question_types)))]
  if qtype not in QUESTION_TYPES:
    raise ValueError(f"generate: question_type={qtype!r} not in {QUESTION_TYPES}")
  n_signs = cfg.num_distractors + 1
  cells = [int(c) for c in rng.permutation(cfg.grid[0] * cfg.grid[1])[:n_signs]]
  colours = [str(c) for c in rng.permutation(list(PALETTE))[:n_signs]]
  codes = _draw_codes(rng, cfg, n_signs)
  target = 0  # index of the target sign in the lists above (already random through the permutations)
  # The teacher's draws come from their own stream, so examples without flaw knobs are unchanged by them.
  trng = np.random.default_rng([seed, zlib.crc32(split.encode()), index, 1])
  confusable = qtype == "crop" and cfg.confusable_frac > 0 and bool(trng.random() < cfg.confusable_frac)
  if confusable:   # the first distractor moves beside the target (swapping cells with any sign already there)
    nb = cfg.neighbour_cell(cells[target])
    if nb in cells:
      cells[cells.index(nb)] = cells[1]
    cells[1] = nb
  F = cfg.num_frames
  flash, window = None, None
  if qtype != "crop":
    n = int(rng.integers(cfg.flash_len[0], cfg.flash_len[1] + 1))
    if cfg.name_time:
      window = int(rng.integers(cfg.num_windows))
      flash = {f - 1 for f in teacher.window_frames(window, cfg.flash_len[1])}
    else:
      start = int(rng.integers(0, F - n + 1))
      flash = set(range(start, start + n))
  signs = []
  for i in range(n_signs):
    big = i == target and qtype == "clip"
    signs.append(dict(cell=cells[i], colour=colours[i], code=codes[i],
                      scale=cfg.clip_text_scale if big else cfg.crop_text_scale,
                      frames=flash if i == target else None))
  frames = render_video(cfg, rng, signs)

  colour, code, cell = colours[target], codes[target], cells[target]
  box = cfg.gold_box(cell)
  pos = _position_name(cfg, cell)
  where = f" at the {pos}" if cfg.name_position else ""
  video_id = f"syn{seed}-{split}-{index:07d}"
  flawed = False
  if qtype == "crop":
    question = f"What is written on the {colour} sign{where}"
    question += f", next to the {colours[1]} sign?" if confusable else "?"
    frame = F // 2 + 1
    flawed = confusable and bool(trng.random() < cfg.teacher_flaw_prob)
    nb = cells[1]
    steps = (teacher.crop_steps(colour, _position_name(cfg, nb), frame, cfg.gold_box(nb), codes[1]) if flawed
             else teacher.crop_steps(colour, pos, frame, box, code))
    kind, ev_frames = "deliberate", list(range(1, F + 1))
  else:
    when = f" in the {teacher.window_name(window, cfg.num_windows)}" if cfg.name_time else ""
    question = f"What code appears briefly on the {colour} sign{where}{when}?"
    clip_frames = tuple(sorted(f + 1 for f in flash))
    ev_frames = list(clip_frames)
    if qtype == "clip":
      steps, kind = teacher.clip_steps(colour, clip_frames, code), "deliberate"
    else:
      wrong = teacher.flawed_window(window, cfg.num_windows, cfg.clip_flaw_windows) if cfg.name_time else None
      flawed = wrong is not None and bool(trng.random() < cfg.teacher_flaw_prob)
      if flawed:    # the clip misses the text: the crop shows a blank plate, and the teacher guesses
        guess = next(g for g in (_draw_codes(trng, cfg, 1)[0] for _ in range(1000)) if g != code)
        steps = teacher.clip_crop_steps(colour, pos, teacher.window_frames(wrong, cfg.flash_len[1]), box, guess)
      else:
        steps = teacher.clip_crop_steps(colour, pos, clip_frames, box, code)
      kind = "compositional"
  traj = Trajectory(
      qid=f"syn{seed}-{split}-{index}", video_id=video_id, question=question, answers=(code,), kind=kind,
      steps=steps,
      evidence={"question_type": qtype, "frames": ev_frames, "boxes": [list(box)], "cell": cell,
                "colour": colour, "code": code, "confusable": confusable, "teacher_flawed": flawed,
                "window": window,
                "distractors": [{"cell": cells[i], "colour": colours[i], "code": codes[i]}
                                for i in range(n_signs) if i != target]})
  validate(traj, num_frames=F)
  return SyntheticExample(frames_fhw3=frames, trajectory=traj, question_type=qtype)
