"""What every bench shares: equal thread counts for XLA and torch, ABAB timing, medians with spread, and the
record of where and when a figure was measured (CPU model, load average before / after, commit, versions).

Threads. XLA:CPU sizes its thread pools (the intra-op Eigen pool that runs the parallel parts of a kernel, and
the PjRt client pool) from the environment variable `NPROC` (read when the CPU client is created, so before the
first computation; `PJRT_NPROC` takes precedence over it), else from the schedulable CPUs. torch takes
`torch.set_num_threads`. `set_threads(n)` sets both, and `OMP_NUM_THREADS` for any OpenMP library loaded later;
call it before JAX runs anything.

Isolation. Sides that allocate and free gigabytes per call (the train steps at full size) disturb each other in
one process: on this VM, memory that one side just freed costs the other side 2-8 s of kernel time per step to
fault in again (docs/BENCHMARKS.md). `Worker` runs one side in a process of its own, and `alternate_workers`
alternates the workers' calls ABAB as `alternate` does, each call timed inside its worker.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


def set_threads(n: int | None = None) -> int:
  """Gives XLA and torch the same number of threads (default: every CPU of this process). Returns n."""
  n = n or len(os.sched_getaffinity(0))
  os.environ.pop("PJRT_NPROC", None)
  os.environ["NPROC"] = str(n)
  os.environ["OMP_NUM_THREADS"] = str(n)
  try:
    import torch
    torch.set_num_threads(n)
  except ImportError:
    pass
  return n


def xla_threads() -> int:
  """Threads of this process named by XLA:CPU's intra-op pool (counted after a computation ran)."""
  names = []
  for tid in os.listdir("/proc/self/task"):
    try:
      with open(f"/proc/self/task/{tid}/comm") as f:
        names.append(f.read().strip())
    except OSError:
      pass
  return sum(1 for n in names if "XLAEigen" in n)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def commit() -> str:
  """HEAD of the repository, with `+dirty` when tracked files differ from it."""
  def git(*a):
    return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, check=False).stdout.strip()
  head = git("rev-parse", "--short", "HEAD") or "unknown"
  return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def loadavg() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def machine(threads: int | None = None, **extra) -> dict:
  """Where and when: host, CPU model and count, load average now, commit, UTC time, versions."""
  import jax
  info = dict(host=platform.node(), cpu_model=cpu_model(), cpus=os.cpu_count(), loadavg=loadavg(),
              commit=commit(), utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
              python=platform.python_version(), jax=jax.__version__, backend=jax.default_backend())
  if threads is not None:
    info.update(threads=threads, xla_nproc_env=os.environ.get("NPROC"))
  try:
    import torch
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  return dict(info, **extra)


def spread(xs) -> dict:
  """Median and spread of a list of seconds: every run, min, max, quartiles."""
  xs = sorted(xs)
  q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
  return dict(median=round(statistics.median(xs), 4), min=round(xs[0], 4), max=round(xs[-1], 4),
              q25=round(q[0], 4), q75=round(q[2], 4), n=len(xs))


def timed(fn):
  """(wall seconds, process CPU seconds, result) of one call; `fn` must block until its work is done."""
  t0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return time.perf_counter() - t0, time.process_time() - c0, out


def alternate(sides: dict, runs: int) -> dict:
  """Times `runs` calls of each side, alternating ABAB... so that load from other jobs hits every side alike.

  sides: name -> zero-argument callable that blocks until done. Returns name -> {wall: spread, cpu: spread,
  wall_s: [runs], cpu_s: [runs]} (CPU = this process's CPU time: every thread of the side, less disturbed by
  other processes than wall time, but it counts spinning threads).
  """
  return _alternate({k: (lambda fn=fn: timed(fn)[:2]) for k, fn in sides.items()}, runs)


def _alternate(timers: dict, runs: int) -> dict:
  """The ABAB loop of `alternate` / `alternate_workers`: timers are name -> zero-argument callable returning
  (wall s, CPU s) of one call."""
  wall = {k: [] for k in timers}
  cpu = {k: [] for k in timers}
  for _ in range(runs):
    for name, timer in timers.items():
      w, c = timer()
      wall[name].append(w)
      cpu[name].append(c)
  return {k: dict(wall=spread(wall[k]), cpu=spread(cpu[k]), wall_s=[round(x, 4) for x in wall[k]],
                  cpu_s=[round(x, 4) for x in cpu[k]]) for k in timers}


# glibc malloc settings of a worker process. "default": glibc's own. "retain": one arena, no mmap, no trimming, so
# memory a step frees stays in the process for the next step instead of going back to the kernel (which on this VM
# reports it to the host: faulting it in again cost 1-8 s per full-size train step), at the price of one arena for
# every thread (quick-size steps 18-26% slower on both sides); docs/BENCHMARKS.md.
ALLOCATOR_ENV = {"retain": {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                                             "glibc.malloc.trim_threshold=4294967295"},
                 "default": {}}

MARK = "@@bench "     # a worker's protocol lines on stdout start with this; anything else it prints is passed over


def serve(fn, info: dict):
  """A worker's loop (the child side of `Worker`): reports `info` (JSON) once, then one timed call of `fn` per
  "run" line on stdin, each reported as {"wall": s, "cpu": s}; returns at end of input."""
  print(MARK + json.dumps(info), flush=True)
  for line in sys.stdin:
    if line.strip() == "run":
      wall, cpu, _ = timed(fn)
      print(MARK + json.dumps(dict(wall=wall, cpu=cpu)), flush=True)


class Worker:
  """One bench side in its own process: `argv` runs `serve` after its setup (compilation, warm-up). `info` is
  what it reported when ready; `run()` times one call there and returns (wall, cpu)."""

  def __init__(self, argv: list[str], name: str, env: dict | None = None):
    self.name = name
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                 env=None if env is None else dict(os.environ, **env))
    self.info = self._read()

  def _read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith(MARK):
        return json.loads(line[len(MARK):])
      print(f"[{self.name}] {line}", end="", flush=True)     # the worker's own progress lines
    raise RuntimeError(f"bench worker {self.name!r} exited with {self.proc.wait()} before reporting (its stderr is "
                       f"above)")

  def run(self) -> tuple[float, float]:
    self.proc.stdin.write("run\n")
    self.proc.stdin.flush()
    r = self._read()
    return r["wall"], r["cpu"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def alternate_workers(workers: dict, runs: int, warmup_rounds: int = 1) -> dict:
  """`alternate` over `Worker`s (name -> Worker): ABAB..., each call timed in its own process, after
  `warmup_rounds` untimed rounds in the same order (a worker's first calls after the others' setup find its
  caches and freed memory gone)."""
  for _ in range(warmup_rounds):
    for w in workers.values():
      w.run()
  return _alternate({k: w.run for k, w in workers.items()}, runs)


def write_json(res: dict, name: str, out: str | None = None) -> str:
  import json
  path = out or os.path.join(RESULTS, name)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(res, f, indent=2)
  return path
