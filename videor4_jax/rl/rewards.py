"""Video-R4 rewards (PAPER section 5): R' = R_acc + w_fmt R_fmt + l_div R_div + l_rep R_rep + l_cur R_cur.

accuracy (host):  ANLS (threshold 0.5) or EvalAI-normalized exact match of the decoded answer against the golds.
format (host):    1 if the final assistant segment is `<think>...</think>\\s*<answer>...</answer>` (then
                  `<|im_end|>`) and every tool call of the trajectory parsed and executed (no error code); else 0.
diversity:        R_div = 1/(n(n-1)) sum_{i != j} (1 - cos(v_i, v_j)) over the n selected *region* (crop) features;
                  0 when n < 2 (undefined). Range [0, 2].
representativeness: R_rep = exp(-1/|V| sum_i min_{j in last clip} ||v_i - v_j||_2) over L2-normalized global-view
                  group features v_i and the groups selected by the LAST clip; 0 when the rollout never clipped.
curiosity:        R_cur,i = alpha * max(H - rapr, 0) * 1[n_i > 0] + beta * min(N - n_i, 0), with rapr the fraction of
                  the G rollouts of the prompt that used >= 1 action and n_i the number of actions of rollout i
                  (Pixel-Reasoner's curiosity + efficiency penalty; H = 0.3, N = 1, alpha = 0.5, beta = 0.05).
Feature rewards take padded arrays with masks and are jittable; every term is returned for logging.
"""
from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np

from videor4_jax import metrics
from videor4_jax.processing.chat import extract_answer


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  accuracy: str = "anls"             # "anls" | "exact_match" | "accuracy" (EvalAI-normalized)
  w_format: float = 0.5
  w_div: float = 0.0                 # PAPER: lambda values not published; set per stage in the configs
  w_rep: float = 0.0
  w_cur: float = 1.0
  cur_h: float = 0.3
  cur_n: int = 1
  cur_alpha: float = 0.5
  cur_beta: float = 0.05

  def __post_init__(self):
    if self.accuracy not in ("anls", "exact_match", "accuracy"):
      raise ValueError(f"reward accuracy={self.accuracy!r}; expected 'anls', 'exact_match' or 'accuracy'")


_FINAL = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>\s*(<\|im_end\|>)?\s*$", re.DOTALL)


def accuracy_reward(prediction: str, golds: list[str], kind: str = "anls") -> float:
  fn = {"anls": metrics.anls, "exact_match": metrics.exact_match, "accuracy": metrics.accuracy}[kind]
  return float(fn(prediction, golds))


def format_reward(final_segment: str, action_errors: list[int]) -> float:
  return float(_FINAL.fullmatch(final_segment.strip()) is not None and all(e == 0 for e in action_errors))


def diversity_reward(feats_bkd, mask_bk):
  f = feats_bkd / jnp.maximum(jnp.linalg.norm(feats_bkd, axis=-1, keepdims=True), 1e-8)
  cos = jnp.einsum("bkd,bjd->bkj", f, f)
  k = mask_bk.shape[1]
  pair = mask_bk[:, :, None] & mask_bk[:, None, :] & ~jnp.eye(k, dtype=bool)[None]
  n = mask_bk.sum(-1)
  total = jnp.where(pair, 1.0 - cos, 0.0).sum((1, 2))
  return jnp.where(n >= 2, total / jnp.maximum(n * (n - 1), 1), 0.0)


def representativeness_reward(video_bgd, selected_bg):
  v = video_bgd / jnp.maximum(jnp.linalg.norm(video_bgd, axis=-1, keepdims=True), 1e-8)
  d = jnp.linalg.norm(v[:, :, None, :] - v[:, None, :, :], axis=-1)            # [B, G, G]
  nearest = jnp.where(selected_bg[:, None, :], d, jnp.inf).min(-1)              # [B, G]
  r = jnp.exp(-nearest.mean(-1))
  return jnp.where(selected_bg.any(-1), r, 0.0)


def curiosity_reward(num_actions_b, group_size: int, *, h: float, n: int, alpha: float, beta: float):
  used = (num_actions_b > 0).astype(jnp.float32)
  rapr = jnp.repeat(used.reshape(-1, group_size).mean(1), group_size)
  return alpha * jnp.maximum(h - rapr, 0.0) * used + beta * jnp.minimum(n - num_actions_b, 0)


def total_reward(cfg: RewardConfig, *, acc_b, fmt_b, region_feats, region_mask, video_feats, last_clip,
                 num_actions_b, group_size: int) -> dict:
  """All terms `[B]` and their weighted sum under "total"."""
  div = diversity_reward(region_feats, region_mask)
  rep = representativeness_reward(video_feats, last_clip)
  cur = curiosity_reward(num_actions_b, group_size, h=cfg.cur_h, n=cfg.cur_n, alpha=cfg.cur_alpha,
                         beta=cfg.cur_beta)
  acc, fmt = jnp.asarray(acc_b, jnp.float32), jnp.asarray(fmt_b, jnp.float32)
  total = acc + cfg.w_format * fmt + cfg.w_div * div + cfg.w_rep * rep + cfg.w_cur * cur
  return dict(total=total, accuracy=acc, format=fmt, diversity=div, representativeness=rep, curiosity=cur)


def score_texts(cfg: RewardConfig, finals: list[str], golds: list[list[str]], errors: np.ndarray):
  """Host part: (accuracy [B], format [B], predictions) from each row's final assistant segment."""
  preds = [extract_answer(f) for f in finals]
  acc = np.array([accuracy_reward(p, g, cfg.accuracy) for p, g in zip(preds, golds)], np.float32)
  fmt = np.array([format_reward(f, [int(e) for e in row]) for f, row in zip(finals, errors)], np.float32)
  return acc, fmt, preds
