"""RL and SFT featurizers over the synthetic builder: static shapes, and SFT observations equal to the rollout's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videor4_jax.data import pipeline
from videor4_jax.data.builders.synthetic_textvideo.builder import SyntheticTextvideo
from videor4_jax.data.features import RlFeaturizer, SftFeaturizer
from videor4_jax.processing import chat, grammar
from videor4_jax.processing.tokenizer import Tokenizer

CFG = pipeline.PipelineConfig(batch_size=2, num_frames=8, source_hw=(224, 224), global_hw=(56, 56),
                              max_prompt_tokens=160, max_seq_tokens=512, obs_hw=(112, 112), max_observations=2,
                              max_clip_frames=4, padding_side="left", worker_count=0)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  SyntheticTextvideo(config="tiny", data_dir=d, file_format="array_record").download_and_prepare()
  return pipeline.open_source("synthetic_textvideo/tiny", "train", data_dir=d)


def test_rl_batches_have_static_shapes(source):
  it = iter(pipeline.make_dataset(source, CFG, RlFeaturizer(CFG)))
  for _ in range(2):
    b = next(it)
    assert b["input_ids"].shape == (2, 160) and b["attention_mask"].shape == (2, 160)
    assert b["pixel_values_videos"].shape == (2, 4 * 4 * 4, 1176) and b["video_grid_thw"].tolist() == [[4, 4, 4]] * 2
    assert b["source_frames"].shape == (2, 8, 224, 224, 3) and b["source_frames"].dtype == np.uint8
    tok = Tokenizer.tiny()
    text = tok.decode(b["input_ids"][0][b["attention_mask"][0] > 0])
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|video_pad|>") == 16


def test_sft_rows_match_the_rollout_executor(source):
  """The observation of a gold action in SFT data is token- and pixel-identical to the rollout's in-graph one."""
  from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig
  from videor4_jax.rumination.config import RolloutConfig
  from videor4_jax.rumination.env import make_env
  import json
  feat = SftFeaturizer(CFG)
  tok = Tokenizer.tiny()
  from videor4_jax.processing.tokenizer import padded_vocab_size
  config = ModelConfig(text=TextConfig(vocab_size=padded_vocab_size(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, mrope_section=(4, 6, 6)),
                       vision=VisionConfig(depth=1, hidden_size=32, intermediate_size=32, num_heads=2,
                                           out_hidden_size=64, fullatt_block_indexes=(0,)),
                       image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id)
  env = make_env(config, RolloutConfig(obs_hw=(112, 112), max_clip_frames=4), tok, num_frames=8)
  rf = RlFeaturizer(CFG)
  from videor4_jax.model.vlm import init_params
  params = init_params(config, jax.random.key(0))
  observe = jax.jit(env.observe)
  seen = set()
  for i in range(len(source)):
    row = source[i]
    ex = feat.map(row)
    assert ex["tokens"].shape == (512,) and ex["obs_pixels"].shape == (2, 2 * 64, 1176)
    assert ex["positions"].shape == (3, 512)
    assert ex["loss_mask"][~ex["valid"]].sum() == 0 and ex["loss_mask"].sum() > 10
    traj = json.loads(row["trajectory"])
    # The loss covers exactly the gold assistant steps (think + call, or think + answer + <|im_end|>), nothing else.
    want = "".join(f"<think>{st['think']}</think>" + (grammar.action_text(st["action"]) if st["action"] else
                                                      f"<answer>{st['answer']}</answer><|im_end|>")
                   for st in traj["steps"])
    assert tok.decode(ex["tokens"][ex["loss_mask"] > 0]) == want
    np.testing.assert_array_equal(ex["mm_types"] == 1, ex["tokens"] == tok.image_pad_id)
    np.testing.assert_array_equal(ex["mm_types"] == 2, ex["tokens"] == tok.video_pad_id)
    src = rf.map(row)["source_frames"]
    r = 0
    for st in traj["steps"]:
      a = st["action"]
      if a is None:
        continue
      seen.add(a["name"])
      parsed = dict(kind=jnp.array([1 if a["name"] == "crop" else 2]), frame=jnp.array([a.get("frame", 0)]),
                    box=jnp.array([a.get("bbox_2d", [0, 0, 0, 0])], jnp.float32),
                    frames=jnp.array([(a.get("frames", []) + [0] * 4)[:4]]),
                    num_frames=jnp.array([len(a.get("frames", []))]), error=jnp.array([0]))
      obs = observe(params, jnp.asarray(src[None]), parsed, jnp.array([True]), jnp.array([0]))
      assert int(obs["error"][0]) == 0
      np.testing.assert_array_equal(np.asarray(obs["pixels"][0]), ex["obs_pixels"][r])
      np.testing.assert_array_equal(np.asarray(obs["grid"][0]), ex["obs_grid"][r])
      chunk = np.asarray(obs["ids"][0])[np.asarray(obs["valid"][0])].tolist()
      flat = ex["tokens"].tolist()
      assert any(flat[j:j + len(chunk)] == chunk for j in range(len(flat))), "observation tokens differ"
      r += 1
    # The tool calls in the SFT tokens are the grammar's encoding (one grammar for data and decoding).
    text = tok.decode(ex["tokens"][ex["valid"]])
    for st in traj["steps"]:
      if st["action"] is not None:
        assert grammar.action_text(st["action"]) in text
  assert seen == {"crop", "clip"}
