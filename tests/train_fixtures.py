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


def train_py_flags(cfg, workdir, checkpoint_every: int):
  """train.py command-line flags that reproduce `small_config`'s drp_sft -> rl_d run (one device, beta 0.04,
  every step logged) in `workdir`, with periodic checkpoints every `checkpoint_every` steps."""
  out = [f"--workdir={workdir}", "--config.curriculum=drp_sft,rl_d", "--config.mesh_shape=(1,1,1)"]
  for k in ("data_dir", "num_train", "num_validation", "num_test"):
    out.append(f"--config.data.{k}={cfg.data[k]}")
  for k in ("max_steps", "max_step_tokens", "cache_len"):
    out.append(f"--config.rollout.{k}={cfg.rollout[k]}")
  for st in ("drp_sft", "rl_d"):
    out += [f"--config.stages.{st}.steps={cfg.stages[st].steps}", f"--config.stages.{st}.batch_size=2"]
  out += ["--config.pipeline.max_seq_tokens=512", "--config.grpo.num_generations=2", "--config.grpo.beta=0.04",
          "--config.log_every=1", f"--config.checkpoint_every={checkpoint_every}", "--config.eval.num_examples=0"]
  return out
