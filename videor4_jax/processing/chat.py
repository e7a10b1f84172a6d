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

import re

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


QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
"""Qwen2.5-VL-Instruct's chat template (the ChatML layout this module renders); exported with every checkpoint."""


def _check_plain(tok, text: str, where: str) -> str:
  """User, think and answer text must not spell a control token: it would be read as that token."""
  for name in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>", "<|endoftext|>"):
    if name in text:
      raise ValueError(f"{where}: text {text[:80]!r} contains the control token {name}")
  return text


def _vision_text(n_tokens: int, modality: int) -> str:
  return "<|vision_start|>" + ("<|image_pad|>" if modality == IMAGE else "<|video_pad|>") * n_tokens + "<|vision_end|>"


def _types(tok, ids):
  return [IMAGE if i == tok.image_pad_id else VIDEO if i == tok.video_pad_id else 0 for i in ids]


def encode_segments(tok, segments: list[tuple[str, int]]):
  """`[(text, loss)]` -> `(ids, mm_types, loss_mask)`, the whole text encoded at once (as the model reads it).

  Each segment's tokens must also be exactly its own encoding, so that the rollout, which appends a segment's
  tokens after the model's generated ones, feeds the same ids; a tokenizer that merges across a segment
  boundary is an error, never a silent difference between SFT targets and what the model reads.
  """
  text = "".join(t for t, _ in segments)
  ids = tok.encode(text)
  parts = [tok.encode(t) for t, _ in segments]
  if sum(parts, []) != ids:
    at = next(i for i in range(1, len(segments) + 1) if sum(parts[:i], []) != ids[:sum(map(len, parts[:i]))])
    raise ValueError(f"the tokenizer merges tokens across the boundary after segment {at - 1} "
                     f"({segments[at - 1][0][-40:]!r} | {segments[at][0][:40]!r} ...): this conversation layout "
                     "cannot be both whole-string encoded and assembled turn by turn")
  loss = [l for (_, l), p in zip(segments, parts) for _ in p]
  return ids, _types(tok, ids), loss


def prompt_text(question: str, video_tokens: int, system: str = SYSTEM_PROMPT) -> str:
  return ("<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n" + _vision_text(video_tokens, VIDEO)
          + question + "<|im_end|>\n<|im_start|>assistant\n")


def prompt_ids(tok, question: str, video_tokens: int, system: str = SYSTEM_PROMPT):
  """The prompt up to and including `<|im_start|>assistant\\n`."""
  ids, types, _ = encode_segments(tok, [(prompt_text(_check_plain(tok, question, "question"), video_tokens,
                                                     _check_plain(tok, system, "system prompt")), 0)])
  return ids, types


def error_header(error: int) -> str:
  return "Error: " + grammar.ERROR_MESSAGES[ActionError(int(error))] + "."


def observation_text(error: int, vision_tokens: int, modality: int) -> str:
  """The environment's turn after a tool call: the returned pixels, or an error message without pixels."""
  if error != ActionError.OK:
    body = error_header(error)
  else:
    body = (CROP_HEADER if modality == IMAGE else CLIP_HEADER) + _vision_text(vision_tokens, modality)
  return "<|im_end|>\n<|im_start|>user\n" + body + "<|im_end|>\n<|im_start|>assistant\n"


def observation_ids(tok, error: int, vision_tokens: int, modality: int):
  ids, types, _ = encode_segments(tok, [(observation_text(error, vision_tokens, modality), 0)])
  return ids, types


def assistant_step_text(think: str, action: dict | None = None, answer: str | None = None) -> str:
  """One assistant step: `<think>..</think>` then a tool call, or the answer and `<|im_end|>`."""
  if action is not None:
    return f"<think>{think}</think>" + grammar.action_text(action)
  if answer is not None:
    return f"<think>{think}</think><answer>{answer}</answer><|im_end|>"
  raise ValueError("an assistant step needs an action or an answer")


def assistant_step_ids(tok, think: str, action: dict | None = None, answer: str | None = None):
  _check_plain(tok, think, "think text")
  _check_plain(tok, answer or "", "answer")
  if action is not None:
    grammar.encode_action(tok, action)     # the grammar's path for this tokenizer (raises where they differ)
  ids, types, _ = encode_segments(tok, [(assistant_step_text(think, action, answer), 1)])
  return ids, types


def conversation_ids(tok, question: str, video_tokens: int, steps: list[dict], system: str = SYSTEM_PROMPT):
  """A whole SFT conversation. `steps`: [{"think", "action" | "answer", "observation": (error, n, modality)}].

  Returns `(ids, mm_types, loss_mask)`; the loss mask is 1 exactly on the assistant steps. The whole text is
  encoded at once (encode_segments), as HF's `apply_chat_template(..., tokenize=True)` does.
  """
  segments = [(prompt_text(_check_plain(tok, question, "question"), video_tokens,
                           _check_plain(tok, system, "system prompt")), 0)]
  for s in steps:
    _check_plain(tok, s.get("think", ""), "think text")
    _check_plain(tok, s.get("answer") or "", "answer")
    if s.get("action") is not None:
      grammar.encode_action(tok, s["action"])
    segments.append((assistant_step_text(s.get("think", ""), s.get("action"), s.get("answer")), 1))
    if s.get("action") is not None:
      segments.append((observation_text(*s["observation"]), 0))
  return encode_segments(tok, segments)


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(final_segment: str) -> str:
  """The text inside the last `<answer>...</answer>` of an assistant step ('' if none)."""
  found = _ANSWER.findall(final_segment)
  return found[-1].strip() if found else ""
