"""learning.png: held-out accuracy per stage (with and without rumination) and the GRPO reward per step.

Drawn with Pillow (a dependency already) rather than matplotlib (not one). Inputs are what a run leaves in its
workdir: `report.json` (per stage, the evaluation summaries of both modes) and `logs/metrics.jsonl` (every GRPO
step logs `<stage>/reward/total` and `<stage>/reward/accuracy`, train/grpo_stage.py).
"""
from __future__ import annotations

import json
import os

from PIL import Image, ImageDraw, ImageFont

W, H = 1100, 420
BLUE, ORANGE, GREEN, GREY, BLACK = (31, 119, 180), (255, 127, 14), (44, 160, 44), (200, 200, 200), (0, 0, 0)


def grpo_rewards(metrics_path: str) -> dict[str, list[tuple[float, float]]]:
  """{stage: [(reward/total, reward/accuracy) per logged step]} from a metrics.jsonl, in file order. A resumed
  run appends: a step logged twice keeps its last record."""
  per: dict[str, dict[int, tuple[float, float]]] = {}
  if not os.path.exists(metrics_path):
    return {}
  with open(metrics_path, encoding="utf-8") as f:
    for line in f:
      rec = json.loads(line)
      for k, v in rec.items():
        if k.endswith("/reward/total"):
          stage = k[:-len("/reward/total")]
          per.setdefault(stage, {})[rec["step"]] = (float(v), float(rec.get(f"{stage}/reward/accuracy", "nan")))
  return {st: [d[k] for k in sorted(d)] for st, d in per.items()}


class _Panel:
  """A plot area at (x0, y0, x1, y1) in pixels mapping data ranges xr, yr."""

  def __init__(self, draw, box, xr, yr, title, font):
    self.d, self.box, self.xr, self.yr, self.font = draw, box, xr, yr, font
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=BLACK)
    draw.text((x0, y0 - 28), title, fill=BLACK, font=font)
    for i in range(6):       # y grid and labels
      v = yr[0] + (yr[1] - yr[0]) * i / 5
      y = self.y(v)
      draw.line((x0, y, x1, y), fill=GREY)
      draw.text((x0 - 38, y - 6), f"{v:.2f}", fill=BLACK, font=font)

  def x(self, v):
    x0, _, x1, _ = self.box
    return x0 + (v - self.xr[0]) / max(self.xr[1] - self.xr[0], 1e-9) * (x1 - x0)

  def y(self, v):
    _, y0, _, y1 = self.box
    return y1 - (v - self.yr[0]) / max(self.yr[1] - self.yr[0], 1e-9) * (y1 - y0)

  def line(self, xs, ys, colour, marker=False):
    pts = [(self.x(a), self.y(b)) for a, b in zip(xs, ys) if b == b]     # b == b: skips NaN
    if len(pts) > 1:
      self.d.line(pts, fill=colour, width=2)
    if marker:
      for px, py in pts:
        self.d.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour)

  def legend(self, items):
    x0, y0 = self.box[0] + 8, self.box[1] + 8
    for i, (name, colour) in enumerate(items):
      self.d.rectangle((x0, y0 + 16 * i + 3, x0 + 14, y0 + 16 * i + 9), fill=colour)
      self.d.text((x0 + 20, y0 + 16 * i), name, fill=BLACK, font=self.font)


def write_learning_png(path: str, report: dict, rewards: dict[str, list[tuple[float, float]]]) -> str:
  """Writes the two-panel figure to `path` and returns it."""
  img = Image.new("RGB", (W, H), "white")
  d = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  stages = list(report.get("stages", {}))
  left = _Panel(d, (60, 50, 500, 360), (-0.3, max(len(stages) - 1, 1) + 0.3), (0.0, 1.0),
                "held-out accuracy after each stage", font)
  for mode, colour in (("rumination", BLUE), ("single_pass", ORANGE)):
    ys = [report["stages"][s][mode]["accuracy"] for s in stages]
    left.line(range(len(stages)), ys, colour, marker=True)
    for i, v in enumerate(ys):
      d.text((left.x(i) + 6, left.y(v) - 14), f"{v:.2f}", fill=colour, font=font)
  for i, s in enumerate(stages):
    d.text((left.x(i) - 3 * len(s), 368), s, fill=BLACK, font=font)
  left.legend([("with rumination", BLUE), ("single pass", ORANGE)])

  rl = [s for s in stages if s in rewards] + [s for s in rewards if s not in stages]
  n = sum(len(rewards[s]) for s in rl)
  top = max([1.0] + [v for s in rl for pair in rewards[s] for v in pair if v == v])
  right = _Panel(d, (600, 50, 1080, 360), (0, max(n - 1, 1)), (0.0, top), "GRPO reward per step (the training batch, after dynamic sampling)",
                 font)
  offset = 0
  for s in rl:
    xs = range(offset, offset + len(rewards[s]))
    right.line(xs, [t for t, _ in rewards[s]], GREEN)
    right.line(xs, [a for _, a in rewards[s]], BLUE)
    if offset:
      d.line((right.x(offset - 0.5), 50, right.x(offset - 0.5), 360), fill=BLACK)
    d.text((right.x(offset) + 4, 368), f"{s} ({len(rewards[s])} steps)", fill=BLACK, font=font)
    offset += len(rewards[s])
  right.legend([("total reward", GREEN), ("accuracy reward", BLUE)])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)
  return path


def write_for_workdir(workdir: str) -> str:
  """learning.png of a finished (or partial) run in `workdir`."""
  with open(os.path.join(workdir, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  return write_learning_png(os.path.join(workdir, "learning.png"), report,
                            grpo_rewards(os.path.join(workdir, "logs", "metrics.jsonl")))
