"""The action grammar, defined once (DESIGN section 4):

    <tool_call>{"name": "crop", "arguments": {"frame": 3, "bbox_2d": [0.12, 0.60, 0.55, 0.80]}}</tool_call>
    <tool_call>{"name": "clip", "arguments": {"frames": [5, 6, 7, 8]}}</tool_call>

frames are 1-based integers (1-2 digits, no leading zero), box coordinates are normalized `0.dd`. From this one definition come
(a) `encode_action`: the token ids of an action (SFT data), as the concatenation of per-piece encodings;
(b) `Automaton`: a token-level DFA compiled for any tokenizer, as small arrays usable inside `jit` (no `[V]`-sized
    tables: each state has at most E outgoing edges), for constrained decoding once `<tool_call>` is emitted;
(c) `parse_tokens` (in-graph, never raises, never NaN) and `parse_action_text` (host, for SFT data and
    Pixel-Reasoner-style messages), both ending in the same `validate`.
Model output is only ever parsed by this grammar (and `json.loads` on the host), never evaluated.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

OPEN = '{"name": "'
CROP_HEAD = 'crop", "arguments": {"frame": '
BBOX_OPEN = ', "bbox_2d": ['
CLIP_HEAD = 'clip", "arguments": {"frames": ['
SEP = ", "
CLOSE = "]}}"
LITERAL_PIECES = (OPEN, CROP_HEAD, BBOX_OPEN, CLIP_HEAD, SEP, CLOSE)
DIGITS = "0123456789"

class ToolKind(enum.IntEnum):
  """What a step did: nothing (answered / no call), a crop, a clip. Ints so they live in jnp arrays."""
  NONE = 0
  CROP = 1
  CLIP = 2


KIND_NONE, KIND_CROP, KIND_CLIP = ToolKind.NONE, ToolKind.CROP, ToolKind.CLIP
TOOL_NAMES = {ToolKind.CROP: "crop", ToolKind.CLIP: "clip"}
# Every tool name this project reads -> its own name: Pixel-Reasoner's crop_image(_normalized) / select_frames and
# zoom_in. The one table for host parsing of model text and for foreign datasets (data/schema.py).
TOOL_ALIASES = {"crop": "crop", "crop_image": "crop", "crop_image_normalized": "crop", "zoom_in": "crop",
                "clip": "clip", "select_frames": "clip"}
# Named automaton states (the others are numbered as `build_automaton` creates them): outside a tool call (free
# text, the answer; `<tool_call>` enters the grammar), right after `<tool_call>`, and off the grammar (a token the
# grammar does not allow was forced in: the state stays there).
OUTSIDE_CALL, CALL_START, DEAD = 0, 1, -1
REG_FRAME, REG_BOX = 0, 1    # registers: frame, box x1 y1 x2 y2 (hundredths), then clip frames


class ActionError(enum.IntEnum):
  OK = 0
  MALFORMED = 1            # the call did not complete (token budget ran out) or is not valid JSON of the grammar
  UNKNOWN_TOOL = 2
  FRAME_OUT_OF_RANGE = 3
  BOX_INVALID = 4          # NaN, inverted, empty or outside [0, 1]
  BOX_TOO_SMALL = 5
  TOO_MANY_FRAMES = 6
  NO_FRAMES = 7


ERROR_MESSAGES = {e: e.name.lower().replace("_", " ") for e in ActionError}


def _fmt_coord(x: float) -> str:
  """Box coordinates are written `0.dd`: normalized, clamped to [0, 0.99] (the frame's last 1% is not addressable;
  crops are padded by a margin anyway), so that constrained decoding cannot produce an out-of-range value."""
  return f"{min(max(round(float(x), 2), 0.0), 0.99):.2f}"


def action_text(action: dict) -> str:
  """Canonical text of an action dict `{"name": "crop", "frame", "bbox_2d"}` / `{"name": "clip", "frames"}`."""
  if action["name"] == "crop":
    box = ", ".join(_fmt_coord(v) for v in action["bbox_2d"])
    return f'<tool_call>{OPEN}{CROP_HEAD}{int(action["frame"])}{BBOX_OPEN}{box}{CLOSE}</tool_call>'
  if action["name"] == "clip":
    frames = SEP.join(str(int(f)) for f in action["frames"])
    return f"<tool_call>{OPEN}{CLIP_HEAD}{frames}{CLOSE}</tool_call>"
  raise ValueError(f"unknown tool {action['name']!r}")


def _automaton_path(tokenizer, action: dict) -> list[int]:
  """Token ids along the constrained decoder's path: literal pieces and single digits / '.' one by one."""
  enc = lambda s: tokenizer.encode(s)
  ids = [tokenizer.tool_call_start_id] + enc(OPEN)
  num = lambda s: [i for ch in s for i in enc(ch)]
  if action["name"] == "crop":
    ids += enc(CROP_HEAD) + num(str(int(action["frame"]))) + enc(BBOX_OPEN)
    for j, v in enumerate(action["bbox_2d"]):
      ids += (enc(SEP) if j else []) + num(_fmt_coord(v))
  elif action["name"] == "clip":
    ids += enc(CLIP_HEAD)
    for j, f in enumerate(action["frames"]):
      ids += (enc(SEP) if j else []) + num(str(int(f)))
  else:
    raise ValueError(f"unknown tool {action['name']!r}")
  return ids + enc(CLOSE) + [tokenizer.tool_call_end_id]


