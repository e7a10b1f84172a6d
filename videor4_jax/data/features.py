"""Featurizers: grain MapTransforms that turn one stored row into fixed-shape numpy arrays.

Field conventions of a featurized RL/eval row (batched by pipeline.stack_batch to [B, ...]):
  qid            uint8 [max_answer_bytes]                      the question id, UTF-8, zero padded
  answers        uint8 [max_answers, max_answer_bytes]         gold answers, UTF-8, zero padded
  num_answers    int32 []                                      how many rows of `answers` are real
(RL/eval rows add question uint8 [256] and kind uint8 [16], the record's text and kind, for reports)
(the video and prompt stages append input_ids, mm_token_type_ids, attention_mask, pixel_values_videos,
video_grid_thw and source_frames; see the stage functions below.)
Strings travel as padded bytes so a batch is a plain dict of arrays; `decode_strings` reverses it.
"""
from __future__ import annotations

import functools

import numpy as np
import grain

from videor4_jax.data.pipeline import PipelineConfig


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


def encode_strings(strings: list[str], rows: int, length: int, *, where: str = "") -> tuple[np.ndarray, int]:
  """UTF-8 strings -> (uint8 [rows, length] zero padded, count). Too long or too many is an error, not a cut,
  because a truncated gold answer would silently score a correct prediction as wrong."""
  out = np.zeros((rows, length), np.uint8)
  if len(strings) > rows:
    raise ValueError(f"{where}: {len(strings)} strings > max {rows} (raise PipelineConfig.max_answers)")
  for i, s in enumerate(strings):
    b = s.encode("utf-8")
    if len(b) > length or b"\x00" in b:
      raise ValueError(f"{where}: string {s!r} is {len(b)} bytes (max {length}) or holds NUL "
                       "(raise PipelineConfig.max_answer_bytes)")
    out[i, :len(b)] = np.frombuffer(b, np.uint8)
  return out, len(strings)


def decode_strings(arr: np.ndarray, count: int | None = None) -> list[str]:
  """Inverse of encode_strings for one row: uint8 [rows, length] (or [length]) -> strings."""
  arr = np.asarray(arr)
  if arr.ndim == 1:
    return [bytes(arr).rstrip(b"\x00").decode("utf-8")]
  n = arr.shape[0] if count is None else int(count)
  return [bytes(r).rstrip(b"\x00").decode("utf-8") for r in arr[:n]]


