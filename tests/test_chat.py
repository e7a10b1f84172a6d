"""Chat template: the loss mask covers exactly the assistant's own tokens, mm types mark exactly the vision pads, the
text is Qwen2.5-VL's ChatML layout, and a tokenizer.json loaded from a directory gives the same conversation."""
import re

import numpy as np
import pytest

from test_grammar import char_tokenizer
from videor4_jax.processing import chat, grammar
from videor4_jax.processing.tokenizer import Tokenizer

CROP = {"name": "crop", "frame": 2, "bbox_2d": [0.1, 0.25, 0.5, 0.75]}
CLIP = {"name": "clip", "frames": [1, 3, 4]}
STEPS = [
    {"think": "look at the sign", "action": CROP, "observation": (0, 4, chat.IMAGE)},
    {"think": "bad frame", "action": {"name": "crop", "frame": 9, "bbox_2d": [0.1, 0.1, 0.5, 0.5]},
     "observation": (grammar.ActionError.FRAME_OUT_OF_RANGE, 0, chat.IMAGE)},
    {"think": "check the frames", "action": CLIP, "observation": (0, 8, chat.VIDEO)},
    {"think": "it says 42", "answer": "42"},
]


def _assistant_text(steps):
  parts = []
  for s in steps:
    parts.append(f"<think>{s['think']}</think>")
    parts.append(grammar.action_text(s["action"]) if "action" in s else f"<answer>{s['answer']}</answer><|im_end|>")
  return parts


@pytest.fixture(params=["tiny", "chars_from_dir"])
def tok(request, tmp_path):
  if request.param == "tiny":
    return Tokenizer.tiny()
  # A tokenizer without atomic grammar pieces, saved as tokenizer.json and loaded back as a checkpoint's would be.
  path = char_tokenizer().save(str(tmp_path / "tok"))
  assert path.endswith("tokenizer.json")
  return Tokenizer.from_dir(str(tmp_path / "tok"))


def test_loss_mask_is_exactly_the_assistant_turns(tok):
  ids, types, loss = chat.conversation_ids(tok, "What is written?", 6, STEPS, chat.TINY_SYSTEM_PROMPT)
  ids, types, loss = np.array(ids), np.array(types), np.array(loss)
  assert len(ids) == len(types) == len(loss) and set(loss.tolist()) == {0, 1}
  # Each maximal run of loss-1 tokens is one assistant step, in order, and nothing else.
  edges = np.flatnonzero(np.diff(np.concatenate([[0], loss, [0]])))
  runs = [tok.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]
  assert runs == [a + b for a, b in zip(*[iter(_assistant_text(STEPS))] * 2)]
  trained = tok.decode(ids[loss == 1])
  for forbidden in ("<|im_start|>", "user", "system", chat.CROP_HEADER, chat.CLIP_HEADER, "Error:",
                    "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "What is written?"):
    assert forbidden not in trained, forbidden
  # The one <|im_end|> with loss closes the answer; those closing tool calls belong to the observation turns.
  assert trained.count("<|im_end|>") == 1 and trained.endswith("</answer><|im_end|>")


def test_mm_types_mark_exactly_the_vision_pads(tok):
  ids, types, _ = chat.conversation_ids(tok, "What is written?", 6, STEPS, chat.TINY_SYSTEM_PROMPT)
  ids, types = np.array(ids), np.array(types)
  np.testing.assert_array_equal(types == chat.IMAGE, ids == tok.image_pad_id)
  np.testing.assert_array_equal(types == chat.VIDEO, ids == tok.video_pad_id)
  assert set(types.tolist()) == {0, 1, 2}
  # 6 prompt video tokens + 8 clip tokens; 4 crop tokens; the error observation has no pixels.
  assert (ids == tok.video_pad_id).sum() == 14 and (ids == tok.image_pad_id).sum() == 4


def test_conversation_text_is_chatml(tok):
  ids, _, _ = chat.conversation_ids(tok, "What is written?", 2, STEPS[:2] + STEPS[3:], chat.TINY_SYSTEM_PROMPT)
  text = tok.decode(ids)
  pad = lambda n, t: "<|vision_start|>" + f"<|{t}_pad|>" * n + "<|vision_end|>"  # noqa: E731
  expected = (
      f"<|im_start|>system\n{chat.TINY_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{pad(2, 'video')}"
      "What is written?<|im_end|>\n<|im_start|>assistant\n"
      f"<think>look at the sign</think>{grammar.action_text(CROP)}"
      f"<|im_end|>\n<|im_start|>user\n{chat.CROP_HEADER}{pad(4, 'image')}<|im_end|>\n<|im_start|>assistant\n"
      f"<think>bad frame</think>{grammar.action_text(STEPS[1]['action'])}"
      "<|im_end|>\n<|im_start|>user\nError: frame out of range.<|im_end|>\n<|im_start|>assistant\n"
      "<think>it says 42</think><answer>42</answer><|im_end|>")
  assert text == expected
  # ChatML: every turn opens with <|im_start|>role and is closed by <|im_end|>.
  roles = re.findall(r"<\|im_start\|>(\w+)\n", text)
  assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
  assert text.count("<|im_end|>") == len(roles)


def test_prompt_and_observation_match_the_conversation(tok):
  """The rollout builds the same tokens piecewise (prompt, sampled step, observation_ids) as SFT does at once."""
  ids, _, _ = chat.conversation_ids(tok, "Q?", 6, STEPS, chat.TINY_SYSTEM_PROMPT)
  piece, _ = chat.prompt_ids(tok, "Q?", 6, chat.TINY_SYSTEM_PROMPT)
  for s in STEPS:
    piece += chat.assistant_step_ids(tok, s["think"], s.get("action"), s.get("answer"))[0]
    if "action" in s:
      piece += chat.observation_ids(tok, *s["observation"])[0]
  assert piece == ids
  with pytest.raises(ValueError, match="action or an answer"):
    chat.assistant_step_ids(tok, "nothing")
