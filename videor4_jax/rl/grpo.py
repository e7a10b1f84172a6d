"""GRPO: group-normalized advantages, the clipped surrogate, k3 KL, and loss aggregation (PAPER section 5.7).

For G rollouts o_1..o_G of one prompt with rewards R_i:

    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)          (std_normalize=True; else A_i = R_i - mean_j R_j)
    rho_{i,t} = exp(logp_theta(o_{i,t}) - logp_old(o_{i,t}))
    l_{i,t} = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_{i,t}
    KL_{i,t} = exp(ref - logp) - (ref - logp) - 1        (k3 estimator of KL[pi_theta || pi_ref], >= 0)

aggregated over the masked tokens (m = 1 on tokens the policy generated; prompt and observation tokens are 0):
    token_mean:           sum_{i,t} m l / sum_{i,t} m
    seq_mean_token_mean:  mean_i ( sum_t m l / sum_t m )          (the DeepSeekMath / GRPO paper form)
    dr_grpo:              sum_{i,t} m l / (B * max_len)           (Dr. GRPO: a constant normalizer)
Rows are grouped contiguously: row r belongs to group r // G.

Zero-variance filtering (`filter_zero_variance`): a group whose G rewards are all equal carries no policy-gradient
signal (every A_i = 0), only KL. Its rows get zero loss weight and are removed from every normalizer, so the loss
equals the loss of the batch with those rows deleted (B above counts the kept rows).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "dr_grpo")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  num_generations: int = 8        # G
  beta: float = 0.04              # KL weight (0 skips the reference forward)
  eps_low: float = 0.2
  eps_high: float = 0.2
  aggregation: str = "seq_mean_token_mean"
  std_normalize: bool = True
  adv_eps: float = 1e-6
  filter_zero_variance: bool = False
  num_inner_steps: int = 1        # mu: updates per rollout batch
  temperature: float = 1.0
  max_len: int = 0                # dr_grpo constant (0: the sequence length of the batch)

  def __post_init__(self):
    if self.num_generations < 2:
      raise ValueError(f"GRPO needs num_generations >= 2 (got {self.num_generations}): with one rollout per "
                       f"prompt every group-normalized advantage is 0; set grpo.num_generations to e.g. 8")
    if self.eps_low < 0 or self.eps_high < 0:
      raise ValueError(f"clip epsilons must be >= 0 (eps_low={self.eps_low}, eps_high={self.eps_high})")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation={self.aggregation!r}; expected one of {AGGREGATIONS}")
    if self.beta < 0 or self.num_inner_steps < 1 or self.temperature <= 0:
      raise ValueError(f"beta must be >= 0, num_inner_steps >= 1, temperature > 0 (got beta={self.beta}, "
                       f"num_inner_steps={self.num_inner_steps}, temperature={self.temperature})")
    if self.adv_eps <= 0 or self.max_len < 0:
      raise ValueError(f"adv_eps must be > 0 and max_len >= 0 (got adv_eps={self.adv_eps}, max_len={self.max_len})")


def group_advantages(rewards_b, group_size: int, *, std_normalize: bool = True, eps: float = 1e-6):
  r = rewards_b.reshape(-1, group_size)
  centered = r - r.mean(axis=1, keepdims=True)
  if std_normalize:
    centered = centered / (r.std(axis=1, keepdims=True) + eps)
  return centered.reshape(-1)


def zero_variance_groups(rewards_b, group_size: int):
  """`[B]` bool: rows whose group has identical rewards (no learning signal)."""
  r = rewards_b.reshape(-1, group_size)
  return jnp.repeat(jnp.all(r == r[:, :1], axis=1), group_size)


def kl_k3(logp, ref_logp):
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def aggregate(loss_bt, mask_bt, aggregation: str, max_len: int = 0, keep_b=None):
  """Masked aggregation; rows with keep_b = False count as absent (zero weight, out of every normalizer)."""
  mask = mask_bt.astype(jnp.float32)
  rows = loss_bt.shape[0]
  if keep_b is not None:
    mask = mask * keep_b[:, None].astype(jnp.float32)
    rows = jnp.maximum(keep_b.astype(jnp.float32).sum(), 1.0)
  if aggregation == "token_mean":
    return (loss_bt * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  if aggregation == "seq_mean_token_mean":
    per_seq = (loss_bt * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    return per_seq.sum() / rows
  if aggregation == "dr_grpo":
    return (loss_bt * mask).sum() / (rows * (max_len or loss_bt.shape[1]))
  raise ValueError(f"aggregation={aggregation!r}; expected one of {AGGREGATIONS}")


def grpo_loss(logp_bt, old_logp_bt, advantages_b, mask_bt, *, ref_logp_bt=None, beta: float = 0.0,
              eps_low: float = 0.2, eps_high: float = 0.2, aggregation: str = "seq_mean_token_mean",
              max_len: int = 0, keep_b=None):
  """Returns `(loss, metrics)`; see the module docstring for the math. keep_b `[B]` bool: rows to train on."""
  ratio = jnp.exp(logp_bt - old_logp_bt)
  adv = advantages_b[:, None]
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
  per_token = -jnp.minimum(unclipped, clipped)
  mask = mask_bt.astype(jnp.float32)
  if keep_b is not None:
    mask = mask * keep_b[:, None].astype(jnp.float32)
  n = jnp.maximum(mask.sum(), 1.0)
  metrics = {}
  if beta > 0:
    if ref_logp_bt is None:
      raise ValueError("beta > 0 needs ref_logp_bt")
    kl = kl_k3(logp_bt, ref_logp_bt)
    per_token = per_token + beta * kl
    metrics["kl"] = (kl * mask).sum() / n
  loss = aggregate(per_token, mask, aggregation, max_len, keep_b)
  is_clipped = (clipped < unclipped) & (mask > 0)
  metrics.update(clip_frac=is_clipped.sum() / n, ratio_mean=(ratio * mask).sum() / n,
                 ratio_max=jnp.where(mask > 0, ratio, 0.0).max())
  return loss, metrics
