"""SFT and GRPO train-step throughput: our jitted steps against the same steps in HF transformers (PyTorch).

  python bench/train_step.py [--quick] [--runs 3] [--out bench/results/train_step[_quick].json]

Weights: one random Qwen2.5-VL (the bench/rollout.py model: ~51M parameters, `--quick` ~11M), saved with
`save_pretrained` and loaded by `Qwen2_5_VLForConditionalGeneration.from_pretrained`, fp32 on both sides.
Batch (the same for both): B rows of one rumination conversation each

    system + user(video, question) + assistant(A tokens) + observation(crop image) + assistant(A tokens) <|im_end|>

(loss mask 1 on the two assistant turns), the global video through the vision tower, the crop through it as an
image, M-RoPE positions from `get_rope_index` (HF computes its own from `mm_token_type_ids`; the step-0 losses of
the two sides are compared as a check that both see the same batch).

  SFT   ours: jit(sft_step) (chunked log-probs, AdamW + global-norm clip, optax). HF: forward -> logits ->
        masked mean CE of the next token -> backward -> clip_grad_norm_(1.0) -> torch.optim.AdamW.
  GRPO  ours: jit(grpo_step), beta = 0.04 (so a frozen reference forward runs too), seq_mean_token_mean. HF: the
        same objective in torch: ratio = exp(logp - logp_old), -min(rho A, clip(rho, 0.8, 1.2) A) + beta * k3 KL
        to a frozen copy of the model (forward under no_grad), mean over tokens then rows, backward, clip, AdamW.

Throughput = B * S tokens (every slot goes through the forward and backward) per second of one step. Each side
runs in a process of its own (`common.Worker`: in one process, the gigabytes one side frees per step cost the
other 2-8 s of page faults per step at full size on this VM; docs/BENCHMARKS.md). After a warm-up step each
(ours: lower + XLA compile, timed apart, then one step), the timed steps of the two sides alternate (ours, HF,
ours, HF, ...; `--runs` >= 5 each), so that load from other jobs on a shared machine hits both alike; the JSON
keeps every run, median, quartiles, min / max, wall and process-CPU time (each timed in its worker), and the
ratio of the medians. XLA and torch get the same number of threads (`--threads`, default every CPU;
bench/common.py).

Layers. `--layers unrolled` (default here): the CPU setting, `vlm.cpu_setting` (`scan_layers=False`, params
relaid out by `vlm.unstack_layers`, and `cpu_layouts=True`): XLA:CPU then neither copies each layer's weights out
of the stack nor stacks the residuals and gradients per layer (`dynamic-slice` / `dynamic-update-slice` in the
scan body), and runs the decoder's weight-gradient dots on flat `[B*T, D]` rows without a transposing copy of
each activation. `--layers scanned`: the default config (`lax.scan` over layers, `[B, T, D]` dense layers; the
TPU path, compile time flat in depth).
Final line: SFT ours/HF and GRPO ours/HF.
"""
from __future__ import annotations

import argparse, functools, os, sys, tempfile, time, types  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
import rollout as rb  # noqa: E402  (bench/rollout.py: model config, params, prompts)
from videor4_jax import get_rope_index, save_pretrained  # noqa: E402
from videor4_jax.model import vlm  # noqa: E402
from videor4_jax.processing import chat  # noqa: E402
from videor4_jax.processing.tokenizer import Tokenizer  # noqa: E402
from videor4_jax.rl import grpo  # noqa: E402
from videor4_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402
from videor4_jax.train.steps import TrainState, grpo_step, sequence_logprobs, sft_step  # noqa: E402

SETTINGS = {"full": dict(model="full", B=8, A=64, crop_hw=(112, 112)),
            "quick": dict(model="quick", B=2, A=48, crop_hw=(56, 56))}
LR, WD, CLIP, BETA, EPS = 1e-5, 0.01, 1.0, 0.04, 0.2


