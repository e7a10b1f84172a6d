"""With a real-format Qwen2.5-VL-7B-Instruct directory (the real 151,643-rank vocabulary, its tokenizer_config,
chat template and preprocessor config), the ids and pixels our featurizers feed the model equal HF's:
`tokenizer.apply_chat_template` + the processor's placeholder expansion + its image / video preprocessing.

HF's video processor (and so `AutoProcessor` for Qwen2.5-VL) needs torchvision, whose registry wheel is a CUDA build
that does not load beside the pinned CPU torch. Its result is reproduced here from classes that load: each frame
resized, rescaled and normalized by the image processor's PIL backend (`Qwen2VLImageProcessorPil`, the same
steps and the same bicubic filter as the video processor), the frame size from HF's own video `smart_resize`, and
HF's own `Qwen2VLVideoProcessor.patchify`, compiled from its source file; the placeholder expansion is HF's own
`Qwen2_5_VLProcessor.replace_image_token` / `replace_video_token`.
"""
import json
import types

import numpy as np
import pytest
import torch

from qwen_real import ADDED, FIRST_ADDED_ID
from test_processing_image import _hf_video_patchify
from videor4_jax.data import pipeline
from videor4_jax.data.features import RlFeaturizer, SftFeaturizer
from videor4_jax.data.video_bytes import encode_mp4
from videor4_jax.processing import chat, grammar
from videor4_jax.processing.processor import Processor

QUESTION = "What is written on the red sign?"


@pytest.fixture(scope="module")
def qwen_dir(qwen_tokenizer_dir):
  return qwen_tokenizer_dir


@pytest.fixture(scope="module")
def hf(qwen_dir):
  from transformers import AutoTokenizer
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  return AutoTokenizer.from_pretrained(qwen_dir), Qwen2VLImageProcessorPil.from_pretrained(qwen_dir)


def _video(seed=0, n=8, hw=(224, 224)):
  return np.random.default_rng(seed).integers(0, 256, size=(n, *hw, 3), dtype=np.uint8)


