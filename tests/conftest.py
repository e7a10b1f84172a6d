"""Test harness: 8 fake CPU devices for the sharding tests, absl flags parsed for grain workers, one persistent
XLA compilation cache for the session."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain 0.2.18 multiprocess workers read an absl flag (google/grain#1355)

import pytest  # noqa: E402

# One compilation cache for the whole session, in-process tests and the train.py subprocesses alike
# (train.py reads VIDEOR4_COMPILATION_CACHE): many tests rebuild the same steps and rollout with the same shapes
# (a new Runner per run, a new jit per fixture), and each rebuild compiled them again. Entries are keyed by the
# program, so a cached executable is the one a compile would produce; a fresh directory per session, removed at
# exit, so no test depends on an earlier session.
_XLA_CACHE = tempfile.mkdtemp(prefix="videor4_tests_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE, True)
os.environ["VIDEOR4_COMPILATION_CACHE"] = _XLA_CACHE
from videor4_jax.train import xla_cache  # noqa: E402

xla_cache.enable(_XLA_CACHE)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory):
  """A Qwen2.5-VL-7B-Instruct processor directory with the real vocabulary (tests/qwen_real.py), built once."""
  from qwen_real import make_tokenizer_dir
  return make_tokenizer_dir(str(tmp_path_factory.mktemp("qwen7b_processor")))