def pad_tokens(ids: list[int] | np.ndarray, length: int, pad_id: int, side: str,
               *, where: str = "") -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [length], mask int32 [length]) padded on `side`; longer inputs are an error, never cut."""
  ids = np.asarray(ids, np.int32)
  if ids.shape[0] > length:
    raise ValueError(f"{where}: {ids.shape[0]} tokens > static length {length}")
  pad = length - ids.shape[0]
  out = np.full((length,), pad_id, np.int32)
  mask = np.zeros((length,), np.int32)
  sl = slice(pad, None) if side == "left" else slice(0, ids.shape[0])
  out[sl], mask[sl] = ids, 1
  return out, mask


class AnswersFeaturizer(grain.transforms.Map):
  """Row -> {qid, answers, num_answers}: the string side of every RL/eval batch (rewards and metrics)."""

  def __init__(self, cfg: PipelineConfig):
    self.cfg = cfg

  def map(self, row: dict) -> dict[str, np.ndarray]:
    qid = _text(row["qid"])
    where = f"row qid={qid!r}"
    answers, n = encode_strings([_text(a) for a in row["answers"]], self.cfg.max_answers,
                                self.cfg.max_answer_bytes, where=where + " field 'answers'")
    qid_arr, _ = encode_strings([qid], 1, self.cfg.max_answer_bytes, where=where + " field 'qid'")
    return {"qid": qid_arr[0], "answers": answers, "num_answers": np.int32(n)}


@functools.lru_cache(maxsize=None)
def _jitted_positions():
  import jax
  from videor4_jax.model.rope_index import mrope_positions
  return jax.jit(mrope_positions, static_argnums=0)


QUESTION_BYTES = 256   # the question text travels with RL/eval batches (traces and reports)
KIND_BYTES = 16        # the record's kind (deliberate / compositional / rl), a label for per-kind eval accuracy
MAX_VIDEO_ROW_BYTES = 1 << 30   # a bigger static video input per row is a setting mistake (a real directory's
#                                 default max_pixels, 12845056, gives 262144 patches = 1.2 GiB for 8 frames)


class _VideoPrompt:
  """Shared by the RL and SFT featurizers: decode + sample + views + global-view patches, and the prompt.

  The tokenizer, system prompt and video frame size all come from `processor` (processing/processor.py), the
  same object the rollout's environment is built from.
  """

  def __init__(self, cfg: PipelineConfig, processor):
    self.cfg, self.processor = cfg, processor
    self.max_video_patches = processor.vision.max_video_patches(cfg.num_frames)
    row_bytes = self.max_video_patches * 3 * processor.vision.temporal_patch_size * processor.vision.patch_size ** 2 * 4
    if row_bytes > MAX_VIDEO_ROW_BYTES:
      v = processor.vision
      raise ValueError(f"the processor's video_max_pixels={v.video_max_pixels} ({processor.source}) with "
                       f"num_frames={cfg.num_frames} makes a static video input of {self.max_video_patches} patches "
                       f"({row_bytes / 2**30:.1f} GiB per row); set --config.processor.video_max_pixels (e.g. "
                       f"{224 * 224} for 224x224 frames)")

  @property
  def tok(self):
    return self.processor.tokenizer

  def video(self, row: dict, where: str):
    """(source frames [F, H, W, 3] uint8, patches [max_video_patches, P] zero padded, grid [3]). The frame size
    is the processor's rule for this video (HF smart_resize with its video min/max pixels)."""
    from videor4_jax.processing import preprocess_video
    from videor4_jax.processing.video import load_video
    v = load_video(row["video"], num_frames=self.cfg.num_frames, source_hw=tuple(self.cfg.source_hw),
                   global_hw=self.processor.vision.video_frame_hw, name=where)
    pv, grid = preprocess_video(v["global_frames"], size=v["global_frames"].shape[1:3])
    if pv.shape[0] > self.max_video_patches:
      raise ValueError(f"{where}: {pv.shape[0]} video patches > static bound {self.max_video_patches}")
    padded = np.zeros((self.max_video_patches, pv.shape[1]), np.float32)
    padded[:pv.shape[0]] = pv
    return v["source_frames"], padded, grid[0].astype(np.int32)

  def video_tokens(self, grid) -> int:
    return int(np.prod(grid)) // self.processor.vision.merge_size ** 2

  def _video_spec(self) -> dict:
    v, cfg = self.processor.vision, self.cfg
    patch_dim = 3 * v.temporal_patch_size * v.patch_size ** 2
    return dict(video_pixels=((self.max_video_patches, patch_dim), np.float32), video_grid=((3,), np.int32),
                source_frames=((cfg.num_frames, *cfg.source_hw, 3), np.uint8))


