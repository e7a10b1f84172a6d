"""Test harness: 8 fake CPU devices for the sharding tests, absl flags parsed for grain workers."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain 0.2.18 multiprocess workers read an absl flag (google/grain#1355)
