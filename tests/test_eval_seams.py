"""The eval loop's seams: the single-pass prompt shift (the baseline of the rumination gap), and accuracy and golds
per question under a scripted policy whose right and wrong answers are known."""
import jax
import numpy as np
import pytest

from scripted_policy import Tagged, row_tag, scripted_trajectory
from videor4_jax.data import pipeline
from videor4_jax.data.builders.synthetic_textvideo.builder import SyntheticTextvideo
from videor4_jax.data.features import RlFeaturizer
from videor4_jax.eval import loop
from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig
from videor4_jax.processing import chat
from videor4_jax.processing.processor import Processor
from videor4_jax.processing.tokenizer import padded_vocab_size
from videor4_jax.rumination.config import RolloutConfig
from videor4_jax.rumination.env import make_env

PROC = Processor.from_config(dict(video_min_pixels=56 * 56, video_max_pixels=56 * 56, image_min_pixels=28 * 28,
                                  image_max_pixels=112 * 112), system_prompt=chat.TINY_SYSTEM_PROMPT)
# batch 3 over 4 questions: the last batch is padded (its repeated rows must not become questions).
CFG = pipeline.PipelineConfig(batch_size=3, num_frames=8, source_hw=(224, 224), max_prompt_tokens=160,
                              max_seq_tokens=512, obs_hw=(112, 112), max_observations=2, max_clip_frames=4,
                              padding_side="left", worker_count=0)
ROLLOUT = RolloutConfig(max_steps=2, max_step_tokens=8, cache_len=320, obs_hw=(112, 112), max_clip_frames=4)
CORRECT = {0, 3}         # record indices the scripted policy answers right; the others get a wrong answer


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  SyntheticTextvideo(config="tiny", data_dir=d, file_format="array_record").download_and_prepare()
  return pipeline.open_source("synthetic_textvideo/tiny", "test", data_dir=d)


@pytest.fixture(scope="module")
def env():
  tok = PROC.tokenizer
  config = ModelConfig(text=TextConfig(vocab_size=padded_vocab_size(tok), hidden_size=32, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                       mrope_section=(2, 3, 3)),
                       vision=VisionConfig(depth=1, hidden_size=32, intermediate_size=32, num_heads=2,
                                           out_hidden_size=32, fullatt_block_indexes=(0,)),
                       image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id)
  return make_env(config, ROLLOUT, tok, num_frames=CFG.num_frames)


