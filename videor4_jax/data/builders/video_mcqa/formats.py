"""Parsing of generic video multiple-choice QA annotations into one normalized record per question.

Accepted layouts (a JSON list, a JSON object holding the list under "data" / "questions" / "annotations", or
JSON Lines), field names matched case-sensitively in this order:
  * flat records: {"video_path" | "video" | "videoID" | "video_id" | "video_name", "question",
    "options" | "candidates" | "choices" (a list, or {"A": text, ...}) or top-level "A", "B", ... keys,
    "answer" | "correct_answer" (a letter, "(B)", "B. text" or the option's text; an integer there is an error,
    0- or 1-based being a guess) or a 0-based int "answer_idx",
    optional "start" / "end" (or "start_s"/"end_s", "start_time"/"end_time") seconds, optional "question_id" |
    "qid" | "id", optional "task_type" | "task"}. This covers MVBench (video, question, candidates, answer text,
    start/end) and flat Video-MME exports (videoID, question_id, question, options "A. ...", answer letter).
  * nested records (Video-MME's original JSON): {video fields..., "questions": [{question fields...}, ...]}:
    each question inherits its video's fields.
A record that does not fit gives `RecordError` with the reason; the builder skips and reports it.
"""
from __future__ import annotations

import json
import math
import re

LETTERS = "ABCDEFGHIJ"
_VIDEO_KEYS = ("video_path", "video", "videoID", "video_id", "video_name")
_OPTION_KEYS = ("options", "candidates", "choices")
_ANSWER_KEYS = ("answer", "correct_answer")
_ID_KEYS = ("question_id", "qid", "id")
_WINDOW_KEYS = (("start", "end"), ("start_s", "end_s"), ("start_time", "end_time"))
_PREFIX = re.compile(r"^\s*\(?([A-J])[.):]\s*")     # "A. text", "(A) text", "A) text", "A: text"
_LETTER = re.compile(r"^\s*\(?([A-J])\)?\s*\.?\s*$")  # "A", "(A)", "A."


class RecordError(ValueError):
  pass


