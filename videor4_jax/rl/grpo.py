"""GRPO: group-normalized advantages, the clipped surrogate, k3 KL, and loss aggregation (PAPER section 5.7).

For G rollouts o_1..o_G of one prompt with rewards R_i:

    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)          (std_normalize=True; else A_i = R_i - mean_j R_j)
    std_j R_j = sqrt(sum_j (R_j - mean R)^2 / (G - ddof))    (adv_std_ddof: 0 population, 1 sample)
    A_i = 0 exactly for every row of a group whose G rewards are equal (no signal; no rounding residue)
    rho_{i,t} = exp(logp_theta(o_{i,t}) - logp_old(o_{i,t}))
    l_{i,t} = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_{i,t}
    KL_{i,t} = exp(ref - logp) - (ref - logp) - 1        (k3 estimator of KL[pi_theta || pi_ref], >= 0)

aggregated over the masked tokens (m = 1 on tokens the policy generated; prompt and observation tokens are 0):
    token_mean:           sum_{i,t} m l / sum_{i,t} m
    seq_mean_token_mean:  mean_i ( sum_t m l / sum_t m )          (the DeepSeekMath / GRPO paper form)
    dr_grpo:              sum_{i,t} m l / (B * max_len)           (Dr. GRPO: a constant normalizer)
Rows are grouped contiguously: row r belongs to group r // G.

Advantage normalization convention: the default is the population std (ddof = 0, eps 1e-6), the form of the
DeepSeekMath/GRPO formula as most implementations (and this project's recorded runs) compute it. TRL's
GRPOTrainer uses the sample std (ddof = 1) plus 1e-4: `adv_std_ddof=1, adv_eps=1e-4` reproduces its advantages
(the one difference from TRL that the project's issue 19 reports; loss and gradient agree). The two differ by the constant factor sqrt(G / (G - 1)) on every non-degenerate group (1.15 at G = 4), which
Adam's per-parameter normalization nearly cancels; only gradient clipping and the eps terms see it.

Uninformative batches (`skip_uninformative`, grpo_step in train/steps.py): when no group of the batch has reward
variance, every advantage is 0 and the surrogate's gradient is 0; an optimizer step would still move the
parameters (Adam's momentum, weight decay) and the KL term alone would pull towards the reference. With the
option the step is skipped: params and optimizer state are left bitwise unchanged.

Dynamic sampling (`dynamic_sampling`, DAPO): a stage draws further prompt batches (up to `max_draws` in all)
until it holds B groups with reward variance (`dynamic_sample` below), then trains on those B groups; if the cap
is reached first, the batch is completed with zero-variance groups and the stage logs that it was not filled.

Zero-variance filtering (`filter_zero_variance`): a group whose G rewards are all equal carries no policy-gradient
signal (every A_i = 0), only KL. Its rows get zero loss weight and are removed from every normalizer, so the loss
equals the loss of the batch with those rows deleted (B above counts the kept rows).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

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
  adv_std_ddof: int = 0           # 0: population std (default, see the module docstring); 1: sample std (TRL)
  skip_uninformative: bool = True  # no optimizer update at all on a batch without an informative group
  dynamic_sampling: bool = False  # DAPO: draw more prompt batches until B groups have reward variance
  max_draws: int = 4              # dynamic sampling's cap: rollout batches per step, the first included

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
    if self.adv_std_ddof not in (0, 1):
      raise ValueError(f"adv_std_ddof={self.adv_std_ddof}: 0 (population std) or 1 (sample std, TRL's convention)")
    if self.max_draws < 1:
      raise ValueError(f"max_draws={self.max_draws} must be >= 1 (rollout batches per step with dynamic_sampling)")
    if self.adv_eps <= 0 or self.max_len < 0:
      raise ValueError(f"adv_eps must be > 0 and max_len >= 0 (got adv_eps={self.adv_eps}, max_len={self.max_len})")


def group_advantages(rewards_b, group_size: int, *, std_normalize: bool = True, eps: float = 1e-6, ddof: int = 0):
  """`[B]` advantages of `[B]` rewards in contiguous groups of `group_size` (formula in the module docstring)."""
  r = jnp.asarray(rewards_b).reshape(-1, group_size)
  centered = r - r.mean(axis=1, keepdims=True)
  if std_normalize:
    centered = centered / (r.std(axis=1, keepdims=True, ddof=ddof) + eps)
  flat = jnp.all(r == r[:, :1], axis=1, keepdims=True)
  return jnp.where(flat, 0.0, centered).reshape(-1)


def dynamic_sample(draw, num_groups: int, max_draws: int):
  """DAPO's dynamic sampling, host side. `draw(d)` rolls out prompt batch d (d = 0, 1, ...) and returns `[num_groups]`
  bool: which of its groups have reward variance. Draws until `num_groups` informative groups are held or
  `max_draws` batches were drawn. Returns `(picked, stats)`: `picked` lists `num_groups` (draw, group) pairs, the
  informative ones first in draw order (surplus ones dropped), then, if the cap was reached, zero-variance groups
  of the earliest draws; `stats` = draws, drawn_groups, informative_groups (over every draw), filled (informative
  groups picked) and capped (True when the cap stopped the sampling before the batch was full)."""
  seen, picked = [], []
  for d in range(max_draws):
    informative = np.asarray(draw(d), bool)
    if informative.shape != (num_groups,):
      raise ValueError(f"dynamic_sample: draw({d}) returned shape {informative.shape}; expected ({num_groups},)")
    seen.append(informative)
    picked += [(d, int(g)) for g in np.flatnonzero(informative)][:num_groups - len(picked)]
    if len(picked) == num_groups:
      break
  filled = len(picked)
  picked += [(d, int(g)) for d, inf in enumerate(seen) for g in np.flatnonzero(~inf)][:num_groups - filled]
  return picked, dict(draws=len(seen), drawn_groups=num_groups * len(seen),
                      informative_groups=int(sum(inf.sum() for inf in seen)), filled=filled,
                      capped=filled < num_groups)


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