def _hf_video(image_processor, frames, min_pixels, max_pixels):
  """HF video processor output for already sampled frames (see the module docstring)."""
  import ast
  import os
  import transformers.models.qwen2_vl as q
  path = os.path.join(os.path.dirname(q.__file__), "video_processing_qwen2_vl.py")
  tree = ast.parse(open(path, encoding="utf-8").read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize")
  ns = {"math": __import__("math")}
  exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), ns)   # noqa: S102 (HF's own code)
  h, w = ns["smart_resize"](frames.shape[1], frames.shape[2], factor=28, min_pixels=min_pixels,
                            max_pixels=max_pixels)
  # The PIL image processor at exactly that size: resize + rescale + normalize, one frame at a time.
  per = [image_processor(images=[f], size={"shortest_edge": h * w, "longest_edge": h * w}, return_tensors="np")
         for f in frames]
  assert all(p["image_grid_thw"].tolist() == [[1, h // 14, w // 14]] for p in per)
  normalized = np.stack([_unpatchify_image(p["pixel_values"], h, w) for p in per])          # [F, C, H, W]
  patches, gt, gh, gw = _hf_video_patchify()(None, torch.from_numpy(normalized)[None], patch_size=14,
                                             merge_size=2, temporal_patch_size=2)
  return patches[0].numpy(), np.array([gt, gh, gw])


def _unpatchify_image(pv, h, w):
  """The first temporal copy of an HF image's patches back to a normalized [C, H, W] frame."""
  gh, gw = h // 14, w // 14
  x = pv.reshape(gh // 2, gw // 2, 2, 2, 3, 2, 14, 14)[:, :, :, :, :, 0]    # (bh, bw, mh, mw, C, p, p)
  return x.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, h, w)


def _expand(hf_tok, text, image_grids, video_grids):
  """HF's own placeholder expansion (Qwen2_5_VLProcessor.replace_*_token), then HF tokenization."""
  from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor as P
  me = types.SimpleNamespace(image_token="<|image_pad|>", video_token="<|video_pad|>",
                             image_processor=types.SimpleNamespace(merge_size=2),
                             video_processor=types.SimpleNamespace(merge_size=2))
  parts, out, i, v = text.split("<|vision_start|>"), [], 0, 0
  out.append(parts[0])
  for p in parts[1:]:
    if p.startswith("<|image_pad|>"):
      p = P.replace_image_token(me, {"image_grid_thw": image_grids}, i) + p[len("<|image_pad|>"):]
      i += 1
    elif p.startswith("<|video_pad|>"):
      p = P.replace_video_token(me, {"video_grid_thw": video_grids}, v) + p[len("<|video_pad|>"):]
      v += 1
    out.append(p)
  return hf_tok("<|vision_start|>".join(out))["input_ids"]


def test_processor_reads_the_directory(qwen_dir, tmp_path):
  p = Processor.from_dir(qwen_dir)
  tok = p.tokenizer
  for i, (name, _) in enumerate(ADDED):                      # every Qwen2.5-VL added token at its real id
    assert tok.token_to_id(name) == FIRST_ADDED_ID + i
  assert (tok.im_start_id, tok.video_pad_id, tok.tool_call_start_id) == (151644, 151656, 151657)
  # transformers' video processor falls back to preprocessor_config.json: min 3136, max 12845056 px.
  assert (p.vision.video_min_pixels, p.vision.video_max_pixels) == (3136, 12845056)
  assert p.vision.video_frame_hw(224, 224) == (224, 224)    # -> 4 groups x 64 = 256 tokens for 8 frames
  with pytest.raises(ValueError, match=r"video_max_pixels=12845056 .* 262144 patches"):   # a 1.1 GiB static input
    RlFeaturizer(_pcfg(), p)
  with open(f"{qwen_dir}/chat_template.json") as f:
    assert p.chat_template == json.load(f)["chat_template"]
  d = tmp_path / "with_video_cfg"
  import shutil
  shutil.copytree(qwen_dir, d)
  (d / "video_preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 784,
                                                                          "longest_edge": 3136}}))
  assert Processor.from_dir(str(d)).vision.video_frame_hw(224, 224) == (56, 56)
  (d / "preprocessor_config.json").unlink()
  with pytest.raises(ValueError, match="preprocessor_config.json"):
    Processor.from_dir(str(d))


def _processor(qwen_dir):
  """The directory's processor. Its max_pixels (12845056) would make the static video input 1.1 GiB per row, which
  the featurizers refuse; 224x224 frames are within both bounds, so capping at 224 * 224 changes no result here."""
  return Processor.from_dir(qwen_dir, vision_overrides={"video_max_pixels": 224 * 224})


def _pcfg(**kw):
  return pipeline.PipelineConfig(**{**dict(batch_size=1, num_frames=8, source_hw=(224, 224), max_prompt_tokens=512,
                                           max_seq_tokens=1024, obs_hw=(56, 56), max_observations=2,
                                           max_clip_frames=4), **kw})