class RlFeaturizer(_VideoPrompt, grain.transforms.Map):
  """Row -> prompt batch for the rollout / eval: answers + input_ids, attention_mask, mm_token_type_ids
  [max_prompt_tokens] (padded on cfg.padding_side), pixel_values_videos [N, 1176], video_grid_thw [3],
  source_frames [F, H, W, 3] uint8."""

  def map(self, row: dict) -> dict[str, np.ndarray]:
    from videor4_jax.processing import chat
    qid = _text(row["qid"])
    where = f"row qid={qid!r}"
    src, pv, grid = self.video(row, where)
    ids, types = chat.prompt_ids(self.tok, _text(row["question"]), self.video_tokens(grid),
                                 self.processor.system_prompt)
    input_ids, mask = pad_tokens(ids, self.cfg.max_prompt_tokens, self.tok.pad_id, self.cfg.padding_side,
                                 where=where)
    types_p, _ = pad_tokens(types, self.cfg.max_prompt_tokens, 0, self.cfg.padding_side, where=where)
    out = AnswersFeaturizer(self.cfg).map(row)
    q_text = _text(row["question"]).encode("utf-8")[:QUESTION_BYTES].decode("utf-8", errors="ignore")
    question, _ = encode_strings([q_text], 1, QUESTION_BYTES, where=where)
    # A row without a kind (hand-built rows) gets an empty label: it only groups eval accuracy (eval/loop.py).
    kind, _ = encode_strings([_text(row.get("kind", b""))], 1, KIND_BYTES, where=where + " field 'kind'")
    out.update(question=question[0], kind=kind[0], input_ids=input_ids, attention_mask=mask, mm_token_type_ids=types_p,
               pixel_values_videos=pv.astype(np.float32), video_grid_thw=grid, source_frames=src)
    return out

  def output_spec(self) -> dict[str, tuple[tuple[int, ...], type]]:
    """{field: (shape, dtype)} of one `map` output (a batch adds a leading row axis): what the AOT check
    (train/aot.py) compiles against without reading data. tests/test_recipe.py holds it equal to `map`."""
    cfg, t = self.cfg, self.cfg.max_prompt_tokens
    video = self._video_spec()
    return dict(qid=((cfg.max_answer_bytes,), np.uint8), answers=((cfg.max_answers, cfg.max_answer_bytes), np.uint8),
                num_answers=((), np.int32), question=((QUESTION_BYTES,), np.uint8), kind=((KIND_BYTES,), np.uint8),
                input_ids=((t,), np.int32),
                attention_mask=((t,), np.int32), mm_token_type_ids=((t,), np.int32),
                pixel_values_videos=video["video_pixels"], video_grid_thw=video["video_grid"],
                source_frames=video["source_frames"])


def check_observation_shapes(pcfg: PipelineConfig, rollout) -> None:
  """SFT observations (pipeline) and rollout observations must have one shape, or SFT teaches other pixels."""
  for name in ("obs_hw", "max_clip_frames"):
    if tuple(np.atleast_1d(getattr(pcfg, name))) != tuple(np.atleast_1d(getattr(rollout, name))):
      raise ValueError(f"config.pipeline.{name}={getattr(pcfg, name)} != config.rollout.{name}="
                       f"{getattr(rollout, name)}: SFT observations must match the rollout's; set both alike")


