"""RL and SFT featurizers over the synthetic builder: static shapes, and SFT observations equal to the rollout's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videor4_jax.data import pipeline
from videor4_jax.data.builders.synthetic_textvideo.builder import SyntheticTextvideo
from videor4_jax.data.features import RlFeaturizer, SftFeaturizer
from videor4_jax.processing import chat, grammar
from videor4_jax.processing.processor import Processor
from videor4_jax.processing.tokenizer import Tokenizer

# The global view: 224x224 source frames -> 56x56 (min = max pixels); 112x112 observations stay 112x112.
PROC = Processor.from_config(dict(video_min_pixels=56 * 56, video_max_pixels=56 * 56, image_min_pixels=28 * 28,
                                  image_max_pixels=112 * 112), system_prompt=chat.TINY_SYSTEM_PROMPT)

CFG = pipeline.PipelineConfig(batch_size=2, num_frames=8, source_hw=(224, 224), max_prompt_tokens=160, max_seq_tokens=512, obs_hw=(112, 112), max_observations=2,
                              max_clip_frames=4, padding_side="left", worker_count=0)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  SyntheticTextvideo(config="tiny", data_dir=d, file_format="array_record").download_and_prepare()
  return pipeline.open_source("synthetic_textvideo/tiny", "train", data_dir=d)


def test_rl_batches_have_static_shapes(source):
  it = iter(pipeline.make_dataset(source, CFG, RlFeaturizer(CFG, PROC)))
  for _ in range(2):
    b = next(it)
    assert b["input_ids"].shape == (2, 160) and b["attention_mask"].shape == (2, 160)
    assert b["pixel_values_videos"].shape == (2, 4 * 4 * 4, 1176) and b["video_grid_thw"].tolist() == [[4, 4, 4]] * 2
    assert b["source_frames"].shape == (2, 8, 224, 224, 3) and b["source_frames"].dtype == np.uint8
    tok = Tokenizer.tiny()
    text = tok.decode(b["input_ids"][0][b["attention_mask"][0] > 0])
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|video_pad|>") == 16


# Every RolloutConfig field the SFT featurizer reads, off its default (obs_hw: the defaults case uses the
# pipeline's 112, the non-default case 84, set alike in the pipeline as the Runner requires).
ROLLOUTS = {"defaults": dict(obs_hw=(112, 112)),
            "non_default": dict(crop_margin=0.1, crop_min_px=4, clip_seconds_per_group=0.5, obs_hw=(84, 84))}


@pytest.mark.parametrize("setting", list(ROLLOUTS))
def test_sft_rows_match_the_rollout_executor(source, setting):
  """The observation of a gold action in SFT data is token-, pixel- and position-identical to the rollout's
  in-graph one, for the default rollout settings and for non-default crop margin, minimum crop, clip seconds
  per frame group and observation size (the featurizer takes the rollout's own RolloutConfig, so it cannot use
  other values)."""
  from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig
  from videor4_jax.rumination.config import RolloutConfig
  from videor4_jax.rumination.env import make_env
  import json
  tok = PROC.tokenizer
  from videor4_jax.processing.tokenizer import padded_vocab_size
  config = ModelConfig(text=TextConfig(vocab_size=padded_vocab_size(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, mrope_section=(4, 6, 6)),
                       vision=VisionConfig(depth=1, hidden_size=32, intermediate_size=32, num_heads=2,
                                           out_hidden_size=64, fullatt_block_indexes=(0,)),
                       image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id)
  import dataclasses
  rollout = RolloutConfig(max_clip_frames=4, **ROLLOUTS[setting])
  env = make_env(config, rollout, tok, num_frames=8)
  pcfg = dataclasses.replace(CFG, obs_hw=rollout.obs_hw)
  feat = SftFeaturizer(pcfg, PROC, rollout, config)
  obs_tokens = 2 * (rollout.obs_hw[0] // 14) * (rollout.obs_hw[1] // 14)     # patches of one 2-frame item
  rf = RlFeaturizer(CFG, PROC)
  from videor4_jax.model.vlm import init_params
  params = init_params(config, jax.random.key(0))
  observe = jax.jit(env.observe)
  seen = set()
  for i in range(len(source)):
    row = source[i]
    ex = feat.map(row)
    assert ex["tokens"].shape == (512,) and ex["obs_pixels"].shape == (2, obs_tokens, 1176)
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
      assert int(obs.error_b[0]) == 0
      got_px = np.asarray(obs.pixels_bnp[0])
      if setting == "defaults":
        np.testing.assert_array_equal(got_px, ex["obs_pixels"][r])
      else:
        # A margin makes resampling weights irrational, and XLA fuses the crop differently inside the rollout
        # graph than in the host's compiled crop: measured 2 of 150,528 values (one pixel) one intensity level
        # apart (0.0142 after CLIP normalization), everything else bitwise equal.
        diff = np.abs(got_px - ex["obs_pixels"][r])
        assert diff.max() <= 1 / 255 / 0.2613 + 1e-6 and (diff > 0).mean() < 1e-4, (diff.max(), (diff > 0).sum())
      np.testing.assert_array_equal(np.asarray(obs.grid_b3[0]), ex["obs_grid"][r])
      chunk = np.asarray(obs.ids_bn[0])[np.asarray(obs.valid_bn[0])].tolist()
      flat = ex["tokens"].tolist()
      at = [j for j in range(len(flat)) if flat[j:j + len(chunk)] == chunk]
      assert at, "observation tokens differ"
      # The rollout's positions for this chunk, continuing from the SFT row's counter at the chunk, are the SFT
      # row's positions there (clip seconds per group scale the temporal positions of a clip).
      j = at[0]
      obs = observe(params, jnp.asarray(src[None]), parsed, jnp.array([True]), jnp.asarray(ex["positions"][:1, j]))
      got = np.asarray(obs.positions_3bn[:, 0])[:, np.asarray(obs.valid_bn[0])]
      np.testing.assert_array_equal(got, ex["positions"][:, j:j + len(chunk)])
      r += 1
    # The tool calls in the SFT tokens are the grammar's encoding (one grammar for data and decoding).
    text = tok.decode(ex["tokens"][ex["valid"]])
    for st in traj["steps"]:
      if st["action"] is not None:
        assert grammar.action_text(st["action"]) in text
  assert seen == {"crop", "clip"}