def encode_action(tokenizer, action: dict) -> list[int]:
  """Token ids of an action: its canonical text encoded whole, as a tokenizer reads it. These must equal the
  constrained decoder's path (the automaton forces pieces token by token), else SFT would teach ids the rollout
  can never emit: a tokenizer whose merges cross the grammar's piece boundaries is an error here."""
  ids = tokenizer.encode(action_text(action))
  path = _automaton_path(tokenizer, action)
  if ids != path:
    raise ValueError(f"this tokenizer encodes the tool call {action_text(action)!r} as {ids}, but the grammar's "
                     f"constrained path is {path}: its merges cross the grammar's piece boundaries")
  return ids


@dataclasses.dataclass(frozen=True)
class Automaton:
  """Token DFA arrays (numpy; pass through `jnp.asarray` inside jit). S states, E max out-degree."""
  edge_tok: np.ndarray     # [S, E] int32, -1 = no edge
  edge_next: np.ndarray    # [S, E] int32
  edge_digit: np.ndarray   # [S, E] int32 digit value written by this edge, -1 for literal tokens
  slot: np.ndarray         # [S] int32 register a digit edge out of this state writes (-1 none)
  kind: np.ndarray         # [S] int32 tool kind of the branch the state lies on
  accept: int
  tool_call_start_id: int
  max_frames: int

  @property
  def num_registers(self) -> int:
    return REG_BOX + 4 + self.max_frames


