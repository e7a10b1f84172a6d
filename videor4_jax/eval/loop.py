"""Evaluation: greedy rollout over a split in batches, metrics, per-question records and trace records.

Modes: "rumination" (the model may clip / crop for up to R steps) and "single_pass" (the same model, one step,
`<tool_call>` disallowed, and the assistant turn opened with `SINGLE_PASS_PREFIX` so it must write the answer at
once), so the gain of rumination is measured on the same weights.

mcqa=True (eval/mcqa.py): a `video_mcqa` dataset; the prompt lists the lettered options and "accuracy" is the
option-letter metric (metrics.multiple_choice_accuracy); the summary then also holds "metric".

Results JSON (written by eval.py and by train.py's report):
  {"summary": {"mode", "num_questions", "accuracy", "anls", "rumination_rate", "actions_per_question",
               "invalid_action_rate", "answered_rate", "accuracy_<kind>" for each record kind present},
   "questions": [{"qid", "question", "kind", "golds", "prediction", "accuracy", "anls", "answered",
                  "actions": [{"name", "frame", "bbox_2d" | "frames", "error"}], "text"}]}
"""
from __future__ import annotations

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from videor4_jax.data import pipeline
from videor4_jax.data.features import RlFeaturizer, decode_strings
from videor4_jax import metrics
from videor4_jax.parallel import distributed
from videor4_jax.processing.chat import extract_answer
from videor4_jax.processing.grammar import ERROR_MESSAGES, TOOL_NAMES, ActionError, ToolKind
from videor4_jax.rumination.env import RuminationEnv
from videor4_jax.rumination.rollout import make_rollout_fn

MODES = ("rumination", "single_pass")
SINGLE_PASS_PREFIX = "<think></think><answer>"


def append_to_prompts(batch: dict, suffix_ids: list[int]) -> dict:
  """Appends `suffix_ids` to every left-padded prompt of `batch` (input_ids / attention_mask `[B, P]`)."""
  n = len(suffix_ids)
  ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
  if n and mask[:, :n].any():
    raise ValueError(f"single-pass mode appends {n} tokens to the prompt but a prompt fills "
                     f"{int(mask.sum(1).max())} of the {ids.shape[1]} prompt slots; raise pipeline.max_prompt_tokens")
  ids = np.concatenate([ids[:, n:], np.broadcast_to(np.asarray(suffix_ids, ids.dtype), (ids.shape[0], n))], 1)
  mask = np.concatenate([mask[:, n:], np.ones((ids.shape[0], n), mask.dtype)], 1)
  return dict(batch, input_ids=ids, attention_mask=mask)


def single_pass_env(env: RuminationEnv, tool_call_id: int) -> RuminationEnv:
  free = env.free_mask.copy()
  free[tool_call_id] = False
  return dataclasses.replace(env, free_mask=free, rollout=dataclasses.replace(env.rollout, max_steps=1))


def final_segment(text: str) -> str:
  """The assistant's last step: everything after its last tool call."""
  return text.rsplit("</tool_call>", 1)[-1]


def row_actions(traj, b: int) -> list[dict]:
  out = []
  a = traj.actions
  for r in range(a.kind.shape[1]):
    if not bool(a.called[b, r]):
      continue
    kind, err = int(a.kind[b, r]), int(a.error[b, r])
    rec = {"name": TOOL_NAMES.get(kind, "malformed"), "error": ERROR_MESSAGES[ActionError(err)] if err else None}
    if kind == ToolKind.CROP:
      rec.update(frame=int(a.frame[b, r]), bbox_2d=[round(float(x), 2) for x in a.box[b, r]])
    elif kind == ToolKind.CLIP:
      rec.update(frames=[int(f) for f in a.frames[b, r][:int(a.num_frames[b, r])]])
    out.append(rec)
  return out


