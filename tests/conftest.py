"""Test harness: 8 fake CPU devices for the sharding tests, absl flags parsed for grain workers."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain 0.2.18 multiprocess workers read an absl flag (google/grain#1355)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory):
  """A Qwen2.5-VL-7B-Instruct processor directory with the real vocabulary (tests/qwen_real.py), built once."""
  from qwen_real import make_tokenizer_dir
  return make_tokenizer_dir(str(tmp_path_factory.mktemp("qwen7b_processor")))
