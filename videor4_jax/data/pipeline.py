"""grain input pipelines: source -> shard -> shuffle/repeat -> featurize -> batch, with checkpointable state.

    ds = make_dataset(open_source("synthetic_textvideo", "train", data_dir=D), cfg, featurizer)
    it = iter(ds)                        # grain DatasetIterator; next(it) -> dict of numpy [B, ...] arrays
    save_iterator(ckpt_dir, step, it)    # Orbax; restore_iterator(ckpt_dir, step, it) resumes exactly

Order of operations and why:
  * **shard first**, on record indices: process p of P keeps records p, p+P, p+2P, ... (strided slice of the
    source), so the shards of one split are disjoint and cover it (no gaps: nothing is dropped);
  * **shuffle per shard** with `cfg.seed`, reshuffled every epoch (grain's MapDataset.shuffle().repeat());
  * **featurize** (a grain MapTransform, see features.py) turns a record into fixed-shape numpy arrays, so every
    batch has the static shapes of `PipelineConfig` whatever the record;
  * **batch** with drop_remainder when repeating (static batch), keep the remainder for a single epoch.
Everything is a pure function of (source, cfg, shard), so the stream is deterministic given the seed, and
the iterator state is (epoch, position) which Orbax saves through `grain.checkpoint` (ENV_NOTES section 4).
Worker processes (`cfg.worker_count > 0`, `mp_prefetch`) need absl flags parsed (ENV_NOTES pitfall 4):
`make_dataset` marks them parsed if nobody did, and transforms are module-level classes so they pickle.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import grain
import numpy as np


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Static shapes and iteration settings of one input pipeline.

  batch_size:        B per process.
  num_frames:        F frames sampled per video (the source view and the global view have F frames).
  source_hw:         (H_src, W_src) of the uint8 source view that rumination crops and clips from.
  (the global view's frame size is the processor's video rule, processing/processor.py, not a pipeline field)
  max_prompt_tokens: T_prompt, prompt length after padding (RL/eval rows).
  max_seq_tokens:    T, whole-conversation length after padding (SFT rows).
  obs_hw:            size of a re-encoded observation frame (crop output and clip frames alike).
  max_observations:  O, observation turns per SFT row (masked when fewer).
  max_clip_frames:   K, frames per clip observation.
  max_answers / max_answer_bytes: answers stored as padded UTF-8 bytes [B, max_answers, max_answer_bytes].
  padding_side:      "left" (default; generation appends on the right) or "right", for prompts.
  seed:              shuffle seed; num_epochs None repeats forever.
  worker_count:      grain worker processes (0 = in-process); read_threads / prefetch: host threads and buffer.
  """
  batch_size: int = 8
  num_frames: int = 8
  source_hw: tuple[int, int] = (224, 224)
  max_prompt_tokens: int = 256
  max_seq_tokens: int = 512
  obs_hw: tuple[int, int] = (56, 56)
  max_observations: int = 2
  max_clip_frames: int = 4
  max_answers: int = 4
  max_answer_bytes: int = 64
  padding_side: str = "left"
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  worker_count: int = 0
  read_threads: int = 2
  prefetch: int = 4

  def __post_init__(self):
    for f in ("source_hw", "obs_hw"):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    if self.batch_size < 1:
      raise ValueError(f"PipelineConfig: batch_size={self.batch_size} must be >= 1")
    if self.num_frames < 2 or self.num_frames % 2:
      raise ValueError(f"PipelineConfig: num_frames={self.num_frames} must be even (temporal patch 2)")
    for f in ("obs_hw",):
      if any(s % 28 for s in getattr(self, f)):
        raise ValueError(f"PipelineConfig: {f}={getattr(self, f)} sides must be multiples of 28")
    if self.padding_side not in ("left", "right"):
      raise ValueError(f"PipelineConfig: padding_side={self.padding_side!r}; expected 'left' or 'right'")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"PipelineConfig: num_epochs={self.num_epochs} must be None (forever) or >= 1")


def open_source(name_or_dir: str, split: str, *, data_dir: str | None = None):
  """Random-access source of a built dataset: a registered name (with `data_dir`) or a version directory."""
  import tensorflow_datasets as tfds  # heavy import, only when reading

  if os.path.isdir(name_or_dir):
    return tfds.builder_from_directory(name_or_dir).as_data_source(split)
  import videor4_jax.data.builders  # noqa: F401  (registers the project's builders by name)
  return tfds.data_source(name_or_dir, split=split, data_dir=data_dir)


