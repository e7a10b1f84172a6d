"""Reading a `jax.profiler` trace of an XLA:CPU program: per-op thread time, and wall time attributed to the ops.

XLA:CPU runs a program's ops (thunks) on a pool of threads, a few of them at once when they are independent, and
one op may itself run on several threads. Summing each op's span therefore counts thread time, not wall time.
`wall_attributed` splits every instant of the trace among the ops running at that instant (equally), so its figures
add up to the traced wall time, and counts the instants when no op runs at all (dispatch, loop control: `idle`).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

# Spans that wrap ops (the executor, loops, conditionals, the thread pool's own bookkeeping), not ops.
_WRAPPERS = r"^(Thunk|\$|while|cond|conditional|call|Pjit|Common|PjRt|Threadpool|Slinky|end:)"


def trace_events(trace_dir: str) -> list:
  """The complete ('X') events of the newest perfetto trace under `trace_dir`."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    ev = json.load(f)
  ev = ev["traceEvents"] if isinstance(ev, dict) else ev
  return [e for e in ev if e.get("ph") == "X"]


def op_events(trace_dir: str) -> list:
  """The events of XLA ops (no wrappers)."""
  return [e for e in trace_events(trace_dir) if not re.match(_WRAPPERS, e.get("name", ""))]


def xla_op_times(trace_dir: str, steps: int) -> collections.Counter:
  """Thread-ms per step by XLA op name, numeric suffix dropped (`ynn_fusion.12` -> `ynn_fusion`)."""
  out = collections.Counter()
  for e in op_events(trace_dir):
    out[re.sub(r"\.\d+$", "", e["name"])] += e.get("dur", 0) / 1e3 / steps
  return out


def hlo_op_names(hlo_text: str) -> dict:
  """Instruction name -> its `op_name` metadata (the JAX source path), from a compiled program's HLO text."""
  return {m.group(1): m.group(2) for m in re.finditer(r'%([\w.\-]+) = [^\n]*?op_name="([^"]+)"', hlo_text)}


def wall_attributed(events: list, category, units: float) -> tuple[collections.Counter, float]:
  """(category -> wall ms per unit, idle ms per unit): each instant split equally among the ops running then.
  `category(event) -> str`; `units`: what the figures are per (steps, calls)."""
  edges = []
  for i, e in enumerate(events):
    edges += [(e["ts"], 1, i), (e["ts"] + e["dur"], -1, i)]
  edges.sort(key=lambda x: (x[0], x[1]))
  names = [category(e) for e in events]
  out, idle, running, last = collections.Counter(), 0.0, set(), None
  for t, kind, i in edges:
    if last is not None and t > last:
      if running:
        share = (t - last) / len(running)
        for j in running:
          out[names[j]] += share
      else:
        idle += t - last
    (running.add if kind == 1 else running.discard)(i)
    last = t
  scale = 1e3 * units
  return collections.Counter({k: v / scale for k, v in out.items()}), idle / scale
