"""Train state and the two train steps, each one pure function `(state, batch) -> (state, metrics)`.

Both steps run the same teacher-forced forward (train/forward.py) over a slot-laid-out conversation and take
log-probs of the next slot's token with the chunked head (rl/logprobs.py), so `[B, S, V]` logits never exist.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from videor4_jax.model import vlm
from videor4_jax.rl import grpo
from videor4_jax.rl.logprobs import token_logprobs
from videor4_jax.train.forward import sequence_hidden


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  # Subtrees of params["params"] that take no gradient at all (e.g. ("visual",) for a frozen vision tower): the
  # forward sees them through stop_gradient, so no backward pass runs through them and their zero gradients
  # stay out of the clipping norm, as with requires_grad=False in PyTorch. (Masking only the optimizer update,
  # as OptimConfig.freeze_vision does, still paid the tower's backward and counted it in the global norm.)
  frozen: tuple = flax.struct.field(pytree_node=False, default=())

  @classmethod
  def create(cls, params, tx, frozen: tuple = ()):
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx, frozen=tuple(frozen))

  def apply_gradients(self, grads):
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state)


def sequence_logprobs(config, params, batch, *, temperature: float = 1.0, seq_chunk: int = 256,
                      vocab_chunk: int = 8192):
  """logp `[B, S]`: at slot s, log p(tokens[s] | slots < s); 0 at slot 0."""
  hidden = sequence_hidden(config, params, batch)
  head = vlm.head_weight(config, params)
  lp = token_logprobs(hidden[:, :-1], head, batch["tokens"][:, 1:], seq_chunk=seq_chunk, vocab_chunk=vocab_chunk,
                      temperature=temperature)
  return jnp.pad(lp, ((0, 0), (1, 0)))


def without_frozen_grads(params, frozen: tuple):
  """params with the `frozen` subtrees of params["params"] behind stop_gradient (TrainState.frozen)."""
  if not frozen:
    return params
  inner = dict(params["params"])
  missing = [name for name in frozen if name not in inner]
  if missing:
    raise KeyError(f"frozen subtrees {missing} are not in params['params'] (has {sorted(inner)})")
  for name in frozen:
    inner[name] = jax.lax.stop_gradient(inner[name])
  return {**params, "params": inner}


def _update_if(update, state: TrainState, grads) -> TrainState:
  """The optimizer step when `update` (a traced bool), else the state bitwise unchanged.

  A `lax.cond`, not `where(update, new, old)` over the tree: the select read params, both Adam moments and their
  updated copies once more per step (the quick CPU SFT step, scanned layers, one thread: 0.396 -> 0.373 s of CPU
  time; README, benchmarks), and a skipped step does no optimizer work at all.
  """
  return jax.lax.cond(update, lambda s, g: s.apply_gradients(g), lambda s, g: s, state, grads)


def sft_step(config, state: TrainState, batch):
  """Cross-entropy on the model's own tokens: L = -sum_s m_s log p(x_s | x_<s) / sum_s m_s (m = loss_mask)."""
  def loss_fn(params):
    logp = sequence_logprobs(config, without_frozen_grads(params, state.frozen), batch)
    mask = batch["loss_mask"].astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    loss = -(logp * mask).sum() / n
    return loss, dict(loss=loss, tokens=mask.sum())

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  ok = jnp.isfinite(loss)                  # a NaN/Inf loss leaves the state unchanged (skipped, in metrics)
  state = _update_if(ok, state, grads)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), skipped=(~ok).astype(jnp.int32))
  return state, metrics


def grpo_step(config, gcfg: grpo.GRPOConfig, state: TrainState, batch, ref_params=None):
  """One GRPO update on a rollout batch (see rl/grpo.py for the objective).

  batch: the trajectory fields of `sequence_hidden` plus `loss_mask`, `logp` (behaviour log-probs recorded by
  the rollout) and `advantages [B]`; optional `keep [B]` bool (rows outside zero-variance groups), used when
  `gcfg.filter_zero_variance`.

  The batch is informative when some group has reward variance: any(keep), or without `keep` any advantage != 0
  (rl.grpo.group_advantages gives exactly 0 to zero-variance groups). With `gcfg.skip_uninformative`, an
  uninformative batch (or a non-finite loss) leaves params, optimizer state and step bitwise unchanged: no
  momentum step, no weight decay, no KL-only step. metrics["uninformative"] = 1 marks such a batch.
  """
  mask = batch["loss_mask"].astype(jnp.float32)
  keep = None
  if gcfg.filter_zero_variance:
    if "keep" not in batch:
      raise ValueError("grpo.filter_zero_variance=True needs batch['keep'] (~rl.grpo.zero_variance_groups(rewards))")
    keep = batch["keep"]
  ref_logp = None
  if gcfg.beta > 0:
    ref_logp = jax.lax.stop_gradient(sequence_logprobs(config, ref_params, batch, temperature=gcfg.temperature))

  def loss_fn(params):
    logp = sequence_logprobs(config, without_frozen_grads(params, state.frozen), batch,
                             temperature=gcfg.temperature)
    return grpo.grpo_loss(logp, batch["logp"], batch["advantages"], mask, ref_logp_bt=ref_logp, beta=gcfg.beta,
                          eps_low=gcfg.eps_low, eps_high=gcfg.eps_high, aggregation=gcfg.aggregation,
                          max_len=gcfg.max_len, keep_b=keep)

  informative = jnp.any(batch["keep"]) if "keep" in batch else jnp.any(batch["advantages"] != 0)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  ok = jnp.isfinite(loss)
  state = _update_if(ok & informative if gcfg.skip_uninformative else ok, state, grads)
  return state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), skipped=(~ok).astype(jnp.int32),
                     uninformative=(~informative).astype(jnp.int32))