def shard_indices(n: int, shard: grain.sharding.ShardOptions) -> range:
  """Record indices of shard `shard.shard_index` of `shard.shard_count`: strided, disjoint, covering range(n)."""
  if not 0 <= shard.shard_index < shard.shard_count:
    raise ValueError(f"shard_index={shard.shard_index} outside [0, shard_count={shard.shard_count})")
  r = range(shard.shard_index, n, shard.shard_count)
  if shard.drop_remainder:  # equal shard sizes for lock-step multi-host eval
    r = r[: n // shard.shard_count]
  return r


def _ensure_absl_flags_parsed() -> None:
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain 0.2.18 workers read an absl flag (google/grain#1355)


def make_dataset(source: Any, cfg: PipelineConfig, featurizer: grain.transforms.Map | None,
                 shard: grain.sharding.ShardOptions | None = None,
                 rows: tuple[int, int] | None = None) -> grain.IterDataset:
  """The batched, featurized, sharded stream; `shard` defaults to this JAX process's shard.

  rows=(lo, hi): multi-process training. `cfg.batch_size` is then the *global* batch B: the whole split is
  shuffled and cut into global batches the same way whatever the process count, and this process reads and
  featurizes only rows [lo, hi) of each (its devices' block; `parallel.distributed.process_rows`). The global
  batch, hence training, does not depend on the number of processes; record sharding (`shard`) would give every
  process count a different global batch. Needs `shard=grain.sharding.NoSharding()` and a repeating stream.
  """
  if rows is not None:
    lo, hi = rows
    if not 0 <= lo < hi <= cfg.batch_size:
      raise ValueError(f"make_dataset: rows={rows} must satisfy 0 <= lo < hi <= batch_size={cfg.batch_size}")
    if shard is None or shard.shard_count != 1:
      raise ValueError("make_dataset: rows=(lo, hi) selects this process's rows of each global batch; pass "
                       "shard=grain.sharding.NoSharding() (records are not sharded as well)")
    if cfg.num_epochs is not None:
      raise ValueError("make_dataset: rows=(lo, hi) needs a repeating stream (num_epochs=None)")
  shard = shard if shard is not None else grain.sharding.ShardByJaxProcess()
  ds = grain.MapDataset.source(source)
  idx = shard_indices(len(ds), shard)
  if len(idx) == 0:
    raise ValueError(f"make_dataset: shard {shard.shard_index}/{shard.shard_count} of a {len(ds)}-record "
                     "source is empty")
  ds = ds[idx.start:idx.stop:idx.step]
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  repeat = cfg.num_epochs is None or cfg.num_epochs > 1
  if repeat:
    ds = ds.repeat(cfg.num_epochs)
  batch = cfg.batch_size
  if rows is not None:
    ds, batch = GlobalBatchRows(ds, cfg.batch_size, *rows), rows[1] - rows[0]
  if featurizer is not None:
    ds = ds.map(SkipBadRecords(featurizer))
  ds = ds.batch(batch, drop_remainder=repeat, batch_fn=stack_batch)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch))
  if cfg.worker_count > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
  return it_ds


class GlobalBatchRows(grain.MapDataset):
  """Rows [lo, hi) of every consecutive block of `global_batch` records of `parent`: element k is parent record
  (k // n) * global_batch + lo + k % n, n = hi - lo. Only those records are read (and featurized) here."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, lo: int, hi: int):
    super().__init__(parent)
    self._global, self._lo, self._n = global_batch, lo, hi - lo

  def __len__(self) -> int:
    return (len(self._parent) // self._global) * self._n

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    j, r = divmod(index, self._n)
    return self._parent[j * self._global + self._lo + r]

  def __str__(self) -> str:
    return f"GlobalBatchRows(global_batch={self._global}, rows=[{self._lo}, {self._lo + self._n}))"


log = logging.getLogger(__name__)
SKIPPED: dict[str, str] = {}   # qid -> reason, for the records this process skipped


class SkipBadRecords(grain.transforms.Map):
  """Runs the featurizer; a record it cannot featurize (undecodable video, bad annotation, too long) is skipped
  with a warning naming it and counted in `SKIPPED`, so a long run never dies on one bad sample."""

  def __init__(self, featurizer):
    self.featurizer = featurizer

  def map(self, row):
    try:
      return self.featurizer.map(row)
    except Exception as e:  # noqa: BLE001 - any per-record failure is a skip, never a crash
      qid = row.get("qid", b"?") if isinstance(row, dict) else "?"
      qid = qid.decode("utf-8", "replace") if isinstance(qid, bytes) else str(qid)
      SKIPPED[qid] = f"{type(e).__name__}: {e}"
      log.warning("skipping record %s (%d skipped so far): %s: %s", qid, len(SKIPPED), type(e).__name__,
                  str(e)[:300])
      return None


def stack_batch(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks featurized rows key by key; every row must have the same static shapes (a clear error if not).

  A row skipped by `SkipBadRecords` (None) is filled with a copy of a good row of the batch so shapes stay
  static; `row_ok [B]` is False there (evaluation ignores those rows; training sees a repeated example).
  """
  ok = np.array([r is not None for r in rows])
  if not ok.any():
    raise ValueError(f"stack_batch: all {len(rows)} records of a batch failed to featurize (see the warnings "
                     "above); the data set is unusable as configured")
  good = [r for r in rows if r is not None]
  rows = [r if r is not None else good[0] for r in rows]
  out = {"row_ok": ok}
  for k in rows[0]:
    shapes = {np.shape(r[k]) for r in rows}
    if len(shapes) != 1:
      raise ValueError(f"stack_batch: field {k!r} has differing shapes {sorted(shapes)} within one batch; "
                       "the featurizer must pad to the static shapes of PipelineConfig")
    out[k] = np.stack([r[k] for r in rows])
  return out


def save_iterator(ckpt_dir: str, step: int, it: grain.DatasetIterator) -> None:
  """Saves the iterator state with Orbax (the same Composite entry a train-state checkpoint would carry)."""
  import orbax.checkpoint as ocp

  with ocp.CheckpointManager(os.path.abspath(ckpt_dir)) as mgr:
    mgr.save(step, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()


def restore_iterator(ckpt_dir: str, step: int, it: grain.DatasetIterator) -> grain.DatasetIterator:
  """Restores `it` (a fresh iterator over the same dataset) in place to the state saved at `step`."""
  import orbax.checkpoint as ocp

  with ocp.CheckpointManager(os.path.abspath(ckpt_dir)) as mgr:
    mgr.restore(step, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(it)))
  return it