def test_video_prompt_equals_hf(qwen_dir, hf):
  hf_tok, hf_image = hf
  proc = _processor(qwen_dir)
  frames = _video()
  row = {"qid": "q1", "question": QUESTION, "answers": ["7"], "video": encode_mp4(frames)}
  out = RlFeaturizer(_pcfg(), proc).map(row)
  ids = out["input_ids"][out["attention_mask"] > 0].tolist()
  grid = out["video_grid_thw"]
  messages = [{"role": "system", "content": proc.system_prompt},
              {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
  text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  ref_pv, ref_grid = _hf_video(hf_image, frames, 3136, 12845056)
  assert grid.tolist() == ref_grid.tolist() == [4, 16, 16]
  ref_ids = _expand(hf_tok, text, None, ref_grid[None])
  assert ids == ref_ids and ids.count(151656) == 256
  np.testing.assert_allclose(out["pixel_values_videos"][:int(np.prod(grid))], ref_pv, atol=1e-6, rtol=0)
  assert not out["pixel_values_videos"][int(np.prod(grid)):].any()      # static padding beyond the grid


def test_sft_conversation_equals_hf(qwen_dir, hf):
  """Think text, a crop (image observation), a clip (video observation) and the answer, as one conversation."""
  from videor4_jax.convert.resolve import make_model_config
  from videor4_jax.rumination.config import RolloutConfig
  from videor4_jax.rumination.observation import execute_host
  from videor4_jax.model.config import ModelConfig
  hf_tok, hf_image = hf
  proc = _processor(qwen_dir)
  frames = _video(1)
  crop = {"name": "crop", "frame": 3, "bbox_2d": [0.12, 0.6, 0.55, 0.8]}
  clip = {"name": "clip", "frames": [4, 5, 6]}
  steps = [{"think": "The sign is small.", "action": crop, "answer": None},
           {"think": "It flashes; check frames 4-6.", "action": clip, "answer": None},
           {"think": "It reads 7.", "action": None, "answer": "7"}]
  traj = {"qid": "q2", "video_id": "v", "question": QUESTION, "answers": ["7"], "kind": "compositional",
          "steps": steps, "evidence": {}}
  row = {"qid": "q2", "question": QUESTION, "answers": ["7"], "video": encode_mp4(frames),
         "trajectory": json.dumps(traj)}
  rollout = RolloutConfig(obs_hw=(56, 56), max_clip_frames=4)
  ex = SftFeaturizer(_pcfg(), proc, rollout, ModelConfig()).map(row)
  ids = ex["tokens"][ex["valid"]].tolist()
  # HF side: the observation pixels are the environment's (our pixel ops), given to HF as images / frames.
  src = RlFeaturizer(_pcfg(), proc).map(row)["source_frames"]
  crop_px = execute_host(src, crop, obs_hw=(56, 56), max_clip_frames=4)[0][0].astype(np.uint8)
  clip_px = execute_host(src, clip, obs_hw=(56, 56), max_clip_frames=4)[0][:3].astype(np.uint8)
  messages = [
      {"role": "system", "content": proc.system_prompt},
      {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]},
      {"role": "assistant", "content": f"<think>{steps[0]['think']}</think>" + grammar.action_text(crop)},
      {"role": "user", "content": [{"type": "text", "text": chat.CROP_HEADER}, {"type": "image"}]},
      {"role": "assistant", "content": f"<think>{steps[1]['think']}</think>" + grammar.action_text(clip)},
      {"role": "user", "content": [{"type": "text", "text": chat.CLIP_HEADER}, {"type": "video"}]},
      {"role": "assistant", "content": "<think>It reads 7.</think><answer>7</answer>"}]
  text = hf_tok.apply_chat_template(messages, tokenize=False)
  img = hf_image(images=[crop_px], return_tensors="np")
  vid, vid_grid = _hf_video(hf_image, frames, 3136, 12845056)
  clip_pv, clip_grid = _hf_video(hf_image, clip_px, 3136, 12845056)
  ref = _expand(hf_tok, text, img["image_grid_thw"], np.stack([vid_grid, clip_grid]))
  # HF's template closes the last turn with "<|im_end|>\n"; the SFT row ends at <|im_end|> (the last target).
  assert ids == ref[:-1] and hf_tok.decode(ref[-1:]) == "\n"
  assert ids.count(151655) == 4 and ids.count(151656) == 256 + 2 * 4
  np.testing.assert_allclose(ex["video_pixels"][:len(vid)], vid, atol=1e-6, rtol=0)
  np.testing.assert_allclose(ex["obs_pixels"][0][:4 * 4], img["pixel_values"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(ex["obs_pixels"][1][:2 * 16], clip_pv, atol=1e-6, rtol=0)
  assert ex["obs_grid"].tolist() == [[1, 4, 4], clip_grid.tolist()]
  # The loss covers exactly the assistant turns, whose ids are the real tokenizer's ("><" is one token here).
  gen = ex["tokens"][ex["loss_mask"] > 0].tolist()
  assert hf_tok.decode(gen) == "".join(m["content"] for m in messages if m["role"] == "assistant") + "<|im_end|>"
  assert hf_tok.convert_tokens_to_ids("><") in gen
