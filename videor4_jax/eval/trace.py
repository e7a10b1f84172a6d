"""Rumination trace report: one HTML page with PNGs showing, per sampled question, what the model looked at.

For each question: the global frames (the prompt's view), every action with its crop box drawn on its source frame
(or the clipped frames outlined), the pixels the model got back, the model's text of every step and its answer
against the gold answers. Self-contained: PNGs sit next to `index.html`; no scripts, no network.

A record (plain Python, built by eval/loop.py from a Trajectory and the batch):
  {"qid": str, "question": str, "golds": [str], "prediction": str, "correct": bool,
   "global_frames": uint8 [F, h, w, 3], "source_frames": uint8 [F, H, W, 3],
   "steps": [{"text": str, "action": {"name": "crop", "frame": int, "bbox_2d": [x1, y1, x2, y2]} |
                                     {"name": "clip", "frames": [int]} | None,
              "error": str | None, "observation": uint8 [k, oh, ow, 3] | None}]}
"""
from __future__ import annotations

import html
import os

import numpy as np
from PIL import Image, ImageDraw

BOX_COLOR = (255, 0, 80)


def _save_png(arr: np.ndarray, path: str, scale: int = 1) -> str:
  img = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
  if scale != 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  img.save(path)
  return os.path.basename(path)


def strip(frames: np.ndarray, gap: int = 4) -> np.ndarray:
  """Frames `[F, H, W, 3]` side by side with a white gap."""
  f, h, w, _ = frames.shape
  out = np.full((h, f * w + (f - 1) * gap, 3), 255, np.uint8)
  for i in range(f):
    out[:, i * (w + gap):i * (w + gap) + w] = frames[i]
  return out


def draw_box(frame: np.ndarray, box, width: int = 2) -> np.ndarray:
  """The normalized box `(x1, y1, x2, y2)` drawn on a copy of `frame` (clamped to the frame; NaN drawn as none)."""
  img = Image.fromarray(np.ascontiguousarray(frame.astype(np.uint8)))
  h, w = frame.shape[:2]
  b = np.nan_to_num(np.asarray(box, np.float64), nan=0.0).clip(0.0, 1.0)
  ImageDraw.Draw(img).rectangle([b[0] * (w - 1), b[1] * (h - 1), b[2] * (w - 1), b[3] * (h - 1)],
                                outline=BOX_COLOR, width=width)
  return np.asarray(img)


def outline(frame: np.ndarray, width: int = 3) -> np.ndarray:
  out = frame.copy()
  out[:width], out[-width:], out[:, :width], out[:, -width:] = BOX_COLOR, BOX_COLOR, BOX_COLOR, BOX_COLOR
  return out


def _step_html(q: int, s: int, step: dict, src: np.ndarray, out_dir: str) -> str:
  parts = [f"<div class='step'><div class='text'>{html.escape(step.get('text', ''))}</div>"]
  act, err = step.get("action"), step.get("error")
  if act is not None:
    parts.append(f"<div class='act'>{html.escape(act['name'])} {html.escape(str({k: v for k, v in act.items() if k != 'name'}))}</div>")
    if act["name"] == "crop" and 1 <= act.get("frame", 0) <= len(src):
      png = _save_png(draw_box(src[act["frame"] - 1], act["bbox_2d"]), os.path.join(out_dir, f"q{q}_s{s}_box.png"))
      parts.append(f"<img src='{png}' title='frame {act['frame']} with the crop box'>")
    elif act["name"] == "clip":
      chosen = [src[i - 1] if i - 1 in range(len(src)) else np.zeros_like(src[0]) for i in act.get("frames", [])]
      if chosen:
        png = _save_png(strip(np.stack([outline(f) for f in chosen])), os.path.join(out_dir, f"q{q}_s{s}_clip.png"))
        parts.append(f"<img src='{png}' title='clipped frames {act.get('frames')}'>")
  if err:
    parts.append(f"<div class='err'>error: {html.escape(err)}</div>")
  obs = step.get("observation")
  if obs is not None and len(obs):
    png = _save_png(strip(np.asarray(obs)), os.path.join(out_dir, f"q{q}_s{s}_obs.png"), scale=2)
    parts.append(f"<div class='obs'>returned pixels:<br><img src='{png}'></div>")
  parts.append("</div>")
  return "".join(parts)


CSS = """body{font-family:sans-serif;margin:16px;background:#fafafa} .q{background:#fff;border:1px solid #ddd;
padding:12px;margin-bottom:16px} .ok{color:#080} .bad{color:#c00} .step{border-left:3px solid #ccd;padding:4px 8px;
margin:6px 0} .text{white-space:pre-wrap;font-family:monospace;font-size:12px} .act{font-weight:bold}
.err{color:#c00} img{image-rendering:pixelated;margin:4px;border:1px solid #eee}"""


def write_trace_report(out_dir: str, records: list[dict], title: str = "Video-R4 rumination traces") -> str:
  """Writes `out_dir/index.html` and its PNGs; returns the HTML path."""
  os.makedirs(out_dir, exist_ok=True)
  body = [f"<h1>{html.escape(title)}</h1>"]
  for q, r in enumerate(records):
    status = "ok" if r.get("correct") else "bad"
    png = _save_png(strip(np.asarray(r["global_frames"])), os.path.join(out_dir, f"q{q}_global.png"), scale=2)
    body.append(f"<div class='q'><h3>{html.escape(str(r.get('qid', q)))}: {html.escape(r['question'])}</h3>"
                f"<div>global view:<br><img src='{png}'></div>")
    for s, step in enumerate(r.get("steps", [])):
      body.append(_step_html(q, s, step, np.asarray(r["source_frames"]), out_dir))
    body.append(f"<div class='{status}'>answer: <b>{html.escape(r.get('prediction', ''))}</b> &nbsp; gold: "
                f"{html.escape(' | '.join(r.get('golds', [])))}</div></div>")
  page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
          f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
  path = os.path.join(out_dir, "index.html")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(page)
  os.replace(tmp, path)
  return path


def screenshot(html_path: str, png_path: str, *, width: int = 1200, height: int = 1600, timeout: int = 120) -> str:
  """Renders the trace page with headless Chromium (found on PATH) into a PNG; returns its path."""
  import shutil
  import subprocess
  exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
  if exe is None:
    raise FileNotFoundError("no chromium / chromium-browser / google-chrome on PATH; install one to screenshot "
                            "the trace page (the HTML itself needs no browser to be written)")
  cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
         f"--screenshot={os.path.abspath(png_path)}", "file://" + os.path.abspath(html_path)]
  subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
  if not os.path.exists(png_path):
    raise RuntimeError(f"{exe} wrote no screenshot for {html_path}")
  return png_path