def make_batch(tok, config, s, m, seed=0):
  """Numpy batch in our slot layout plus the HF keyword arguments of the same conversations."""
  rng = np.random.default_rng(seed)
  B, A = s["B"], s["A"]
  pr = rb.make_prompts(tok, config, m, B, seed=seed)
  gh, gw = s["crop_hw"][0] // 14, s["crop_hw"][1] // 14
  n_img = gh * gw // 4
  text = lambda: tok.encode("".join(rng.choice(list("abcdefghij0123456789 ,.:"), 4 * A)))[:A]
  rows = []
  for _ in range(B):
    ids, types = chat.prompt_ids(tok, "What is written?", int(pr["video_grid_thw"][0].prod()) // 4,
                                 chat.TINY_SYSTEM_PROMPT)
    loss = [0] * len(ids)
    a1 = text()
    o_ids, o_types = chat.observation_ids(tok, 0, n_img, chat.IMAGE)
    a2 = text() + [tok.im_end_id]
    ids, types = ids + a1 + o_ids + a2, types + [0] * len(a1) + o_types + [0] * len(a2)
    loss += [1] * len(a1) + [0] * len(o_ids) + [1] * len(a2)
    rows.append((ids, types, loss))
  assert len({len(r[0]) for r in rows}) == 1
  ids, types, loss = (np.array([r[i] for r in rows]) for i in range(3))
  obs = rng.standard_normal((B, 1, gh * gw, config.vision.patch_dim)).astype(np.float32)
  obs_grid = np.tile(np.array([1, gh, gw], np.int32), (B, 1, 1))
  spg = np.ones((B,), np.float32)
  pos, _ = get_rope_index(config, ids, types, image_grid_thw=obs_grid[:, 0], video_grid_thw=pr["video_grid_thw"],
                          second_per_grid_ts=spg)
  ours = dict(tokens=ids.astype(np.int32), positions=pos.astype(np.int32), valid=np.ones(ids.shape, bool),
              mm_types=types.astype(np.int32), loss_mask=loss.astype(np.float32),
              video_pixels=pr["pixel_values_videos"], video_grid=pr["video_grid_thw"].astype(np.int32),
              obs_pixels=obs, obs_grid=obs_grid)
  hf = dict(input_ids=ids.astype(np.int64), attention_mask=np.ones(ids.shape, np.int64),
            mm_token_type_ids=types.astype(np.int64), pixel_values=obs.reshape(-1, obs.shape[-1]),
            image_grid_thw=obs_grid[:, 0].astype(np.int64),
            pixel_values_videos=pr["pixel_values_videos"].reshape(-1, pr["pixel_values_videos"].shape[-1]),
            video_grid_thw=pr["video_grid_thw"].astype(np.int64), second_per_grid_ts=spg)
  return ours, hf