class _DfaBuilder:
  """The automaton's states and edges while it is built: literal pieces become token paths (shared prefixes
  merge, as in a trie), numbers become digit edges that write a register."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.edges: list[dict[int, tuple[int, int]]] = [{}, {}]    # state -> {token: (next, digit)}
    self.slot, self.kind = [-1, -1], [KIND_NONE, KIND_NONE]    # OUTSIDE_CALL and CALL_START
    self.digit_ids = [self._single_token(d) for d in DIGITS]
    self.dot_id = self._single_token(".")

  def _single_token(self, text):
    ids = self.tokenizer.encode(text)
    if len(ids) != 1:
      raise ValueError(f"{text!r} is not a single token for this tokenizer")
    return ids[0]

  def new_state(self, kind):
    self.edges.append({})
    self.slot.append(-1)
    self.kind.append(kind)
    return len(self.edges) - 1

  def add_edge(self, state, tok, nxt, digit=-1):
    if tok in self.edges[state] and self.edges[state][tok][0] != nxt:
      raise ValueError(f"grammar is not deterministic for this tokenizer at token {tok}")
    self.edges[state][tok] = (nxt, digit)

  def literal(self, exits, text, kind):
    """Attaches the token path of `text` after every exit state; returns the end state."""
    ids = self.tokenizer.encode(text)
    if not ids:
      raise ValueError(f"tokenizer encodes {text!r} to nothing")
    first = exits[0]
    node = self.edges[first][ids[0]][0] if ids[0] in self.edges[first] else self.new_state(kind)
    for e in exits:
      self.add_edge(e, ids[0], node)
    for t in ids[1:]:
      nxt = self.edges[node][t][0] if t in self.edges[node] else self.new_state(kind)
      self.add_edge(node, t, nxt)
      node = nxt
    return node

  def integer(self, entry, reg, kind):
    """1-2 digits, no leading zero (valid JSON), written to register `reg`; returns the exit states."""
    self.slot[entry] = reg
    one, two = self.new_state(kind), self.new_state(kind)
    self.slot[one] = reg
    for v, t in enumerate(self.digit_ids):
      if v:
        self.add_edge(entry, t, one, v)
      self.add_edge(one, t, two, v)
    return [one, two]

  def coord(self, entry, reg, kind):
    """0.dd written to register `reg` in hundredths (the leading "0." is forced); returns the exit states."""
    a, b, c, d = (self.new_state(kind) for _ in range(4))
    for s in (b, c):
      self.slot[s] = reg
    self.add_edge(entry, self.digit_ids[0], a)
    self.add_edge(a, self.dot_id, b)
    for v, t in enumerate(self.digit_ids):
      self.add_edge(b, t, c, v)
      self.add_edge(c, t, d, v)
    return [d]

  def arrays(self):
    """`(edge_tok, edge_next, edge_digit, slot, kind)` as the Automaton holds them (edges sorted by token)."""
    n, e_max = len(self.edges), max(len(e) for e in self.edges)
    edge_tok = np.full((n, e_max), -1, np.int32)
    edge_next = np.zeros((n, e_max), np.int32)
    edge_digit = np.full((n, e_max), -1, np.int32)
    for s, es in enumerate(self.edges):
      for j, (t, (nxt, dg)) in enumerate(sorted(es.items())):
        edge_tok[s, j], edge_next[s, j], edge_digit[s, j] = t, nxt, dg
    return edge_tok, edge_next, edge_digit, np.array(self.slot, np.int32), np.array(self.kind, np.int32)


def _crop_branch(dfa: _DfaBuilder, after_open: int) -> int:
  """`crop", "arguments": {"frame": F, "bbox_2d": [x1, y1, x2, y2]}}`: returns the state before `</tool_call>`."""
  s = dfa.literal([after_open], CROP_HEAD, KIND_CROP)
  exits = dfa.integer(s, REG_FRAME, KIND_CROP)
  s = dfa.literal(exits, BBOX_OPEN, KIND_CROP)
  for j in range(4):
    exits = dfa.coord(s, REG_BOX + j, KIND_CROP)
    s = dfa.literal(exits, SEP, KIND_CROP) if j < 3 else None
  return dfa.literal(exits, CLOSE, KIND_CROP)


def _clip_branch(dfa: _DfaBuilder, after_open: int, max_frames: int) -> int:
  """`clip", "arguments": {"frames": [f1, ..]}}` with 1..max_frames frames: returns the state before `</tool_call>`."""
  s = dfa.literal([after_open], CLIP_HEAD, KIND_CLIP)
  close_exits = []
  for j in range(max_frames):
    exits = dfa.integer(s, REG_BOX + 4 + j, KIND_CLIP)
    close_exits += exits
    if j < max_frames - 1:
      s = dfa.literal(exits, SEP, KIND_CLIP)
  return dfa.literal(close_exits, CLOSE, KIND_CLIP)


def build_automaton(tokenizer, max_frames: int) -> Automaton:
  """Compiles the grammar for `tokenizer` (tiny or a real Qwen tokenizer.json: pieces become trie paths)."""
  dfa = _DfaBuilder(tokenizer)
  after_open = dfa.literal([CALL_START], OPEN, KIND_NONE)
  crop_close = _crop_branch(dfa, after_open)
  clip_close = _clip_branch(dfa, after_open, max_frames)
  accept = dfa.new_state(KIND_NONE)
  dfa.add_edge(crop_close, tokenizer.tool_call_end_id, accept)
  dfa.add_edge(clip_close, tokenizer.tool_call_end_id, accept)
  return Automaton(*dfa.arrays(), accept, tokenizer.tool_call_start_id, max_frames)


# ---------------------------------------------------------------------------------------------- in-graph
def allowed_tokens(auto: Automaton, state_b, vocab_size: int):
  """`[B, V]` bool: tokens allowed in each row's state (all tokens OUTSIDE_CALL; nothing after ACCEPT)."""
  toks = jnp.asarray(auto.edge_tok)[state_b]                                      # [B, E]
  b = state_b.shape[0]
  rows = jnp.repeat(jnp.arange(b)[:, None], toks.shape[1], axis=1)
  mask = jnp.zeros((b, vocab_size), bool).at[rows, jnp.maximum(toks, 0)].max(toks >= 0)
  return jnp.where((state_b == OUTSIDE_CALL)[:, None], True, mask)