class SftFeaturizer(_VideoPrompt, grain.transforms.Map):
  """Row with a gold trajectory -> a teacher-forced conversation in the rollout's slot layout (train/forward.py):
  tokens, positions [3, S], valid, mm_types, loss_mask [S]; video_pixels, video_grid; obs_pixels [O, No, 1176],
  obs_grid [O, 3]. Observations are executed with the rollout's own pixel ops (rumination/observation.py) and
  the rollout's own settings (`rollout`: obs size, clip limit, crop margin and minimum, clip seconds per group),
  and positions come from the run's model config, so SFT teaches exactly the pixels and positions the rollout
  produces."""

  def __init__(self, cfg: PipelineConfig, processor, rollout, model_config):
    super().__init__(cfg, processor)
    check_observation_shapes(cfg, rollout)
    self.rollout, self.model_config = rollout, model_config

  def map(self, row: dict) -> dict[str, np.ndarray]:
    import json
    from videor4_jax.data import schema
    from videor4_jax.processing import chat
    from videor4_jax.rumination.observation import execute_host
    from videor4_jax.rumination.pixel_ops import to_patches_host
    qid = _text(row["qid"])
    where = f"row qid={qid!r}"
    traj = schema.from_json(json.loads(_text(row["trajectory"])), where=where, num_frames=self.cfg.num_frames)
    cfg, rc = self.cfg, self.rollout
    if len(traj.actions) > cfg.max_observations:
      raise ValueError(f"{where}: {len(traj.actions)} actions > max_observations={cfg.max_observations}")
    src, pv, grid = self.video(row, where)
    patch, unit = self.processor.vision.patch_size, self.processor.vision.merge_size ** 2
    k2 = rc.max_clip_frames + rc.max_clip_frames % 2
    gh, gw = rc.obs_hw[0] // patch, rc.obs_hw[1] // patch
    obs_pixels = np.zeros((cfg.max_observations, k2 // 2 * gh * gw, pv.shape[1]), np.float32)
    obs_grid = np.zeros((cfg.max_observations, 3), np.int32)
    steps, images, videos, r = [], [], [grid], 0
    for st in traj.steps:
      step = {"think": st.think, "answer": st.answer}
      if st.action is not None:
        frames, groups, err, modality = execute_host(src, st.action.to_json(), obs_hw=rc.obs_hw,
                                                     max_clip_frames=rc.max_clip_frames,
                                                     crop_margin=rc.crop_margin, crop_min_px=rc.crop_min_px)
        step["action"] = st.action.to_json()
        step["observation"] = (err, groups * gh * gw // unit, modality)
        if not err:
          obs_pixels[r] = np.asarray(to_patches_host(frames))
          obs_grid[r] = (groups, gh, gw)
          (images if modality == chat.IMAGE else videos).append(obs_grid[r])
        r += 1
      steps.append(step)
    ids, types, loss = chat.conversation_ids(self.tok, traj.question, self.video_tokens(grid), steps,
                                             self.processor.system_prompt)
    s = cfg.max_seq_tokens
    tokens, valid = pad_tokens(ids, s, self.tok.pad_id, "right", where=where)
    types_p, _ = pad_tokens(types, s, 0, "right", where=where)
    loss_p, _ = pad_tokens(loss, s, 0, "right", where=where)
    # Positions by the model's closed form over the whole conversation, as the rollout gives them step by step:
    # the prompt's video at 1 s per frame group (the rollout's prefill), clips at rollout.clip_seconds_per_group.
    seconds = np.array([1.0] + [rc.clip_seconds_per_group] * (len(videos) - 1), np.float32)
    pos, _ = _jitted_positions()(self.model_config, types_p[None], valid[None].astype(bool),
                                 image_grid_thw=np.array(images) if images else None,
                                 video_grid_thw=np.array(videos), second_per_grid_ts=seconds)
    return dict(tokens=tokens, positions=np.asarray(pos)[:, 0], valid=valid.astype(bool), mm_types=types_p,
                loss_mask=loss_p.astype(np.float32), video_pixels=pv, video_grid=grid,
                obs_pixels=obs_pixels, obs_grid=obs_grid)

  def output_spec(self) -> dict[str, tuple[tuple[int, ...], type]]:
    """{field: (shape, dtype)} of one `map` output, without reading data (see RlFeaturizer.output_spec)."""
    cfg, rc, s = self.cfg, self.rollout, self.cfg.max_seq_tokens
    video = self._video_spec()
    patch = self.processor.vision.patch_size
    obs_patches = (rc.max_clip_frames + rc.max_clip_frames % 2) // 2 * (rc.obs_hw[0] // patch) * (rc.obs_hw[1] // patch)
    return dict(tokens=((s,), np.int32), positions=((3, s), np.int32), valid=((s,), np.bool_),
                mm_types=((s,), np.int32), loss_mask=((s,), np.float32), video_pixels=video["video_pixels"],
                video_grid=video["video_grid"],
                obs_pixels=((cfg.max_observations, obs_patches, video["video_pixels"][0][1]), np.float32),
                obs_grid=((cfg.max_observations, 3), np.int32))