def evaluate(env: RuminationEnv, params, processor, source, pcfg: pipeline.PipelineConfig, *, mode: str = "rumination",
             num_examples: int | None = None, progress: bool = True, keep_batches: bool = False, mcqa: bool = False):
  """Returns the results dict (module docstring) and, with `keep_batches`, the raw batches + trajectories.

  `processor` (processing/processor.py) is the one the env was built with: prompts use its tokenizer, system
  prompt and video rule."""
  tok = processor.tokenizer
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; expected one of {MODES}")
  score = metrics.accuracy
  if mcqa:
    from videor4_jax.eval import mcqa as mcqa_lib
    source, score = mcqa_lib.McqaSource(source), mcqa_lib.score
  run_env = env if mode == "rumination" else single_pass_env(env, tok.tool_call_start_id)
  fn = make_rollout_fn(run_env, greedy=True)
  n = len(source) if num_examples is None else min(num_examples, len(source))
  cfg = dataclasses.replace(pcfg, num_epochs=1, shuffle=False, worker_count=0)
  # Every process evaluates every question (same inputs everywhere, as jit requires of host arrays in a
  # multi-process run) and gathers the trajectories, so each holds the whole result.
  ds = pipeline.make_dataset(_Prefix(source, n), cfg, RlFeaturizer(cfg, processor),
                             shard=grain.sharding.NoSharding())
  questions, kept = [], []
  prefix = tok.encode(SINGLE_PASS_PREFIX)
  bar = tqdm.tqdm(total=n, desc=f"eval/{mode}", unit="q", disable=not progress)
  for batch in ds:
    b = batch["input_ids"].shape[0]
    if b < cfg.batch_size:    # static shapes: pad the last batch by repeating its first row
      batch = {k: np.concatenate([v, np.repeat(v[:1], cfg.batch_size - b, 0)]) for k, v in batch.items()}
    if mode == "single_pass":
      batch = append_to_prompts(batch, prefix)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw",
                                    "source_frames")}
    traj = distributed.to_host(fn(params, inputs, jax.random.key(0)))
    # Rows whose record failed to featurize (skipped and reported) are left out.
    questions += [_question_record(tok, batch, traj, i, mode, score) for i in range(b) if batch["row_ok"][i]]
    if keep_batches:
      kept.append((batch, traj, b))
    bar.update(b)
  bar.close()
  acts = [q["actions"] for q in questions]
  n_act = sum(len(a) for a in acts)
  summary = dict(mode=mode, num_questions=len(questions),
                 accuracy=float(np.mean([q["accuracy"] for q in questions])) if questions else 0.0,
                 anls=float(np.mean([q["anls"] for q in questions])) if questions else 0.0,
                 rumination_rate=float(np.mean([len(a) > 0 for a in acts])) if acts else 0.0,
                 actions_per_question=n_act / max(len(acts), 1),
                 invalid_action_rate=sum(x["error"] is not None for a in acts for x in a) / max(n_act, 1),
                 answered_rate=float(np.mean([q["answered"] for q in questions])) if questions else 0.0)
  for kind in sorted({q["kind"] for q in questions} - {""}):     # e.g. deliberate vs compositional questions
    summary[f"accuracy_{kind}"] = float(np.mean([q["accuracy"] for q in questions if q["kind"] == kind]))
  if mcqa:
    summary["metric"] = "multiple_choice_accuracy"
  out = {"summary": summary, "questions": questions}
  return (out, kept) if keep_batches else out


def _question_record(tok, batch, traj, i: int, mode: str, score) -> dict:
  """Row i's result: its qid, question and golds from the batch, the generated text and its scored answer."""
  gen = np.asarray(traj.tokens[i])[np.asarray(traj.loss_mask[i]) > 0]
  text = tok.decode(gen) if mode == "rumination" else SINGLE_PASS_PREFIX + tok.decode(gen)
  pred = extract_answer(final_segment(text))
  golds = decode_strings(batch["answers"][i], int(batch["num_answers"][i]))
  return dict(qid=decode_strings(batch["qid"][i])[0], question=decode_strings(batch["question"][i])[0],
              kind=decode_strings(batch["kind"][i])[0], golds=golds,
              prediction=pred, accuracy=score(pred, golds), anls=metrics.anls(pred, golds),
              answered=bool(traj.answered[i]), actions=row_actions(traj, i), text=text)


class _Prefix:
  """The first n records of a source (a plain sequence for grain)."""

  def __init__(self, source, n):
    self.source, self.n = source, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.source[i]