# ------------------------------------------------------------------------------------------------ HF PyTorch
def hf_steps(model, ref_model, hf_batch, loss_mask, old_logp, adv):
  import torch
  kw = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf_batch.items()}
  ids = kw["input_ids"]
  mask = torch.from_numpy(loss_mask[:, 1:])
  old = torch.from_numpy(old_logp[:, 1:])
  adv_t = torch.from_numpy(np.array(adv))[:, None]
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]      # as optax's mask: no decay on norms / biases
  opt = torch.optim.AdamW([dict(params=decay, weight_decay=WD), dict(params=no_decay, weight_decay=0.0)], lr=LR,
                          betas=(0.9, 0.999), eps=1e-8)

  def token_logp(m):
    m.model.rope_deltas = None                                   # cached state in transformers 5.x
    logits = m(**kw).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]

  def update(loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return float(loss.detach())

  def sft():
    return update(-(token_logp(model) * mask).sum() / mask.sum().clamp(min=1.0))

  def grpo_():
    with torch.no_grad():
      ref = token_logp(ref_model)
    logp = token_logp(model)
    ratio = torch.exp(logp - old)
    per_tok = -torch.minimum(ratio * adv_t, torch.clamp(ratio, 1 - EPS, 1 + EPS) * adv_t)
    d = ref - logp
    per_tok = per_tok + BETA * (torch.exp(d) - d - 1)
    return update(((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean())

  return sft, grpo_


# ------------------------------------------------------------------------------------------------ main
class Built(types.SimpleNamespace):
  """Everything both sides of a train-step bench need (`build`): the weights, the batch in both layouts, the jitted
  steps and the HF models."""

  def fresh_state(self):
    return TrainState.create(jax.tree.map(jnp.copy, self.run_params), self.tx)

  def hf_step(self, name: str):
    """HF's `name` ("sft" | "grpo") step from the initial weights (a zero-argument callable; each call updates)."""
    self.model.load_state_dict(self.hf_init)
    return hf_steps(self.model, self.ref_model, self.hf_b, self.ours_b["loss_mask"], self.old_logp,
                    self.adv)[0 if name == "sft" else 1]

  def step_args(self, name: str):
    """(batch, keyword arguments) of our `name` step."""
    return (self.batch, {}) if name == "sft" else (self.gbatch, dict(ref_params=self.run_params))


def build(quick: bool, layers: str, hf: bool = True) -> Built:
  """The bench's model (bench/rollout.py's quick or full one), batch, jitted steps (ours in the CPU setting unless
  `layers == "scanned"`) and (`hf`) HF's models on the same weights. Call after common.set_threads."""
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration
  s = SETTINGS["quick" if quick else "full"]
  m = rb.SETTINGS[s["model"]]
  tok = Tokenizer.tiny()
  config = rb.model_config(tok, m)
  params = rb.biased_params(config, tok, **m["bias"])
  ours_b, hf_b = make_batch(tok, config, s, m)
  B = ours_b["tokens"].shape[0]
  run_config, run_params = (config, params) if layers == "scanned" else vlm.cpu_setting(config, params)
  tx = make_optimizer(OptimConfig(lr=LR, warmup_steps=0, total_steps=10_000, end_lr_ratio=1.0, weight_decay=WD,
                                  clip_norm=CLIP))
  gcfg = grpo.GRPOConfig(num_generations=2, beta=BETA, eps_low=EPS, eps_high=EPS, aggregation="seq_mean_token_mean")
  batch = jax.tree.map(jnp.asarray, ours_b)
  logp0 = np.asarray(jax.jit(functools.partial(sequence_logprobs, config))(params, batch))
  old_logp = (logp0 + 0.1 * np.random.default_rng(1).standard_normal(logp0.shape)).astype(np.float32)
  adv = np.asarray(grpo.group_advantages(jnp.asarray(np.random.default_rng(2).random(B), jnp.float32), 2))
  gbatch = dict(batch, logp=jnp.asarray(old_logp), advantages=jnp.asarray(adv))
  jit_steps = dict(sft=jax.jit(functools.partial(sft_step, run_config), donate_argnums=(0,)),
                   grpo=jax.jit(functools.partial(grpo_step, run_config, gcfg), donate_argnums=(0,)))

  model = ref_model = hf_init = None
  if hf:     # HF on the same weights
    with tempfile.TemporaryDirectory() as d:
      save_pretrained(d, config, params)
      model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).train()
      ref_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    for p in ref_model.parameters():
      p.requires_grad_(False)
    hf_init = {k: v.detach().clone() for k, v in model.state_dict().items()}

  return Built(settings=s, model_settings=m, config=config, params=params, run_config=run_config,
               run_params=run_params, ours_b=ours_b, hf_b=hf_b, batch=batch, gbatch=gbatch, old_logp=old_logp,
               adv=adv, tx=tx, jit_steps=jit_steps, model=model, ref_model=ref_model, hf_init=hf_init)


def side_fn(b: Built, side: str, name: str):
  """(zero-argument callable running one `name` step of `side` ("ours" | "hf"), info): the warm-up step done, its
  timings and step-0 loss in info."""
  if side == "hf":
    fn = b.hf_step(name)
    first_s, _, loss0 = common.timed(fn)
    return fn, dict(first_step_s=round(first_s, 2), loss0=loss0,
                    attn_implementation=b.model.config._attn_implementation)
  bt, kw = b.step_args(name)
  compiled, state, met, info = compile_ours(b.jit_steps[name], b.fresh_state(), bt, **kw)
  box = dict(state=state)

  def fn():
    box["state"], _ = jax.block_until_ready(compiled(box["state"], bt, **kw))
  return fn, dict(info, loss0=float(met["loss"]))


def worker(args):
  """`--worker ours|hf`: one side of one step (`--steps`, a single name) in this process, served to the parent
  (common.serve) after its warm-up step."""
  b = build(args.quick, args.layers, hf=args.worker == "hf")
  common.serve(*side_fn(b, args.worker, args.steps))


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="the ~11M quick model, B=2")
  ap.add_argument("--runs", type=int, default=5, help="timed steps per side, alternated (median and spread)")
  ap.add_argument("--threads", type=int, default=None, help="threads for XLA and torch alike (default: all CPUs)")
  ap.add_argument("--layers", choices=("unrolled", "scanned"), default="unrolled",
                  help="ours: the CPU setting (vlm.cpu_setting: unrolled layers, cpu_layouts) or the scanned default")
  ap.add_argument("--steps", default="sft,grpo")
  ap.add_argument("--allocator", choices=tuple(common.ALLOCATOR_ENV), default="default",
                  help="both sides' glibc malloc settings (common.ALLOCATOR_ENV)")
  ap.add_argument("--worker", choices=("ours", "hf"), default=None,
                  help="internal: run one side of one step in this process (common.Worker)")
  ap.add_argument("--out", default=None)
  return ap.parse_args(argv)


def compile_ours(step_fn, state, batch, **kw):
  """AOT lower + compile (timed apart) and the first step. Returns (compiled, state, metrics, timings)."""
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch, **kw)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  state, met = jax.block_until_ready(compiled(state, batch, **kw))
  t3 = time.perf_counter()
  return compiled, state, met, dict(lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2),
                                    first_run_s=round(t3 - t2, 3), first_step_s=round(t3 - t0, 2))


