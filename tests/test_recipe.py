"""The Video-R4 recipe configs, the rollout's row compaction set from the mesh, the featurizers' static output
specs, and train.py's AOT fit check (compiled here for this host's CPU devices: the same code path as a TPU
topology, which needs libtpu; see test_aot_tpu_topology)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from train_fixtures import small_config
from videor4_jax.convert.resolve import ConfigMismatch
from videor4_jax.rumination import config as rollout_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_compact_rows_follows_the_mesh(tmp_path):
  rollout = dict(max_steps=2, max_step_tokens=8, cache_len=128, obs_hw=(28, 28))
  assert rollout_config.from_config(rollout, row_shards=1).compact_rows
  assert not rollout_config.from_config(rollout, row_shards=8).compact_rows
  assert not rollout_config.from_config(dict(rollout, compact_rows=False), row_shards=1).compact_rows
  with pytest.raises(ValueError, match="split over 8 devices"):
    rollout_config.from_config(dict(rollout, compact_rows=True), row_shards=8)
  # The Runner sets it from its mesh: rows over 2 devices -> off; one device -> on.
  from videor4_jax.train.curriculum import Runner
  cfg = small_config(tmp_path / "data")
  assert not Runner(cfg, str(tmp_path / "a"), None).ctx.rollout_cfg.compact_rows
  cfg.mesh_shape = (1, 1, 1)
  assert Runner(cfg, str(tmp_path / "b"), None).ctx.rollout_cfg.compact_rows


@pytest.mark.parametrize("name", ["videor4_7b", "videor4_3b"])
def test_recipe_configs_validate_and_need_a_checkpoint(name, tmp_path):
  from videor4_jax.train.context import stage_optimizer, validate_curriculum, validate_grpo
  from videor4_jax.train.curriculum import Runner
  cfg = load_config(name)
  stages = validate_curriculum(cfg)
  assert stages == ("drp_sft", "rl_d", "crp_sft", "rl_c")
  gcfg, rewards = validate_grpo(cfg, stages)          # every GRPO / reward field is a known, valid one
  assert (gcfg.num_generations, gcfg.beta, gcfg.adv_std_ddof) == (8, 0.04, 1)
  assert rewards["rl_c"].w_div > 0 and rewards["rl_d"].w_div == 0
  for stage in stages:
    stage_optimizer(cfg, stage)
  assert {cfg.stages[s].data for s in stages} == {"videor4_trajectories", "m4_vitevqa/task1_split1"}
  # Without --config.init_from the run is refused (not a random-init model with the built-in tiny tokenizer).
  with pytest.raises(ConfigMismatch, match="init_from"):
    Runner(cfg, str(tmp_path / "run"), None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def test_featurizer_output_specs_equal_what_map_returns(tmp_path, data_dir):
  """The AOT check compiles against the featurizers' output_spec; it must be what the pipeline feeds."""
  from videor4_jax.train.curriculum import Runner
  from videor4_jax.data.features import RlFeaturizer, SftFeaturizer
  from videor4_jax.data.sources import make_source_fn
  cfg = small_config(data_dir)
  cfg.rollout.crop_margin, cfg.pipeline.max_observations = 0.05, 3        # off-default shapes
  runner = Runner(cfg, str(tmp_path / "run"), None)
  row = make_source_fn(cfg.data)("train")[0]
  for feat in (RlFeaturizer(runner.pcfg, runner.processor),
               SftFeaturizer(runner.pcfg, runner.processor, runner.ctx.rollout_cfg, runner.config)):
    out = feat.map(row)
    got = {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in out.items()}
    want = {k: (tuple(s), np.dtype(d)) for k, (s, d) in feat.output_spec().items()}
    assert got == want, type(feat).__name__


