"""A real-format checkpoint (HF-saved: vocabulary 151,936, sharded bf16 with an index, the real tokenizer, chat
template and preprocessor config): train.py's Runner trains on the directory's token ids, eval reads its prompts
with the directory's video token, the export is a complete HF directory, and config disagreements are errors
before anything is built or compiled."""
import json
import os
import stat
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from hf_tiny import greedy_ours
from qwen_real import make_real_format_checkpoint
from train_fixtures import small_config
from videor4_jax.convert.resolve import ConfigMismatch
from videor4_jax.data.sources import make_source_fn

VIDEO_PAD, IMAGE_PAD = 151656, 151655
# The directory's video rule would give 224x224 frames (256 tokens per video); the tiny task's prompts hold 56x56,
# and 28x28 observations need image min_pixels <= 784: set on the command line, they override the directory.
PROCESSOR_FLAGS = {"processor.video_min_pixels": 28 * 28, "processor.video_max_pixels": 56 * 56,
                   "processor.image_min_pixels": 28 * 28}


# The untied variant doubles the 151,936-row head (and the test time): slow; the default suite runs the tied one.
@pytest.fixture(scope="module", params=["tied", pytest.param("untied", marks=pytest.mark.slow)])
def real_ckpt(request, tmp_path_factory, qwen_tokenizer_dir):
  d = str(tmp_path_factory.mktemp(f"real_{request.param}") / "Qwen2.5-VL-tiny")
  make_real_format_checkpoint(d, qwen_tokenizer_dir, tied=request.param == "tied")
  assert os.path.isfile(f"{d}/model.safetensors.index.json")              # sharded, as the hub ships it
  return d, request.param


def _config(data_dir, ckpt, **overrides):
  cfg = small_config(data_dir)
  cfg.init_from = ckpt
  for k, v in {**PROCESSOR_FLAGS, **overrides}.items():
    *path, key = k.split(".")
    node = cfg
    for part in path:
      node = node[part]
    node[key] = v
  return cfg, set(PROCESSOR_FLAGS) | set(overrides)


def test_train_eval_export_on_a_real_format_checkpoint(real_ckpt, tmp_path):
  from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  from videor4_jax.convert.hf import from_pretrained
  from videor4_jax.eval.loop import evaluate
  from videor4_jax.train.context import init_params
  from videor4_jax.train.curriculum import Runner, sft_stream
  ckpt, kind = real_ckpt
  cfg, explicit = _config(tmp_path / "data", ckpt, export_max_shard_mb=8)
  cfg.eval.num_examples = 0                 # the per-stage eval report is the tiny run's; evaluated once below
  runner = Runner(cfg, str(tmp_path / "run"), None, explicit)
  runner.source_fn = make_source_fn(cfg.data)
  assert runner.processor.source == ckpt and runner.config.text.vocab_size == 151936
  assert runner.config.tie_word_embeddings == (kind == "tied") and runner.config.text.rope_theta == 1e6
  # The SFT batches are the directory's token ids: its video token, and ids far beyond the tiny vocabulary.
  sft = next(sft_stream(runner.ctx, runner.source_fn, "drp_sft"))
  tokens = sft["tokens"][sft["valid"]]
  assert (tokens == VIDEO_PAD).sum() == 2 * 16 and tokens.max() > 150000
  assert "<|im_start|>assistant\n<think>" in runner.tok.decode(sft["tokens"][0][sft["valid"][0]])
  report = runner.run()                                                       # 2 steps of each of the 4 stages
  with open(tmp_path / "run" / "logs" / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  for stage in ("drp_sft", "rl_d", "crp_sft", "rl_c"):
    assert sum(f"{stage}/loss" in m for m in logged) == 2, stage
  # Eval prompts carry the directory's video token.
  params = init_params(runner.ctx)
  res, kept = evaluate(runner.env, params, runner.processor, runner.source_fn("test"), runner.pcfg, num_examples=2,
                       progress=False, keep_batches=True)
  assert (kept[0][0]["input_ids"] == VIDEO_PAD).sum() == kept[0][0]["input_ids"].shape[0] * 16
  # The export: a complete HF directory in the checkpoint's dtype, sharded above the threshold, mode 0644.
  final = report["final_checkpoint"]
  files = set(os.listdir(final))
  assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
          "preprocessor_config.json", "video_preprocessor_config.json", "model.safetensors.index.json"} <= files
  assert all(stat.S_IMODE(os.stat(os.path.join(final, f)).st_mode) == 0o644 for f in files)
  with open(f"{final}/config.json") as f:
    assert json.load(f)["dtype"] == "bfloat16"
  hf_tok = AutoTokenizer.from_pretrained(final)
  assert hf_tok.chat_template and hf_tok.convert_tokens_to_ids("<|video_pad|>") == VIDEO_PAD
  image_processor = Qwen2VLImageProcessorPil.from_pretrained(final)
  assert image_processor.size["shortest_edge"] == 28 * 28                    # the run's processor settings
  try:                                                                         # AutoProcessor needs torchvision
    import torchvision  # noqa: F401
    from transformers import AutoProcessor
    AutoProcessor.from_pretrained(final)
  except Exception as e:  # noqa: BLE001 (the CUDA torchvision wheel fails to import in many ways)
    print(f"AutoProcessor not checked: torchvision unusable here ({type(e).__name__})")
  # HF logits on HF-built inputs equal ours (fp32), and 16 greedy tokens are identical.
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(final, torch_dtype=torch.float32,
                                                         attn_implementation="eager").eval()
  config, ours = from_pretrained(final)
  img = np.random.default_rng(0).integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
  msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is written here?"}]}]
  px = image_processor(images=[img], return_tensors="np")
  text = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  text = text.replace("<|image_pad|>", "<|image_pad|>" * (int(px["image_grid_thw"].prod()) // 4))
  ids = np.array([hf_tok(text)["input_ids"]])
  with torch.no_grad():
    hf.model.rope_deltas = None
    ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px["pixel_values"]),
             image_grid_thw=torch.tensor(px["image_grid_thw"]),
             mm_token_type_ids=torch.tensor((ids == IMAGE_PAD).astype(np.int64))).logits.numpy()
  import videor4_jax
  got = np.asarray(videor4_jax.forward(config, ours, ids, pixel_values=px["pixel_values"],
                                       image_grid_thw=px["image_grid_thw"]))
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
  hf.model.rope_deltas = None
  hf.generation_config.eos_token_id = None
  with torch.no_grad():
    gen = hf.generate(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px["pixel_values"]),
                      image_grid_thw=torch.tensor(px["image_grid_thw"]),
                      mm_token_type_ids=torch.tensor((ids == IMAGE_PAD).astype(np.int64)), max_new_tokens=16,
                      do_sample=False)[0, ids.shape[1]:].numpy()
  np.testing.assert_array_equal(greedy_ours(config, ours, ids, px["pixel_values"], px["image_grid_thw"], 16), gen)


