"""A small training config on the synthetic task (built once per session) for Runner / train.py tests."""
import sys

CONFIGS = "configs"


def small_config(data_dir, **stage_steps):
  """configs/tiny.py shrunk for tests: 16 training videos, short rollouts, two cheap stages by default."""
  sys.path.insert(0, CONFIGS)
  import tiny
  c = tiny.get_config()
  c.data.data_dir = str(data_dir)
  c.data.num_train, c.data.num_validation, c.data.num_test = 16, 2, 4
  c.rollout.max_steps, c.rollout.max_step_tokens, c.rollout.cache_len = 2, 48, 512
  c.pipeline.max_seq_tokens = 512
  c.grpo.num_generations = 2
  for name, st in c.stages.items():
    st.steps = stage_steps.get(name, 2)
    st.batch_size = 2
    st.warmup_steps = 1
  c.mesh_shape = (2, 1, 1)    # exercise the sharded path on 2 of the 8 test devices
  c.log_every = 1
  c.checkpoint_every = 2
  c.eval.num_examples = 0
  c.eval.batch_size = 4
  return c
