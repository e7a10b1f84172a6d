"""Run as a script: loads an HF directory onto all devices with the run's shardings and prints, as JSON, the peak
growth of the process's anonymous resident memory during the load and the bytes of the loaded parameters
(tests/test_sharded_loading.py)."""
import json
import sys


def anon_bytes() -> int:
  """Anonymous resident memory (RssAnon): the process's own allocations. File-backed pages of the memory-mapped
  safetensors files are page cache the kernel may drop, not a copy held by the process, so they are not counted."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("RssAnon:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler:
  """Samples anon_bytes() every millisecond in a thread: the peak during a block."""

  def __init__(self):
    import threading
    self.peak, self._stop = anon_bytes(), threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, anon_bytes())
      self._stop.wait(0.001)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, anon_bytes())


def main(path: str):
  import jax
  import jax.numpy as jnp
  import videor4_jax
  from videor4_jax.parallel.sharding import make_mesh
  mesh = make_mesh((1, -1, 1))                           # fsdp over every device
  jax.block_until_ready(jnp.zeros(8) + 1)               # backend up before the baseline
  before = anon_bytes()
  with PeakSampler() as sampler:
    _, params = videor4_jax.from_pretrained(path, jnp.float32, mesh=mesh)
    jax.block_until_ready(params)
  peak = sampler.peak
  leaves = jax.tree_util.tree_leaves_with_path(params)
  # Per parameter: the global shape and the shapes of the shards this process's devices hold.
  shards = {jax.tree_util.keystr(k): {"shape": list(x.shape), "dtype": str(x.dtype),
                                      "shard_shapes": [list(s.data.shape) for s in x.addressable_shards],
                                      "expected_shard_shape": list(x.sharding.shard_shape(x.shape))}
            for k, x in leaves}
  print(json.dumps({"growth_bytes": peak - before, "param_bytes": int(sum(x.nbytes for _, x in leaves)),
                    "devices": jax.device_count(), "params": shards}))


if __name__ == "__main__":
  main(sys.argv[1])