def read_records(path: str) -> list:
  """Raw records of an annotation file (.json or .jsonl); ValueError naming the file when it is unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      if path.lower().endswith(".jsonl"):
        out = []
        for n, line in enumerate(f, 1):
          if line.strip():
            try:
              out.append(json.loads(line))
            except json.JSONDecodeError as e:
              raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        return out
      data = json.load(f)
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 (byte {e.start}: {e.reason})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if isinstance(data, dict):
    data = next((data[k] for k in ("data", "questions", "annotations") if isinstance(data.get(k), list)), None)
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a list of records (or {{'data': [...]}}), got {type(data).__name__}")
  return data


def flatten(records: list) -> list[tuple[str, object]]:
  """(position label, record) pairs, nested {..., "questions": [...]} records expanded (questions inherit)."""
  out = []
  for i, r in enumerate(records):
    if isinstance(r, dict) and isinstance(r.get("questions"), list):
      parent = {k: v for k, v in r.items() if k != "questions"}
      for j, q in enumerate(r["questions"]):
        out.append((f"[{i}].questions[{j}]", {**parent, **q} if isinstance(q, dict) else q))
    else:
      out.append((f"[{i}]", r))
  return out


def _first(r: dict, keys):
  return next(((k, r[k]) for k in keys if r.get(k) not in (None, "")), (None, None))


def parse_options(r: dict) -> list[str]:
  key, opts = _first(r, _OPTION_KEYS)
  if key is None:
    letters = [c for c in LETTERS if isinstance(r.get(c), str)]
    if not letters:
      raise RecordError(f"no options: expected one of {list(_OPTION_KEYS)} or keys 'A', 'B', ...")
    opts, key = {c: r[c] for c in letters}, "A/B/..."
  if isinstance(opts, dict):
    keys = [str(k).strip().upper() for k in opts]
    if keys != list(LETTERS[:len(keys)]):
      raise RecordError(f"field {key!r}: option keys {list(opts)} are not A, B, C, ... in order")
    opts = list(opts.values())
  if not isinstance(opts, list) or not all(isinstance(o, (str, int, float)) and not isinstance(o, bool)
                                           for o in opts):
    raise RecordError(f"field {key!r} must be a list of strings, got {opts!r}")
  opts = [str(o).strip() for o in opts]
  if not 2 <= len(opts) <= len(LETTERS):
    raise RecordError(f"field {key!r} has {len(opts)} options; 2 to {len(LETTERS)} are supported")
  # Strip "A. " prefixes only when every option carries its own letter, so option text is never cut.
  prefixed = [_PREFIX.match(o) for o in opts]
  if all(m and m.group(1) == LETTERS[i] for i, m in enumerate(prefixed)):
    opts = [o[m.end():].strip() for o, m in zip(opts, prefixed)]
  if any(not o for o in opts):
    raise RecordError(f"field {key!r}: an option is empty: {opts!r}")
  return opts


def parse_answer(r: dict, options: list[str]) -> str:
  """The gold option letter; an answer that reads both as a letter and as another option's text is an error."""
  key, a = _first(r, _ANSWER_KEYS)
  if key is None and isinstance(r.get("answer_idx"), int):
    key, a = "answer_idx", r["answer_idx"]
  if key is None:
    raise RecordError(f"no answer: expected one of {list(_ANSWER_KEYS) + ['answer_idx']}")
  n = len(options)
  if isinstance(a, int) and not isinstance(a, bool) and key != "answer_idx":
    raise RecordError(f"field {key!r}: integer {a} is ambiguous (0- or 1-based?); give the letter, the option's "
                      "text, or a 0-based 'answer_idx'")
  if isinstance(a, int) and not isinstance(a, bool):
    if not 0 <= a < n:
      raise RecordError(f"field {key!r}: index {a} is outside the {n} options")
    return LETTERS[a]
  if not isinstance(a, str):
    raise RecordError(f"field {key!r} must be a letter or an option's text, got {a!r}")
  s = a.strip()
  by_letter, m = None, _LETTER.match(s)
  if m:
    by_letter = m.group(1)
  elif (p := _PREFIX.match(s)) and LETTERS.index(p.group(1)) < n \
      and s[p.end():].strip() == options[LETTERS.index(p.group(1))]:
    by_letter = p.group(1)            # "B. <option B's text>"
  by_text = LETTERS[options.index(s)] if s in options else None
  if by_letter and by_text and by_letter != by_text:
    raise RecordError(f"field {key!r}: {a!r} is ambiguous (letter {by_letter} or the text of option {by_text})")
  letter = by_letter or by_text
  if letter is None:
    raise RecordError(f"field {key!r}: {a!r} is neither an option letter nor one of the options {options!r}")
  if LETTERS.index(letter) >= n:
    raise RecordError(f"field {key!r}: letter {letter} but only {n} options")
  return letter


def parse_window(r: dict) -> tuple[float, float]:
  """(start_s, end_s); (0, inf) when the record gives none."""
  for ks, ke in _WINDOW_KEYS:
    if ks in r or ke in r:
      try:
        start = 0.0 if r.get(ks) in (None, "") else float(r[ks])
        end = math.inf if r.get(ke) in (None, "") else float(r[ke])
      except (TypeError, ValueError):
        raise RecordError(f"fields {ks!r}/{ke!r} must be seconds, got {r.get(ks)!r} / {r.get(ke)!r}") from None
      if not (math.isfinite(start) and start >= 0 and end > start):
        raise RecordError(f"fields {ks!r}/{ke!r}: need 0 <= start < end, got {start} / {end}")
      return start, end
  return 0.0, math.inf


def record_id(r) -> str | None:
  """The record's question id, if it has one (for naming it in skip reports)."""
  _, qid = _first(r, _ID_KEYS) if isinstance(r, dict) else (None, None)
  return None if qid is None else str(qid)


def parse_record(r, label: str) -> dict:
  """One normalized record: qid, video (reference as given), question, options, answer (letter), start_s, end_s,
  task. RecordError when a field is missing or malformed."""
  if not isinstance(r, dict):
    raise RecordError(f"expected an object, got {type(r).__name__}")
  vkey, video = _first(r, _VIDEO_KEYS)
  if vkey is None or not isinstance(video, (str, int)):
    raise RecordError(f"no video: expected one of {list(_VIDEO_KEYS)} (a file name, path or id)")
  q = r.get("question")
  if not isinstance(q, str) or not q.strip():
    raise RecordError(f"field 'question' must be a non-empty string, got {q!r}")
  options = parse_options(r)
  start, end = parse_window(r)
  qid = record_id(r)
  _, task = _first(r, ("task_type", "task"))
  return dict(qid=qid if qid is not None else label, video=str(video), question=q.strip(), options=options,
              answer=parse_answer(r, options), start_s=start, end_s=end, task=str(task or ""))