def test_aot_cpu_compiles_the_runs_functions_with_the_pipelines_shapes(tmp_path, data_dir, capsys):
  """`train.py --aot_topology=cpu`'s path: every stage's function compiled once per distinct graph, with the
  shapes of the batches the Runner's own pipelines produce, params split over the mesh's fsdp axis."""
  import jax
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.train import aot
  cfg = small_config(data_dir)
  cfg.mesh_shape = (1, 2, 1)                 # FSDP over 2 devices, as the recipe shards (over every chip)
  cfg.curriculum = "drp_sft,crp_sft,rl_d"    # three graphs (the eval rollout is the rollout's, greedy)
  report = aot.compile_run(cfg, "cpu")
  by_graph = {g.graph: g for g in report["graphs"]}
  assert sorted(by_graph) == ["grpo_step", "rollout", "sft_step"]
  assert by_graph["sft_step"].stages == ["drp_sft", "crp_sft"]        # one graph, two stages
  assert report["fits"] and "[aot] everything fits" in capsys.readouterr().out
  # The compiled arguments are what we describe: per-device bytes of the abstract state and batch.
  run = aot.abstract_run(cfg, jax.devices())
  state, batch = aot._sft_args(run, "drp_sft")
  assert by_graph["sft_step"].argument_bytes == aot.device_bytes((state, batch))
  whole = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(run.params))
  assert aot.device_bytes(run.params) < 0.75 * whole            # split over fsdp, not replicated
  # The batches the Runner's pipelines produce have the AOT shapes.
  from videor4_jax.train.curriculum import _sft_batch, rl_stream, sft_stream
  source_fn = make_source_fn(cfg.data)
  sft = aot._sft_args(run, "drp_sft")[1]
  real = next(sft_stream(run.ctx, source_fn, "drp_sft"))
  assert {k: v.shape for k, v in _sft_batch(real).items()} == {k: v.shape for k, v in sft.items()}
  prompts = aot._rollout_args(run, cfg.stages.rl_d.batch_size)[1]
  real = next(rl_stream(run.ctx, source_fn, "rl_d"))
  assert {k: (real[k].shape, real[k].dtype) for k in prompts} == {k: (v.shape, v.dtype) for k, v in prompts.items()}


def test_aot_exits_nonzero_when_something_does_not_fit(monkeypatch, tmp_path):
  from videor4_jax.train import aot
  g = aot.GraphReport("sft_step", ["s"], argument_bytes=10, output_bytes=5, alias_bytes=5, temp_bytes=4,
                      resident_bytes=2, hbm_bytes=15, compile_s=0.0)
  assert g.peak_bytes == 16 and not g.fits
  sys.path.insert(0, ROOT)
  import train
  monkeypatch.setattr(aot, "compile_run", lambda cfg, topology, explicit, graphs: dict(graphs=[g], fits=False))
  with pytest.raises(SystemExit) as e:
    train.aot_check(None, str(tmp_path), "v5p:2x2x4", set())
  assert e.value.code == 1 and os.path.isfile(tmp_path / "aot_v5p_2x2x4.json")


def _has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has_libtpu(), reason="needs libtpu: pip install -e '.[tpu-aot]' (a separate environment)")
@pytest.mark.parametrize("recipe", ["videor4_7b", "videor4_3b"])
def test_aot_tpu_topology_recipe_fits_v5p(tmp_path, qwen_tokenizer_dir, recipe):
  """The README's figures: configs/videor4_{7b,3b}.py compiled for v5p:2x2x4 through train.py fit its HBM."""
  import json
  from qwen_real import copy_tokenizer_dir
  from videor4_jax.convert.hf import config_to_hf_dict
  from videor4_jax.model.config import model_config_from_dict
  skeleton = copy_tokenizer_dir(qwen_tokenizer_dir, str(tmp_path / "ckpt"))    # config + processor, no weights
  with open(os.path.join(skeleton, "config.json"), "w") as f:
    json.dump(config_to_hf_dict(model_config_from_dict(dict(load_config(recipe).model))), f)
  r = subprocess.run([sys.executable, "train.py", "--config", f"configs/{recipe}.py", f"--config.init_from={skeleton}",
                      "--workdir", str(tmp_path / "w"), "--aot_topology=v5p:2x2x4"], cwd=ROOT, capture_output=True,
                     text=True, timeout=3600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "[aot] everything fits" in r.stdout