def _edge(auto: Automaton, state_b, tok_b):
  toks = jnp.asarray(auto.edge_tok)[state_b]                                      # [B, E]
  hit = toks == tok_b[:, None]
  j = jnp.argmax(hit, axis=1)
  found = hit.any(axis=1)
  nxt = jnp.take_along_axis(jnp.asarray(auto.edge_next)[state_b], j[:, None], 1)[:, 0]
  digit = jnp.take_along_axis(jnp.asarray(auto.edge_digit)[state_b], j[:, None], 1)[:, 0]
  return found, nxt, digit



def step(auto: Automaton, state_b, tok_b):
  """Next state per row. OUTSIDE_CALL stays there except on <tool_call>; a token off the grammar -> DEAD."""
  found, nxt, _ = _edge(auto, jnp.maximum(state_b, 0), tok_b)
  in_call = (state_b > OUTSIDE_CALL) & (state_b != auto.accept)
  enters_call = tok_b == auto.tool_call_start_id
  out = jnp.where(state_b == OUTSIDE_CALL, jnp.where(enters_call, CALL_START, OUTSIDE_CALL),
                  jnp.where(in_call, jnp.where(found, nxt, DEAD), state_b))
  return jnp.where(state_b == DEAD, DEAD, out)


def accepts(auto: Automaton, state_b):
  return state_b == auto.accept


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ParsedAction:
  kind: jax.Array        # [...] int32 KIND_*
  frame: jax.Array       # [...] int32
  box: jax.Array         # [..., 4] float32
  frames: jax.Array      # [..., K] int32
  num_frames: jax.Array  # [...] int32
  error: jax.Array       # [...] int32 ActionError


def parse_tokens(auto: Automaton, tokens_t, valid_t, *, num_frames: int) -> ParsedAction:
  """Runs the DFA over one row's step tokens (think text, then the call). Never raises; never NaN."""
  slot = jnp.asarray(auto.slot)
  kind_of = jnp.asarray(auto.kind)

  def body(carry, x):
    state, regs, written, kind = carry
    tok, ok = x
    live = ok & (state != auto.accept) & (state != DEAD)
    found, nxt, digit = _edge(auto, jnp.maximum(state, 0)[None], tok[None])
    reg = slot[jnp.maximum(state, 0)]
    write = live & (state > OUTSIDE_CALL) & found[0] & (digit[0] >= 0) & (reg >= 0)
    r = jnp.maximum(reg, 0)
    regs = regs.at[r].set(jnp.where(write, jnp.minimum(regs[r] * 10 + digit[0], 99999), regs[r]))
    written = written.at[r].set(written[r] | write)
    new_state = jnp.where(live, step(auto, state[None], tok[None])[0], state)
    kind = jnp.maximum(kind, kind_of[jnp.maximum(new_state, 0)] * (new_state > OUTSIDE_CALL))
    return (new_state, regs, written, kind), None

  n_reg = auto.num_registers
  init = (jnp.int32(OUTSIDE_CALL), jnp.zeros((n_reg,), jnp.int32), jnp.zeros((n_reg,), bool),
          jnp.int32(KIND_NONE))
  (state, regs, written, kind), _ = jax.lax.scan(body, init, (jnp.asarray(tokens_t), jnp.asarray(valid_t)))
  k = auto.max_frames
  frames = regs[REG_BOX + 4:]
  n = written[REG_BOX + 4:].sum().astype(jnp.int32)
  box = regs[REG_BOX:REG_BOX + 4].astype(jnp.float32) / 100.0
  return validate(jnp.where(state == auto.accept, kind, KIND_NONE), regs[REG_FRAME], box, frames, n,
                  complete=state == auto.accept, num_frames=num_frames, max_frames=k)


