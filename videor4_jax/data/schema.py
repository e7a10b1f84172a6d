"""Trajectory records: the one schema for SFT trajectories and RL rows, with a validating JSON (de)serializer.

JSON form (one object per line in JSONL files):

  {"qid": str, "video_id": str, "question": str, "answers": [str, ...],
   "kind": "deliberate" | "compositional" | "rl",
   "steps": [{"think": str,
              "action": {"name": "crop", "frame": int, "bbox_2d": [x1, y1, x2, y2]}
                      | {"name": "clip", "frames": [int, ...]}
                      | null,
              "answer": str | null}, ...],
   "evidence": {...}}                       # free-form, e.g. {"frames": [..], "boxes": [[..]], "code": ..}

Conventions (the same as the action grammar, DESIGN.md section 4):
  * frame indices are 1-based indices into the sampled video frames (1..F);
  * boxes are normalized to [0, 1] as (x1, y1, x2, y2) with x1 < x2 and y1 < y2.
Rules checked by `validate`:
  * "rl" rows carry question and answers only: `steps` must be empty.
  * SFT rows ("deliberate", "compositional"): every step but the last has an action and no answer; the last step
    has an answer and no action; at least one action. "deliberate" uses one kind of operation (crop only or clip
    only, possibly repeated); "compositional" mixes both.
Every error names the record (qid, or the position given by the caller) and the field path.

`from_messages` also reads Pixel-Reasoner-style message lists (assistant turns whose text holds
`<think>..</think>`, `<tool_call>{json}</tool_call>` or `<answer>..</answer>`), mapping Pixel-Reasoner's tool
names (select_frames, crop_image_normalized) onto clip and crop. `read_jsonl` accepts both forms per line.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Iterator, Mapping, Sequence

from videor4_jax.processing.grammar import TOOL_ALIASES   # the one tool-name table

KINDS = ("deliberate", "compositional", "rl")
ACTION_NAMES = ("crop", "clip")


class SchemaError(ValueError):
  """A record violates the trajectory schema; the message names the record and the field."""


@dataclasses.dataclass(frozen=True)
class Action:
  """One tool call. crop: `frame` + `bbox_2d`; clip: `frames`. Frames 1-based, boxes normalized."""
  name: str
  frame: int | None = None
  bbox_2d: tuple[float, float, float, float] | None = None
  frames: tuple[int, ...] | None = None

  def to_json(self) -> dict[str, Any]:
    if self.name == "crop":
      return {"name": "crop", "frame": self.frame, "bbox_2d": list(self.bbox_2d)}
    return {"name": "clip", "frames": list(self.frames)}


@dataclasses.dataclass(frozen=True)
class Step:
  think: str
  action: Action | None = None
  answer: str | None = None

  def to_json(self) -> dict[str, Any]:
    return {"think": self.think, "action": None if self.action is None else self.action.to_json(),
            "answer": self.answer}


@dataclasses.dataclass(frozen=True)
class Trajectory:
  qid: str
  video_id: str
  question: str
  answers: tuple[str, ...]
  kind: str
  steps: tuple[Step, ...] = ()
  evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {"qid": self.qid, "video_id": self.video_id, "question": self.question, "answers": list(self.answers),
            "kind": self.kind, "steps": [s.to_json() for s in self.steps], "evidence": dict(self.evidence)}

  def dumps(self) -> str:
    return json.dumps(self.to_json(), sort_keys=True)

  @property
  def actions(self) -> tuple[Action, ...]:
    return tuple(s.action for s in self.steps if s.action is not None)


def _err(where: str, field: str, msg: str) -> SchemaError:
  return SchemaError(f"{where}: field {field!r}: {msg}")


def _need(d: Mapping[str, Any], key: str, typ, where: str, prefix: str = ""):
  if not isinstance(d, Mapping):
    raise _err(where, prefix.rstrip(".") or "<record>", f"expected an object, got {type(d).__name__}")
  if key not in d:
    raise _err(where, prefix + key, "missing")
  v = d[key]
  if typ is not None and not isinstance(v, typ):
    raise _err(where, prefix + key, f"expected {getattr(typ, '__name__', typ)}, got {type(v).__name__}: {v!r}")
  return v


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _action_from_json(a: Mapping[str, Any], where: str, f: str) -> Action:
  name = _need(a, "name", str, where, f + ".")
  if name == "crop":
    frame = _need(a, "frame", None, where, f + ".")
    if not _is_int(frame):
      raise _err(where, f + ".frame", f"expected int, got {frame!r}")
    box = _need(a, "bbox_2d", (list, tuple), where, f + ".")
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
      raise _err(where, f + ".bbox_2d", f"expected 4 numbers, got {box!r}")
    return Action("crop", frame=frame, bbox_2d=tuple(float(v) for v in box))
  if name == "clip":
    frames = _need(a, "frames", (list, tuple), where, f + ".")
    if not all(_is_int(v) for v in frames):
      raise _err(where, f + ".frames", f"expected a list of ints, got {frames!r}")
    return Action("clip", frames=tuple(frames))
  raise _err(where, f + ".name", f"unknown action {name!r}; expected one of {ACTION_NAMES}")


def validate(t: Trajectory, *, num_frames: int | None = None, where: str | None = None) -> Trajectory:
  """Checks the rules in the module docstring; `num_frames` (F) also bounds frame indices. Returns `t`."""
  where = where or f"record qid={t.qid!r}"
  for key in ("qid", "video_id", "question"):
    if not isinstance(getattr(t, key), str) or not getattr(t, key):
      raise _err(where, key, f"expected a non-empty string, got {getattr(t, key)!r}")
  if not t.answers or not all(isinstance(a, str) and a.strip() for a in t.answers):
    raise _err(where, "answers", f"expected a non-empty list of non-empty strings, got {t.answers!r}")
  if t.kind not in KINDS:
    raise _err(where, "kind", f"{t.kind!r} is not one of {KINDS}")
  if t.kind == "rl":
    if t.steps:
      raise _err(where, "steps", "rl rows carry no steps (question and answers only)")
    return t
  if not t.steps:
    raise _err(where, "steps", f"a {t.kind} trajectory needs at least one action step and an answer step")
  for i, s in enumerate(t.steps):
    f = f"steps[{i}]"
    if not isinstance(s.think, str):
      raise _err(where, f + ".think", f"expected a string, got {s.think!r}")
    last = i == len(t.steps) - 1
    if last and (s.action is not None or s.answer is None):
      raise _err(where, f, "the last step must carry an answer and no action")
    if not last and (s.action is None or s.answer is not None):
      raise _err(where, f, "every step before the last must carry an action and no answer")
    a = s.action
    if a is None:
      continue
    if a.name == "crop":
      if num_frames is not None and not 1 <= a.frame <= num_frames:
        raise _err(where, f + ".action.frame", f"{a.frame} is outside 1..{num_frames}")
      if a.frame < 1:
        raise _err(where, f + ".action.frame", f"{a.frame} < 1 (frames are 1-based)")
      x1, y1, x2, y2 = a.bbox_2d
      if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in a.bbox_2d) or not (x1 < x2 and y1 < y2):
        raise _err(where, f + ".action.bbox_2d", f"{list(a.bbox_2d)} is not a normalized box with x1<x2, y1<y2")
    elif a.name == "clip":
      if not a.frames or len(set(a.frames)) != len(a.frames) or min(a.frames) < 1:
        raise _err(where, f + ".action.frames", f"{list(a.frames)} must be distinct 1-based indices, non-empty")
      if num_frames is not None and max(a.frames) > num_frames:
        raise _err(where, f + ".action.frames", f"{list(a.frames)} has an index above {num_frames}")
    else:
      raise _err(where, f + ".action.name", f"unknown action {a.name!r}")
  names = {a.name for a in t.actions}
  if t.kind == "deliberate" and len(names) != 1:
    raise _err(where, "kind", f"'deliberate' uses one kind of operation, got {sorted(names)}")
  if t.kind == "compositional" and len(names) != 2:
    raise _err(where, "kind", f"'compositional' mixes crop and clip, got {sorted(names)}")
  return t


def from_json(d: Mapping[str, Any] | str, *, where: str | None = None, num_frames: int | None = None) -> Trajectory:
  """Parses and validates one record (a dict or a JSON string). `where` names it in errors (e.g. 'a.jsonl:12')."""
  if isinstance(d, str):
    try:
      d = json.loads(d)
    except json.JSONDecodeError as e:
      raise SchemaError(f"{where or 'record'}: not valid JSON: {e}") from None
  if not isinstance(d, Mapping):
    raise SchemaError(f"{where or 'record'}: expected a JSON object, got {type(d).__name__}")
  where = where or f"record qid={d.get('qid')!r}"
  if "qid" in d and _is_int(d["qid"]):  # M4-ViteVQA question ids are ints; the schema keeps strings
    d = {**d, "qid": str(d["qid"])}
  steps = []
  for i, s in enumerate(_need(d, "steps", (list, tuple), where) if d.get("kind") != "rl" or "steps" in d else []):
    f = f"steps[{i}]"
    if not isinstance(s, Mapping):
      raise _err(where, f, f"expected an object, got {s!r}")
    a = s.get("action")
    steps.append(Step(think=s.get("think", ""), action=None if a is None else _action_from_json(a, where, f + ".action"),
                      answer=s.get("answer")))
  answers = _need(d, "answers", (list, tuple), where)
  evidence = d.get("evidence") or {}
  if not isinstance(evidence, Mapping):
    raise _err(where, "evidence", f"expected an object, got {evidence!r}")
  t = Trajectory(qid=_need(d, "qid", str, where), video_id=_need(d, "video_id", str, where),
                 question=_need(d, "question", str, where), answers=tuple(answers),
                 kind=_need(d, "kind", str, where), steps=tuple(steps), evidence=dict(evidence))
  return validate(t, num_frames=num_frames, where=where)


def read_jsonl(path: str) -> Iterator[tuple[int, Trajectory | SchemaError]]:
  """Yields (line_number, record or the SchemaError naming `path:line`); the caller decides to skip or raise."""
  with open(path, "rb") as f:            # bytes: one non-UTF-8 line must not end the file
    for n, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
          raise SchemaError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, (from_messages(obj, where=f"{path}:{n}") if "messages" in obj else from_json(obj, where=f"{path}:{n}"))
      except UnicodeDecodeError as e:
        yield n, SchemaError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})")
      except (SchemaError, json.JSONDecodeError) as e:
        yield n, e if isinstance(e, SchemaError) else SchemaError(f"{path}:{n}: not valid JSON: {e}")


def write_jsonl(path: str, records: Sequence[Trajectory]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(r.dumps() + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Pixel-Reasoner-style message lists.

# Tool names of foreign datasets -> this schema: the grammar's one alias table. Pixel-Reasoner's video op is
# select_frames (target_frames, 1-based) and its zoom is crop_image_normalized (bbox_2d normalized, target_image
# 1-based).
_FOREIGN_NAMES = TOOL_ALIASES
_TAG_RE = {t: re.compile(rf"<{t}>(.*?)</{t}>", re.S) for t in ("think", "answer", "tool_call")}
_BOXED_RE = re.compile(r"\\boxed\{(.*?)\}", re.S)


def _content_text(content) -> str:
  if isinstance(content, str):
    return content
  if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "video", ...}, ...]
    return "".join(c.get("text", "") for c in content if isinstance(c, Mapping) and c.get("type") == "text")
  return ""


def _content_video(content) -> str | None:
  if isinstance(content, list):
    for c in content:
      if isinstance(c, Mapping) and c.get("type") in ("video", "image"):
        src = c.get(c["type"]) or c.get("path") or c.get("url")
        if isinstance(src, list):
          src = src[0] if src else None
        if isinstance(src, str):
          return os.path.splitext(os.path.basename(src))[0]
  return None


def _tool_call_action(payload: str, where: str, f: str) -> Action:
  """A `<tool_call>` payload -> Action. Native calls go through the project grammar's host-side parser; the
  foreign names of Pixel-Reasoner are mapped here (the grammar only speaks the project's own names)."""
  try:
    call = json.loads(payload)
  except json.JSONDecodeError as e:
    raise _err(where, f, f"tool call is not valid JSON: {e}: {payload[:80]!r}") from None
  if not isinstance(call, Mapping) or not isinstance(call.get("arguments"), Mapping):
    raise _err(where, f, f"tool call needs 'name' and an 'arguments' object: {payload[:80]!r}")
  name, args = _FOREIGN_NAMES.get(call.get("name")), call["arguments"]
  if name is None:
    raise _err(where, f + ".name", f"unknown tool {call.get('name')!r}; known: {sorted(_FOREIGN_NAMES)}")
  if name == "crop":
    a = {"name": "crop", "frame": args.get("frame", args.get("target_image")), "bbox_2d": args.get("bbox_2d")}
  else:
    a = {"name": "clip", "frames": args.get("frames", args.get("target_frames"))}
  return _action_from_json(a, where, f)


def from_messages(d: Mapping[str, Any], *, where: str | None = None, num_frames: int | None = None) -> Trajectory:
  """A message-list record -> Trajectory.

  Input: `{"qid"|"id", "video_id"?, "answers"?, "kind"?, "evidence"?, "messages": [{"role", "content"}, ...]}`
  where content is a string or a list of `{"type": "text"|"video"|"image", ...}` parts. The first user text is
  the question (`<video>`/`<image>` placeholders removed). Each assistant turn is one step: `think` is the text
  inside `<think>` (or the text before the tool call), the action the last `<tool_call>{json}</tool_call>`, the
  answer `<answer>..</answer>` or `\\boxed{..}`. Tool and user turns after the first are observations, which the
  pipeline re-executes, so they are not stored. `kind` is inferred from the operations when absent.
  """
  where = where or f"record qid={d.get('qid', d.get('id'))!r}"
  msgs = _need(d, "messages", (list, tuple), where)
  question, video_id, steps = None, d.get("video_id"), []
  for i, m in enumerate(msgs):
    f = f"messages[{i}]"
    if not isinstance(m, Mapping) or "role" not in m:
      raise _err(where, f, "expected an object with 'role' and 'content'")
    text = _content_text(m.get("content"))
    if m["role"] == "user" and question is None:
      question = re.sub(r"<(video|image)>", "", text).strip()
      video_id = video_id or _content_video(m.get("content"))
    elif m["role"] == "assistant":
      calls = _TAG_RE["tool_call"].findall(text)
      answer = _TAG_RE["answer"].findall(text) or _BOXED_RE.findall(text)
      think = _TAG_RE["think"].findall(text)
      think = think[0].strip() if think else _TAG_RE["tool_call"].split(text)[0].strip()
      action = _tool_call_action(calls[-1], where, f + ".tool_call") if calls else None
      steps.append(Step(think=think, action=action,
                        answer=None if action is not None or not answer else answer[-1].strip()))
  if question is None:
    raise _err(where, "messages", "no user turn holds the question")
  if not video_id:
    raise _err(where, "video_id", "missing (neither a field nor a video part in the first user turn)")
  answers = d.get("answers") or ([steps[-1].answer] if steps and steps[-1].answer else None)
  if not answers:
    raise _err(where, "answers", "missing (neither a field nor an answer in the last assistant turn)")
  names = {s.action.name for s in steps if s.action is not None}
  kind = d.get("kind") or {0: "rl", 1: "deliberate", 2: "compositional"}[len(names)]
  qid = d.get("qid", d.get("id"))
  t = Trajectory(qid=str(qid) if qid is not None else "", video_id=str(video_id), question=question,
                 answers=tuple(str(a) for a in answers), kind=kind, steps=() if kind == "rl" else tuple(steps),
                 evidence=dict(d.get("evidence") or {}))
  return validate(t, num_frames=num_frames, where=where)
