"""Builds trace-report records (eval/trace.py) from evaluated batches: frames, actions, returned pixels, text."""
from __future__ import annotations

import numpy as np

from videor4_jax.data.features import decode_strings
from videor4_jax.rumination.observation import execute_host


def _steps_text(text: str) -> list[str]:
  parts = text.split("</tool_call>")
  return [p + "</tool_call>" for p in parts[:-1]] + [parts[-1]]


def trace_records(kept, questions, tok, env, limit: int) -> list[dict]:
  """One record per evaluated question, in evaluation order, paired with its batch row by qid: `evaluate` leaves
  out rows whose record failed to load, so positions in `questions` and in the batches differ after one."""
  by_qid = {q["qid"]: q for q in questions}
  recs = []
  rc = env.rollout
  for batch, traj, n in kept:
    for i in range(n):
      if len(recs) >= limit:
        return recs
      if "row_ok" in batch and not batch["row_ok"][i]:
        continue
      qd = by_qid[decode_strings(batch["qid"][i])[0]]
      src = np.asarray(batch["source_frames"][i])
      texts = _steps_text(qd["text"])
      steps = []
      for j, act in enumerate(qd["actions"] + [None]):
        obs = None
        if act is not None and act.get("error") is None and act["name"] in ("crop", "clip"):
          frames, groups, err, _ = execute_host(src, act, obs_hw=rc.obs_hw, max_clip_frames=rc.max_clip_frames,
                                                crop_margin=rc.crop_margin, crop_min_px=rc.crop_min_px)
          obs = np.asarray(frames[:2 * groups:(2 if act["name"] == "crop" else 1)], np.uint8) if not err else None
        steps.append(dict(text=texts[j] if j < len(texts) else "", action=act,
                          error=None if act is None else act.get("error"), observation=obs))
      small = src[:, ::4, ::4]
      recs.append(dict(qid=qd["qid"], question=qd["question"], golds=qd["golds"], prediction=qd["prediction"],
                       correct=bool(qd["accuracy"]), global_frames=small, source_frames=src, steps=steps))
  return recs
