"""Tokenizer on the `tokenizers` library: a checkpoint's `tokenizer.json`, or a tiny one built in code.

The tiny tokenizer is character level (printable ASCII and newline) plus the Qwen special tokens, the think/answer
tags and the action grammar's literal pieces as atomic added tokens, so that a tool call is ~20 tokens. It is a
pure function of this file: the same ids on every machine.
"""
from __future__ import annotations

import os

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>")
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
TINY_WORDS = (" sign", "red", "green", "blue", "yellow", "orange", "purple", "cyan", "white", "top", "bottom",
              " frame",
              # Chat roles, the tiny system prompt, the synthetic task's questions, think texts and observation
              # headers: a real BPE has these as single tokens, and char-level spelling would make every turn
              # ~3x longer (slower rollouts, and the few vision tokens drowned in a long context).
              "system", "user", "assistant", "Read", " the", " video", "Tools", " crop", " clip", "What", " is",
              " written", " on", " code", " appears", " briefly", "The", " has", " text", " a", " few", " frames",
              "Crop", "Clip", "Text", " too", " small", "It", " reads", " left", " right", "Frames", "Error")


class Tokenizer:
  """Thin wrapper: `encode(text) -> list[int]`, `decode(ids) -> str`, and the ids of every special token."""

  def __init__(self, tok: HFTokenizer):
    self._tok = tok
    ids = {}
    for name in SPECIAL_TOKENS + TAG_TOKENS:
      i = tok.token_to_id(name)
      if i is None and name in SPECIAL_TOKENS:
        raise ValueError(f"tokenizer has no token {name!r}; a Qwen2.5-VL tokenizer.json is required")
      ids[name] = i
    self.pad_id = ids["<|endoftext|>"]
    self.im_start_id, self.im_end_id = ids["<|im_start|>"], ids["<|im_end|>"]
    self.vision_start_id, self.vision_end_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    self.image_pad_id, self.video_pad_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
    self.tool_call_start_id, self.tool_call_end_id = ids["<tool_call>"], ids["</tool_call>"]
    self.special_ids = {v for k, v in ids.items() if k in SPECIAL_TOKENS}

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def save(self, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tokenizer.json")
    self._tok.save(path + ".tmp")
    os.replace(path + ".tmp", path)
    return path

  @classmethod
  def from_dir(cls, path: str) -> "Tokenizer":
    f = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(f):
      raise FileNotFoundError(f"{path}: no tokenizer.json")
    return cls(HFTokenizer.from_file(f))

  @classmethod
  def tiny(cls) -> "Tokenizer":
    from videor4_jax.processing import grammar  # the literal pieces are the grammar's
    chars = ["\n"] + [chr(i) for i in range(32, 127)]
    vocab = {"[UNK]": 0}
    for c in chars:
      vocab[c] = len(vocab)
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    pieces = list(TAG_TOKENS) + [p for p in grammar.LITERAL_PIECES if len(p) > 1]
    tok.add_tokens([AddedToken(p, normalized=False) for p in dict.fromkeys(pieces)])
    # Whole-word tokens for the built-in synthetic task's vocabulary, as a real BPE would have them (appended
    # last, so every earlier id is unchanged).
    tok.add_tokens([AddedToken(w, normalized=False) for w in TINY_WORDS])
    return cls(tok)


TINY_VOCAB_ROUND = 128


def padded_vocab_size(tokenizer: Tokenizer, multiple: int = TINY_VOCAB_ROUND) -> int:
  """The model's vocab size for this tokenizer: rounded up so the embedding shards evenly."""
  return -(-tokenizer.vocab_size // multiple) * multiple