def main(argv=None):
  """The bench as one script, top to bottom (why one ~80-line function: the thread count must be set, by
  common.set_threads, before jax and torch are imported and create their thread pools, so the imports and every
  setup step come after it, in this order)."""
  args = parse_args(argv)
  threads = common.set_threads(args.threads)
  load_before = common.loadavg()
  import transformers
  transformers.logging.set_verbosity_error()
  if args.worker:
    return worker(args)
  b = build(args.quick, args.layers, hf=False)
  run_config, ours_b, m, s = b.run_config, b.ours_b, b.model_settings, b.settings
  n_params = int(sum(x.size for x in jax.tree.leaves(b.params)))
  B, S = ours_b["tokens"].shape
  ntok = B * S
  res = dict(config=dict(params=n_params, B=B, S=S, tokens_per_step=ntok, loss_tokens=int(ours_b["loss_mask"].sum()),
                         assistant_tokens_per_turn=s["A"], crop_hw=s["crop_hw"],
                         video_pixels=list(ours_b["video_pixels"].shape), obs_pixels=list(ours_b["obs_pixels"].shape),
                         text=m["text"], vision=m["vision"], lr=LR, weight_decay=WD, clip_norm=CLIP, grpo_beta=BETA,
                         grpo_eps=EPS, aggregation="seq_mean_token_mean", dtype="float32", runs=args.runs,
                         quick=args.quick, layers=args.layers, remat=run_config.remat,
                         cpu_layouts=run_config.cpu_layouts, threads=threads))
  print(f"model {n_params / 1e6:.1f}M params; batch {B} x {S} slots; layers {args.layers}; {threads} threads "
        f"(XLA and torch)", flush=True)

  for name in args.steps.split(","):
    argv = [sys.executable, os.path.abspath(__file__), "--steps", name, "--layers", args.layers, "--threads",
            str(threads)] + (["--quick"] if args.quick else [])
    env = common.ALLOCATOR_ENV[args.allocator]
    workers = {side: common.Worker(argv + ["--worker", side], side, env) for side in ("ours", "hf")}  # in turn
    t = common.alternate_workers(workers, args.runs)
    for w in workers.values():
      w.close()
    ours_i, hf_i = workers["ours"].info, workers["hf"].info
    mo, mh = t["ours"]["wall"]["median"], t["hf"]["wall"]["median"]
    res[name] = dict(ours=dict(t["ours"], tokens_per_s=round(ntok / mo, 1),
                               **{k: v for k, v in ours_i.items() if k != "loss0"}),
                     hf=dict(t["hf"], tokens_per_s=round(ntok / mh, 1), first_step_s=hf_i["first_step_s"]),
                     step0_loss=dict(ours=ours_i["loss0"], hf=hf_i["loss0"],
                                     abs_diff=abs(ours_i["loss0"] - hf_i["loss0"])),
                     ours_over_hf=round(mh / mo, 2),
                     ours_over_hf_cpu_time=round(t["hf"]["cpu"]["median"] / t["ours"]["cpu"]["median"], 2))
    print(f"{name}: ours {ntok / mo:8.1f} tok/s (median {mo:.3f} s, {t['ours']['wall']['min']:.3f}-"
          f"{t['ours']['wall']['max']:.3f}), HF {ntok / mh:8.1f} tok/s (median {mh:.3f} s, "
          f"{t['hf']['wall']['min']:.3f}-{t['hf']['wall']['max']:.3f}); ours/HF {mh / mo:.2f}x; first step: ours "
          f"{ours_i['first_step_s']:.1f} s (compile {ours_i['compile_s']:.1f} s), HF {hf_i['first_step_s']:.2f} s; "
          f"step-0 loss ours {ours_i['loss0']:.6f} HF {hf_i['loss0']:.6f}", flush=True)

  res["machine"] = common.machine(threads, load_before=load_before, load_after=common.loadavg(),
                                  xla_eigen_threads=common.xla_threads(), transformers=transformers.__version__,
                                  attn_implementation=hf_i["attn_implementation"], isolation="one process per side",
                                  allocator=args.allocator, allocator_env=common.ALLOCATOR_ENV[args.allocator])
  alloc = "" if args.allocator == "default" else f"_{args.allocator}"
  out = common.write_json(res, f"train_step{'_quick' if args.quick else ''}{alloc}.json", args.out)
  print(f"wrote {out}")
  print("train step tokens/s: " + "; ".join(f"{n.upper()} ours/HF = {res[n]['ours_over_hf']:.2f}x"
                                            for n in args.steps.split(",")))
  return res


if __name__ == "__main__":
  main()