@pytest.mark.parametrize("key, value, names", [
    ("model.text.vocab_size", 1000, "151936"),
    ("model.tie_word_embeddings", False, "tie_word_embeddings"),
    ("model.text.hidden_size", 128, "hidden_size"),
    ("model.text.rope_theta", 10000.0, "1000000.0"),
    ("model.image_token_id", 7, "image_token_id"),
    ("tokenizer", "tiny", "tokenizer"),
])
def test_explicit_model_values_that_disagree_with_the_checkpoint_are_errors(qwen_tokenizer_dir, tmp_path, key,
                                                                            value, names):
  """Set on the command line, each differing value is an error naming both values, raised by the Runner's
  constructor: before any data is built or anything compiled."""
  from videor4_jax.train.curriculum import Runner
  ckpt = make_real_format_checkpoint(str(tmp_path / "ckpt"), qwen_tokenizer_dir, tied=True)
  cfg, explicit = _config(tmp_path / "data", ckpt, **{key: value})
  with pytest.raises(ConfigMismatch, match=names) as e:
    Runner(cfg, str(tmp_path / "run"), None, explicit)
  assert repr(value) in str(e.value) and not (tmp_path / "data").exists()


def test_checkpoint_disagreeing_with_its_tokenizer_is_an_error(qwen_tokenizer_dir, tmp_path):
  """A config.json whose image token id is not the tokenizer's <|image_pad|> (mixed-up files): an error, listed."""
  from videor4_jax.train.curriculum import Runner
  ckpt = make_real_format_checkpoint(str(tmp_path / "ckpt"), qwen_tokenizer_dir, tied=True)
  with open(f"{ckpt}/config.json") as f:
    d = json.load(f)
  d["image_token_id"] = 151654
  with open(f"{ckpt}/config.json", "w") as f:
    json.dump(d, f)
  cfg, explicit = _config(tmp_path / "data", ckpt)
  with pytest.raises(ConfigMismatch, match=r"image_token_id=151654 but the tokenizer .* <\|image_pad\|>=151655"):
    Runner(cfg, str(tmp_path / "run"), None, explicit)


def test_eval_cli_on_a_real_format_checkpoint(real_ckpt, tmp_path):
  ckpt, _ = real_ckpt
  cfg = small_config(tmp_path / "data")
  out = tmp_path / "eval.json"
  flags = [f"--config.{k}={v}" for k, v in PROCESSOR_FLAGS.items()]
  flags += [f"--config.data.{k}={cfg.data[k]}" for k in ("data_dir", "num_train", "num_validation", "num_test")]
  flags += [f"--config.rollout.{k}={cfg.rollout[k]}" for k in ("max_steps", "max_step_tokens", "cache_len")]
  cmd = [sys.executable, "eval.py", "--checkpoint", ckpt, "--split", "test", "--output", str(out),
         "--config.eval.batch_size=4", "--num_examples", "4", *flags]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=os.getcwd())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(out.read_text())["summary"]["num_questions"] == 4
  # A directory without its processor files is refused with the list of what is missing.
  bare = tmp_path / "bare"
  bare.mkdir()
  for f in os.listdir(ckpt):
    if f.endswith(".safetensors") or f == "config.json":
      os.symlink(os.path.join(ckpt, f), bare / f)
  proc = subprocess.run([*cmd[:3], str(bare), *cmd[4:]], capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "tokenizer.json" in proc.stderr and "preprocessor_config.json" in proc.stderr
