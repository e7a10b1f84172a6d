import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
md("""# videor4_jax quickstart

Video-R4 in JAX: a Qwen2.5-VL-shaped model that reads small text in videos by *ruminating* (think, crop or clip,
re-encode the pixels, think again). This notebook trains a small model on the built-in synthetic text-video task
for a few minutes on a CPU (a free Colab is enough), shows a rumination trace with the crop boxes drawn, and loads
the exported HF-format checkpoint into the pure functional model.

In Colab, first install the package from your clone of the repository, e.g.
`!git clone <your fork of videor4_jax> && pip install -e videor4_jax` and `%cd videor4_jax`."""),
code("""import os, sys
# The test suite runs this notebook with VIDEOR4_NOTEBOOK_SMALL=1 (a few steps); leave it unset to train for real.
SMALL = os.environ.get("VIDEOR4_NOTEBOOK_SMALL") == "1"
ROOT = os.environ.get("VIDEOR4_ROOT", os.getcwd() if os.path.exists("configs") else os.path.dirname(os.getcwd()))
WORKDIR = os.environ.get("VIDEOR4_WORKDIR", os.path.join(ROOT, "runs", "colab"))
sys.path.insert(0, os.path.join(ROOT, "configs"))
os.chdir(ROOT)
import jax, numpy as np
print(jax.devices())"""),
md("## A smaller config\nThe default `configs/tiny.py` with fewer steps; every field can be changed here."),
code("""import tiny
cfg = tiny.get_config()
cfg.data.data_dir = os.path.join(WORKDIR, "data")
cfg.data.num_train, cfg.data.num_test = (16, 4) if SMALL else (200, 24)
cfg.curriculum = "drp_sft,rl_d"
cfg.stages.drp_sft.steps = 2 if SMALL else 150
cfg.stages.rl_d.steps = 1 if SMALL else 5
if SMALL:
  cfg.rollout.max_steps, cfg.rollout.max_step_tokens, cfg.rollout.cache_len = 2, 48, 512
  cfg.grpo.num_generations = 2
  cfg.mesh_shape = (1, 1, 1)
  for s in cfg.stages.values():
    s.batch_size = 2
cfg.eval.num_examples = cfg.data.num_test
cfg.eval.batch_size = 4
cfg.log_every = 25
print(cfg.stages)"""),
md("## Train (SFT then GRPO) and evaluate after each stage"),
code("""from videor4_jax.data.sources import make_source_fn
from videor4_jax.train.curriculum import Runner
runner = Runner(cfg, WORKDIR, make_source_fn(cfg.data))
tok = runner.processor.tokenizer            # the one processor every part of the run uses
report = runner.run()
for stage, r in report["stages"].items():
  print(stage, {m: round(r[m]["accuracy"], 3) for m in r})
print("final checkpoint:", report["final_checkpoint"])"""),
md("## A rumination trace: what the model looked at"),
code("""import dataclasses
from IPython.display import Image, display
from videor4_jax.eval.loop import evaluate
from videor4_jax.eval.trace import write_trace_report
from videor4_jax.eval.trace_records import trace_records
from videor4_jax.convert.hf import from_pretrained
config, params = from_pretrained(report["final_checkpoint"])
pcfg = dataclasses.replace(runner.pcfg, batch_size=4)
results, kept = evaluate(runner.env, params, runner.processor, make_source_fn(cfg.data)("test"), pcfg, num_examples=4,
                         keep_batches=True)
page = write_trace_report(os.path.join(WORKDIR, "trace"), trace_records(kept, results["questions"], tok, runner.env, 2))
q = results["questions"][0]
print(q["question"], "gold:", q["golds"], "prediction:", q["prediction"], "actions:", q["actions"])
pngs = sorted(f for f in os.listdir(os.path.dirname(page)) if f.endswith(".png"))
for f in pngs[:3]:
  display(Image(filename=os.path.join(os.path.dirname(page), f)))
print("open", page, "in a browser for the whole report")"""),
md("## The pure functional model on an HF-format checkpoint"),
code("""import jax.numpy as jnp
import videor4_jax
from videor4_jax.processing import chat
config, params = videor4_jax.from_pretrained(report["final_checkpoint"])
ids, _ = chat.prompt_ids(tok, "What is written on the red sign?", 0, chat.TINY_SYSTEM_PROMPT)
ids = [i for i in ids if i not in (tok.vision_start_id, tok.vision_end_id)]
logits = jax.jit(lambda p, x: videor4_jax.forward(config, p, x))(params, jnp.asarray([ids]))
print("logits", logits.shape, "next token:", repr(tok.decode([int(logits[0, -1].argmax())])))"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "colab/quickstart.ipynb")
