"""Settings of the rumination loop (static shapes of the jitted rollout)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Every field fixes a static shape or a trace-time constant of the rollout graph.

  max_steps:        R, rumination steps (decode segments); the last one must answer.
  max_step_tokens:  T, tokens one segment may generate before it is cut (the row then fails).
  cache_len:        S, KV-cache slots per row: prompt + R * (T + observation length) must fit.
  obs_hw:           (h, w) pixels of a re-encoded observation frame (crop output and clip frames alike).
  max_clip_frames:  K, most frames one clip may select (Pixel-Reasoner uses 8).
  crop_margin:      normalized padding added on each side of a crop box (Pixel-Reasoner: 0.1).
  crop_min_px:      a crop smaller than this in source pixels (either side) is an error.
  clip_seconds_per_group: temporal M-RoPE scale of a clip observation (seconds per 2-frame group).
  compact_rows:     run a step's observation turn (vision tower + prefill) only on the rows that called a tool,
                    gathered into chunks of about B/4 rows (one-group outcomes in narrower chunks), and the end of
                    a decode segment, once at most B/4 rows still run, on those rows only. Off when the rows are
                    sharded over devices: the gather by a traced row index would then move KV-cache rows between
                    devices. Runs set it from their mesh (`from_config`), not by hand.
  """
  max_steps: int = 4
  max_step_tokens: int = 48
  cache_len: int = 1024
  obs_hw: tuple[int, int] = (56, 56)
  max_clip_frames: int = 4
  crop_margin: float = 0.0
  crop_min_px: int = 8
  clip_seconds_per_group: float = 1.0
  temperature: float = 1.0
  top_p: float = 1.0
  compact_rows: bool = True

  def __post_init__(self):
    if self.max_steps < 1 or self.max_step_tokens < 1:
      raise ValueError(f"max_steps={self.max_steps} and max_step_tokens={self.max_step_tokens} must be >= 1")
    if self.max_clip_frames < 1:
      raise ValueError(f"max_clip_frames={self.max_clip_frames} must be >= 1")
    if any(s % 28 for s in self.obs_hw):
      raise ValueError(f"obs_hw={self.obs_hw}: both sides must be multiples of 28 (patch 14 x merge 2)")
    object.__setattr__(self, "obs_hw", tuple(self.obs_hw))


def from_config(rollout: dict, row_shards: int) -> RolloutConfig:
  """The run's RolloutConfig from the config's `rollout` block and the number of devices the rollout's rows are
  split over (the mesh's data x fsdp). `compact_rows` there is "auto" (or absent): on for unsharded rows, off
  for sharded ones; True with sharded rows is an error (it would move KV-cache rows between devices)."""
  d = dict(rollout)
  compact = d.pop("compact_rows", "auto")
  if compact == "auto":
    compact = row_shards == 1
  elif compact is True and row_shards > 1:
    raise ValueError(f"config.rollout.compact_rows=True but the rollout's rows are split over {row_shards} devices "
                     f"(mesh data x fsdp): compacting them would gather KV-cache rows across devices; set it to "
                     f"'auto' (off here) or False")
  elif compact not in (True, False):
    raise ValueError(f"config.rollout.compact_rows={compact!r}; expected 'auto', True or False")
  return RolloutConfig(**d, compact_rows=bool(compact))