def validate(kind, frame, box, frames, n_frames, *, complete, num_frames: int, max_frames: int) -> ParsedAction:
  """Semantic checks shared by the in-graph and host parses (frame range, box sanity, frame count)."""
  box = jnp.asarray(box, jnp.float32)
  frames = jnp.asarray(frames, jnp.int32)
  complete = jnp.asarray(complete, bool)
  kind, frame, n_frames = (jnp.asarray(x, jnp.int32) for x in (kind, frame, n_frames))
  k_idx = jnp.arange(frames.shape[-1])
  in_list = k_idx < n_frames
  box_ok = (jnp.all(jnp.isfinite(box)) & (box[0] < box[2]) & (box[1] < box[3]) & jnp.all(box >= 0)
            & jnp.all(box <= 1))
  frame_ok = (frame >= 1) & (frame <= num_frames)
  frames_ok = jnp.all(jnp.where(in_list, (frames >= 1) & (frames <= num_frames), True))
  err = jnp.where(~complete, ActionError.MALFORMED, ActionError.OK)
  crop_err = jnp.where(~frame_ok, ActionError.FRAME_OUT_OF_RANGE, jnp.where(~box_ok, ActionError.BOX_INVALID, 0))
  clip_err = jnp.where(n_frames == 0, ActionError.NO_FRAMES,
                       jnp.where(n_frames > max_frames, ActionError.TOO_MANY_FRAMES,
                                 jnp.where(~frames_ok, ActionError.FRAME_OUT_OF_RANGE, 0)))
  err = jnp.where(err != 0, err, jnp.where(kind == KIND_CROP, crop_err,
                                           jnp.where(kind == KIND_CLIP, clip_err, ActionError.UNKNOWN_TOOL)))
  return ParsedAction(kind=jnp.asarray(kind, jnp.int32), frame=jnp.asarray(frame, jnp.int32),
                      box=jnp.nan_to_num(box, nan=0.0, posinf=0.0, neginf=0.0), frames=jnp.where(in_list, frames, 0),
                      num_frames=jnp.asarray(jnp.minimum(n_frames, frames.shape[-1]), jnp.int32),
                      error=err.astype(jnp.int32))


# ---------------------------------------------------------------------------------------------- host
_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_action_text(text: str, *, num_frames: int, max_frames: int) -> tuple[dict | None, ActionError]:
  """Parses the LAST `<tool_call>{json}</tool_call>` of `text` (Qwen / Pixel-Reasoner style; json.loads only).

  Returns `(action dict or None, error)`; never raises on model or data output.
  """
  calls = _CALL_RE.findall(text)
  if not calls:
    return None, ActionError.MALFORMED
  try:
    obj = json.loads(calls[-1])
    name, args = obj["name"], obj.get("arguments", {})
    if not isinstance(args, dict) or not isinstance(name, str):
      raise TypeError("arguments must be an object")
  except (ValueError, KeyError, TypeError):
    return None, ActionError.MALFORMED
  tool = TOOL_ALIASES.get(name)
  if tool is None:
    return {"name": name}, ActionError.UNKNOWN_TOOL
  try:
    if tool == "crop":
      frame = int(args.get("frame", args.get("target_image", 0)))
      box = [float(v) for v in args["bbox_2d"]]
      if len(box) != 4:
        raise ValueError("bbox_2d needs 4 numbers")
      action = {"name": "crop", "frame": frame, "bbox_2d": box}
      res = validate(KIND_CROP, frame, np.array(box, np.float32), np.zeros((max_frames,), np.int32), 0,
                     complete=True, num_frames=num_frames, max_frames=max_frames)
    else:
      frames = [int(v) for v in args.get("frames", args.get("target_frames", []))]
      action = {"name": "clip", "frames": frames}
      padded = np.zeros((max(max_frames, len(frames)),), np.int32)
      padded[:len(frames)] = frames
      res = validate(KIND_CLIP, 0, np.zeros(4, np.float32), padded, len(frames), complete=True,
                     num_frames=num_frames, max_frames=max_frames)
  except (ValueError, KeyError, TypeError, OverflowError):
    return None, ActionError.MALFORMED
  return action, ActionError(int(res.error))
