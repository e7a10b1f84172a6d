"""Chat template (Qwen2.5-VL format) for prompts, assistant steps and observation turns.

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|>*N<|vision_end|>
    {question}<|im_end|>\n<|im_start|>assistant\n
    {think}<tool_call>...</tool_call>                    <- assistant step ending in a call (loss on it)
    <|im_end|>\n<|im_start|>user\n{header}<|vision_start|><|image_pad|>*n<|vision_end|><|im_end|>\n
    <|im_start|>assistant\n                               <- observation chunk appended by the environment (no loss)
    ...
    {think}<answer>{answer}</answer><|im_end|>            <- final step (loss on it, <|im_end|> included)

Every function returns `(ids, mm_types[, loss_mask])` as lists; mm_types is 0 text, 1 image, 2 video.
"""
from __future__ import annotations

from videor4_jax.processing import grammar
from videor4_jax.processing.grammar import ActionError

SYSTEM_PROMPT = (
    "You answer questions about a video. Think inside <think> </think>. To look closer, call a tool: "
    '<tool_call>{"name": "crop", "arguments": {"frame": F, "bbox_2d": [x1, y1, x2, y2]}}</tool_call> zooms into '
    "a region of frame F (1-based, box normalized to [0, 1]); "
    '<tool_call>{"name": "clip", "arguments": {"frames": [F1, F2]}}</tool_call> re-reads frames at a higher '
    "resolution. Put the final answer inside <answer> </answer>.")
TINY_SYSTEM_PROMPT = "Read the video. Tools: crop, clip."

CROP_HEADER = "Crop:"
CLIP_HEADER = "Frames:"
IMAGE, VIDEO = 1, 2


def _text(tok, s):
  ids = tok.encode(s)
  return ids, [0] * len(ids)


def _vision(tok, n_tokens: int, modality: int):
  pad = tok.image_pad_id if modality == IMAGE else tok.video_pad_id
  return ([tok.vision_start_id] + [pad] * n_tokens + [tok.vision_end_id], [0] + [modality] * n_tokens + [0])


def _cat(*parts):
  ids, types = [], []
  for i, t in parts:
    ids += i
    types += t
  return ids, types


def prompt_ids(tok, question: str, video_tokens: int, system: str = SYSTEM_PROMPT):
  """The prompt up to and including `<|im_start|>assistant\\n`."""
  return _cat(_text(tok, "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n"),
              _vision(tok, video_tokens, VIDEO), _text(tok, question + "<|im_end|>\n<|im_start|>assistant\n"))


def error_header(error: int) -> str:
  return "Error: " + grammar.ERROR_MESSAGES[ActionError(int(error))] + "."


def observation_ids(tok, error: int, vision_tokens: int, modality: int):
  """The environment's turn after a tool call: the returned pixels, or an error message without pixels."""
  head = _text(tok, "<|im_end|>\n<|im_start|>user\n")
  tail = _text(tok, "<|im_end|>\n<|im_start|>assistant\n")
  if error != ActionError.OK:
    return _cat(head, _text(tok, error_header(error)), tail)
  header = CROP_HEADER if modality == IMAGE else CLIP_HEADER
  return _cat(head, _text(tok, header), _vision(tok, vision_tokens, modality), tail)


def assistant_step_ids(tok, think: str, action: dict | None = None, answer: str | None = None):
  """One assistant step: `<think>..</think>` then a tool call, or the answer and `<|im_end|>`."""
  ids = tok.encode(f"<think>{think}</think>")
  if action is not None:
    ids = ids + grammar.encode_action(tok, action)
  elif answer is not None:
    ids = ids + tok.encode(f"<answer>{answer}</answer>") + [tok.im_end_id]
  else:
    raise ValueError("an assistant step needs an action or an answer")
  return ids, [0] * len(ids)


def conversation_ids(tok, question: str, video_tokens: int, steps: list[dict], system: str = SYSTEM_PROMPT):
  """A whole SFT conversation. `steps`: [{"think", "action" | "answer", "observation": (error, n, modality)}].

  Returns `(ids, mm_types, loss_mask)`; the loss mask is 1 exactly on the assistant steps.
  """
  ids, types = prompt_ids(tok, question, video_tokens, system)
  loss = [0] * len(ids)
  for s in steps:
    a_ids, a_types = assistant_step_ids(tok, s.get("think", ""), s.get("action"), s.get("answer"))
    ids, types, loss = ids + a_ids, types + a_types, loss + [1] * len(a_ids)
    if s.get("action") is not None:
      o_ids, o_types = observation_ids(tok, *s["observation"])
      ids, types, loss = ids + o_ids, types + o_types, loss + [0] * len(o_ids)
  return ids, types, loss