def test_append_to_prompts_moves_left_padded_prompts_and_appends():
  ids = np.array([[0, 0, 0, 0, 7, 8], [0, 0, 5, 6, 7, 8]], np.int32)
  mask = (ids != 0).astype(np.int32)
  extra = np.arange(12).reshape(2, 6)
  out = loop.append_to_prompts(dict(input_ids=ids, attention_mask=mask, other=extra), [3, 4])
  np.testing.assert_array_equal(out["input_ids"], [[0, 0, 7, 8, 3, 4], [5, 6, 7, 8, 3, 4]])
  np.testing.assert_array_equal(out["attention_mask"], [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
  # Three more tokens would push the second prompt's first token out of the window: refused, not cut.
  with pytest.raises(ValueError, match="max_prompt_tokens"):
    loop.append_to_prompts(dict(input_ids=ids, attention_mask=mask), [3, 4, 9])
  assert out["other"] is extra
  same = loop.append_to_prompts(dict(input_ids=ids, attention_mask=mask), [])
  np.testing.assert_array_equal(same["input_ids"], ids)


def _expected(source):
  """Per qid: (golds, accuracy of the scripted policy), read from the records themselves."""
  return {source[i]["qid"].decode(): ([a.decode() for a in source[i]["answers"]], float(i in CORRECT))
          for i in range(len(source))}


@pytest.mark.parametrize("mode", loop.MODES)
def test_eval_scores_a_scripted_policy_per_question(source, env, mode, monkeypatch):
  """A scripted policy answers records 0 and 3 with their gold and the others wrongly (after a decoy answer
  that a tool call supersedes). Per qid, the results hold the record's golds and accuracy 1 or 0 exactly; in
  single-pass mode every prompt the policy saw ends with the answer prefix."""
  tok = PROC.tokenizer
  tagged = Tagged(source)
  prefix = tok.encode(loop.SINGLE_PASS_PREFIX)
  seen = []

  def scripted_make_rollout_fn(run_env, **kw):
    assert run_env.rollout.max_steps == (1 if mode == "single_pass" else ROLLOUT.max_steps)

    def fn(params, inputs, key):
      seen.append(np.asarray(inputs["input_ids"]))
      texts = []
      for ids in inputs["input_ids"]:
        i = row_tag(tok, ids)
        answer = tagged.golds(i)[0] if i in CORRECT else "nope"
        texts.append(f"{answer}</answer><|im_end|>" if mode == "single_pass" else
                     f"<think>a</think><answer>decoy</answer><tool_call>{{}}</tool_call>"
                     f"<think>b</think><answer>{answer}</answer><|im_end|>")
      return scripted_trajectory(tok, inputs["input_ids"], inputs["attention_mask"], texts,
                                 cache_len=run_env.rollout.cache_len, max_steps=run_env.rollout.max_steps)
    return fn

  monkeypatch.setattr(loop, "make_rollout_fn", scripted_make_rollout_fn)
  res = loop.evaluate(env, None, PROC, tagged, CFG, mode=mode, progress=False)
  want = _expected(source)
  got = {q["qid"]: (q["golds"], q["accuracy"]) for q in res["questions"]}
  assert got == want
  assert res["summary"]["num_questions"] == 4 and res["summary"]["accuracy"] == 0.5
  # Accuracy per record kind, from the records' own `kind`: the forgetting a curriculum stage can cause shows there.
  kinds = {source[i]["qid"].decode(): source[i]["kind"].decode() for i in range(len(source))}
  assert {q["qid"]: q["kind"] for q in res["questions"]} == kinds
  assert len(set(kinds.values())) >= 2, kinds        # the tiny split has both kinds: the split below is tested
  for kind in set(kinds.values()):
    mine = [float(i in CORRECT) for i in range(len(source)) if source[i]["kind"].decode() == kind]
    assert res["summary"][f"accuracy_{kind}"] == pytest.approx(np.mean(mine)), kind
  assert all(q["anls"] == q["accuracy"] for q in res["questions"])
  ends = {tuple(row[-len(prefix):]) == tuple(prefix) for batch in seen for row in batch}
  assert ends == {mode == "single_pass"}


def test_single_pass_rollout_continues_the_prompt_after_the_prefix(source, env):
  """The real greedy rollout in single-pass mode: each row's recorded tokens up to its first generated token are
  its featurized prompt followed by `<think></think><answer>`, and no row calls a tool."""
  tok = PROC.tokenizer
  from videor4_jax.model.vlm import init_params
  params = init_params(env.config, jax.random.key(0))
  res, kept = loop.evaluate(env, params, PROC, Tagged(source), CFG, mode="single_pass", progress=False,
                            keep_batches=True)
  assert res["summary"]["num_questions"] == 4 and res["summary"]["rumination_rate"] == 0
  prefix = tok.encode(loop.SINGLE_PASS_PREFIX)
  featurize = RlFeaturizer(CFG, PROC)
  checked = 0
  for batch, traj, b in kept:
    for row in range(b):
      tokens, gen = np.asarray(traj.tokens[row]), np.flatnonzero(np.asarray(traj.loss_mask[row]) > 0)
      assert len(gen) > 0 and not np.asarray(traj.actions.called[row]).any()
      plain = featurize.map(Tagged(source)[row_tag(tok, batch["input_ids"][row])])
      prompt = plain["input_ids"][plain["attention_mask"] > 0].tolist()
      assert tokens[:gen[0]].tolist() == prompt + prefix
      checked += 1
  assert checked == 4
