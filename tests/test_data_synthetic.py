"""Synthetic task: determinism, schema of gold trajectories, config validation, and legibility by view."""
import json

import numpy as np
import pytest

from videor4_jax.data import glyphs, schema, synthetic


CFG = synthetic.SyntheticConfig()


def test_deterministic_and_distinct():
  a, b = synthetic.generate(CFG, 3, 7), synthetic.generate(CFG, 3, 7)
  np.testing.assert_array_equal(a.frames_fhw3, b.frames_fhw3)
  assert a.trajectory == b.trajectory
  c = synthetic.generate(CFG, 4, 7)
  assert not np.array_equal(a.frames_fhw3, c.frames_fhw3)
  assert a.frames_fhw3.shape == (8, 224, 224, 3) and a.frames_fhw3.dtype == np.uint8


@pytest.mark.parametrize("qtype,kind,ops", [("crop", "deliberate", ["crop"]), ("clip", "deliberate", ["clip"]),
                                            ("clip_crop", "compositional", ["clip", "crop"])])
def test_gold_trajectory_points_at_the_text(qtype, kind, ops):
  for i in range(5):
    ex = synthetic.generate(CFG, 0, i, question_type=qtype)
    t = ex.trajectory
    assert t.kind == kind and [a.name for a in t.actions] == ops
    assert t.steps[-1].answer == t.answers[0] == t.evidence["code"]
    # JSON round trip through the schema.
    assert schema.from_json(json.loads(t.dumps()), num_frames=CFG.num_frames) == t
    # The code is drawn where the gold actions look: ink colour present in the gold cell on gold frames only.
    ink = np.array(synthetic.PALETTE[t.evidence["colour"]][1])
    x1, y1, x2, y2 = (np.array(t.evidence["boxes"][0]) * 224).astype(int)
    has_ink = [bool((np.abs(f[y1:y2, x1:x2].astype(int) - ink).sum(-1) == 0).sum() > 5) for f in ex.frames_fhw3]
    assert [i + 1 for i, h in enumerate(has_ink) if h] == t.evidence["frames"]
    for a in t.actions:
      if a.name == "clip":
        assert list(a.frames) == t.evidence["frames"]
      else:
        assert a.frame in t.evidence["frames"] and list(a.bbox_2d) == t.evidence["boxes"][0]


def test_rl_row():
  r = synthetic.generate(CFG, 0, 1).rl_row()
  assert r.kind == "rl" and r.steps == () and schema.validate(r) is r


@pytest.mark.parametrize("kw,msg", [
    (dict(global_hw=(112, 112)), "readable without rumination"),
    (dict(obs_hw=(56, 56)), "readable without rumination"),          # clip text would need scale 4
    (dict(grid=(3, 3)), "must divide"),
    (dict(num_distractors=4), "num_distractors"),
    (dict(alphabet="0a"), "cannot draw"),
    (dict(flash_len=(2, 5)), "flash_len"),
    (dict(code_len=(1, 9)), "does not fit"),
])
def test_config_validation(kw, msg):
  with pytest.raises(ValueError, match=msg):
    synthetic.SyntheticConfig(**kw)


def test_obs56_crop_only_is_valid():
  cfg = synthetic.SyntheticConfig(obs_hw=(56, 56), question_types=("crop",))
  assert cfg.crop_text_scale == 2


def _pair(code_a, code_b, scale, seed):
  """The same video (same background, noise, jitter) with two different codes on the one sign."""
  out = []
  for code in (code_a, code_b):
    rng = np.random.default_rng(seed)
    out.append(synthetic.render_video(CFG, rng, [dict(cell=0, colour="red", code=code, scale=scale, frames=None)])[0])
  return out


def _views():
  """The three views as the pipeline makes them: the global view by the processor's resize (processing/image.py,
  as load_video), a crop of the sign's cell and a one-frame clip by the rollout's pixel ops (their host entry
  points, which equal the in-graph ones: tests/test_data_features.py)."""
  import jax.numpy as jnp
  from videor4_jax.processing.image import resize_bicubic
  from videor4_jax.rumination import pixel_ops
  box = jnp.asarray(CFG.cell_box(0), jnp.float32)
  crop = lambda f: np.asarray(pixel_ops.crop_host(jnp.asarray(f[None]), 1, box, out_hw=CFG.obs_hw)[0])
  clip = lambda f: np.asarray(pixel_ops.clip_host(jnp.asarray(f[None]), jnp.asarray([1]), 1, out_hw=CFG.obs_hw)[0][0])
  glob = lambda f: resize_bicubic(f, CFG.global_hw).astype(np.float32)
  return crop, clip, glob


@pytest.mark.parametrize("a,b", [("18", "10"), ("3", "8"), ("123", "723"), ("0", "8"), ("47", "41")])
def test_legible_only_after_rumination(a, b):
  """Two codes differ clearly in the rumination observation and hardly in the global view.

  Measured with the default config over these 5 code pairs x render seeds 0, 1, 2, 3, 5 (25 videos each): crop
  text, peak |diff| 222-231 in the crop vs 9-39 in the global view, summed |diff| ratio 30-42; clip text, peak
  |diff| 81-180 in the re-encoded frame, summed |diff| ratio 3.9-6.2 over the global view. Bounds: below the
  smallest measured value by a margin (crop peak 200, global peak 60, crop ratio 20; clip peak 60, ratio 3).
  """
  crop, clip, glob = _views()
  for seed in (0, 1, 2, 3, 5):
    fa, fb = _pair(a, b, CFG.crop_text_scale, seed)
    d_crop, d_glob = np.abs(crop(fa) - crop(fb)), np.abs(glob(fa) - glob(fb))
    assert d_crop.max() >= 200 and d_glob.max() <= 60, (seed, d_crop.max(), d_glob.max())
    assert d_crop.sum() >= 20 * d_glob.sum(), (seed, d_crop.sum() / d_glob.sum())
    fa, fb = _pair(a, b, CFG.clip_text_scale, seed)
    d_clip, d_glob = np.abs(clip(fa) - clip(fb)), np.abs(glob(fa) - glob(fb))
    assert d_clip.max() >= 60 and d_clip.sum() >= 3 * d_glob.sum(), (seed, d_clip.max(), d_clip.sum() / d_glob.sum())


def test_glyphs_render():
  m = glyphs.render_code("10", 3)
  assert m.shape == glyphs.code_size(2, 3) == (21, 33)
  assert not m[:, 15:18].any()  # the one-column gap between glyphs, scaled
  assert len({g.tobytes() for g in glyphs.GLYPHS.values()}) == len(glyphs.GLYPHS)  # every glyph distinct


def test_text_plate_and_tight_gold_box():
  """The tiny config's task: a tight gold box (0.16 of a cell) that holds only the plate and the black code."""
  cfg = synthetic.SyntheticConfig(crop_text_px=2.0, crop_box_frac=0.16, jitter_px=0, obs_hw=(28, 28), code_len=(1, 1),
                                  text_plate=True, num_distractors=1, question_types=("crop", "clip_crop"))
  assert cfg.crop_text_scale == 2 and cfg.gold_box(0) == (0.21, 0.21, 0.29, 0.29)
  for qtype in ("crop", "clip_crop"):
    for i in range(4):
      ex = synthetic.generate(cfg, 0, i, question_type=qtype)
      t = ex.trajectory
      x1, y1, x2, y2 = (np.array(t.evidence["boxes"][0]) * 224).round().astype(int)
      assert t.actions[-1].bbox_2d == cfg.gold_box(t.evidence["cell"])
      for f, frame in enumerate(ex.frames_fhw3):
        region = frame[y1:y2, x1:x2].astype(int)
        ink = (region.max(-1) < 60).sum()            # black glyph pixels
        plate = (region.min(-1) > 200).sum()         # light plate pixels (texture noise std 6)
        assert ink + plate >= 0.97 * region[..., 0].size, (qtype, i, f)   # nothing of the sign inside the box
        assert (ink > 10) == (f + 1 in t.evidence["frames"]), (qtype, i, f)


def test_plate_flashes_with_its_text():
  """plate_flashes: a flashing code's plate shows on exactly the code's frames; everything else is unchanged."""
  kw = dict(crop_text_px=2.0, crop_box_frac=0.16, jitter_px=0, obs_hw=(28, 28), code_len=(1, 1), text_plate=True,
            num_distractors=1, question_types=("crop", "clip_crop"))
  static, flashing = synthetic.SyntheticConfig(**kw), synthetic.SyntheticConfig(**kw, plate_flashes=True)
  checked = 0
  for i in range(8):
    a, b = (synthetic.generate(c, 0, i, question_type="clip_crop") for c in (static, flashing))
    assert a.trajectory == b.trajectory
    if synthetic.PALETTE[b.trajectory.evidence["colour"]][0] == synthetic.PLATE_RGB:
      continue    # a white sign's plate cannot be seen, flashing or not
    checked += 1
    x1, y1, x2, y2 = (np.array(b.trajectory.evidence["boxes"][0]) * 224).round().astype(int)
    for f in range(8):
      shown = f + 1 in b.trajectory.evidence["frames"]
      assert np.array_equal(a.frames_fhw3[f], b.frames_fhw3[f]) == shown, (i, f)   # identical while shown
      ink_or_plate = (b.frames_fhw3[f, y1:y2, x1:x2].min(-1) > 200) | (b.frames_fhw3[f, y1:y2, x1:x2].max(-1) < 60)
      assert (ink_or_plate.mean() > 0.5) == shown, (i, f)           # no plate at all while the code is hidden
    c, d = (synthetic.generate(cfg, 0, i, question_type="crop") for cfg in (static, flashing))
    np.testing.assert_array_equal(c.frames_fhw3, d.frames_fhw3)   # a code shown on every frame keeps a static plate
  assert checked >= 4


@pytest.mark.parametrize("kw,msg", [(dict(crop_box_frac=0.0), "crop_box_frac"),
                                    (dict(crop_box_frac=0.05), "gold crop box"),
                                    (dict(crop_text_px=4.0, crop_box_frac=0.5, obs_hw=(84, 84)), "0.75-px strokes")])
def test_gold_box_and_legibility_validation(kw, msg):
  """0.75-px strokes in the global view (scale 3 at 4x smaller) were legible by eye: refused by default."""
  with pytest.raises(ValueError, match=msg):
    synthetic.SyntheticConfig(**{**dict(question_types=("crop",)), **kw})


FLAWED = dict(crop_text_px=2.0, crop_box_frac=0.16, jitter_px=0, obs_hw=(28, 28), code_len=(1, 1), text_plate=True,
              name_position=True, num_distractors=1, question_types=("crop", "clip_crop"), flash_len=(2, 2),
              name_time=True, confusable_frac=0.5, teacher_flaw_prob=0.75)


@pytest.mark.parametrize("windows", ["inner", "all"])
def test_flawed_teacher_takes_the_stated_wrong_actions(windows):
  """The imperfect teacher (data/teacher.py): on crop questions naming a neighbouring sign it crops that neighbour
  and reads its code with probability p = 0.75; on clip_crop questions about an inner window it clips the adjacent
  outer window and guesses (with clip_flaw_windows="all" also the window beside the first / last one); elsewhere
  it is right. Gold answers stay right; the right action follows from the question (named position and window),
  and the images show what each action would see."""
  cfg = synthetic.SyntheticConfig(**FLAWED, clip_flaw_windows=windows)
  wrong_frames = {1: [1, 2], 2: [7, 8]} if windows == "inner" else {0: [3, 4], 1: [1, 2], 2: [7, 8], 3: [5, 6]}
  counts = {("crop", True): [0, 0], ("crop", False): [0, 0], ("clip_crop", True): [0, 0], ("clip_crop", False): [0, 0]}
  for i in range(300):
    ex = synthetic.generate(cfg, 0, i)
    t, ev = ex.trajectory, ex.trajectory.evidence
    assert t.answers == (ev["code"],)
    flawed, act = ev["teacher_flawed"], t.actions
    if ex.question_type == "crop":
      nb = ev["distractors"][0]
      assert (", next to the " + nb["colour"] + " sign?" in t.question) == ev["confusable"]
      if ev["confusable"]:
        assert nb["cell"] == cfg.neighbour_cell(ev["cell"])
      want_cell, want_code = (nb["cell"], nb["code"]) if flawed else (ev["cell"], ev["code"])
      assert act[0].bbox_2d == cfg.gold_box(want_cell) and t.steps[-1].answer == want_code
      counts["crop", ev["confusable"]][flawed] += 1
    else:
      k = ev["window"]
      inner = k in wrong_frames
      assert synthetic.teacher.window_name(k, 4) in t.question and ev["frames"] == [2 * k + 1, 2 * k + 2]
      on = np.abs(ex.frames_fhw3.astype(int) - ex.frames_fhw3[[f for f in range(8) if f + 1 not in ev["frames"]][0]]
                  ).sum((1, 2, 3)) > 0
      assert [f + 1 for f in range(8) if on[f]] == ev["frames"]       # the text shows on the named window only
      wrong = wrong_frames.get(k)
      assert list(act[0].frames) == (wrong if flawed else ev["frames"])
      assert act[1].frame in act[0].frames and act[1].bbox_2d == cfg.gold_box(ev["cell"])
      assert (t.steps[-1].answer != ev["code"]) == flawed
      counts["clip_crop", inner][flawed] += 1
  assert windows == "inner" or sum(counts["clip_crop", False]) == 0         # "all": every window is flawed
  for key in (("crop", False), ("clip_crop", False)):
    assert counts[key][1] == 0, counts                   # never wrong outside the stated subsets
  for key in (("crop", True), ("clip_crop", True)):
    n = sum(counts[key])
    assert n >= 40 and abs(counts[key][1] / n - 0.75) < 0.15, counts


@pytest.mark.parametrize("kw,msg", [(dict(num_distractors=0), "needs a sign beside the target"),
                                    (dict(name_position=False), "name_position=True"),
                                    (dict(teacher_flaw_prob=1.5), "teacher_flaw_prob"),
                                    (dict(clip_flaw_windows="outer"), "clip_flaw_windows"),
                                    (dict(flash_len=(2, 5), max_clip_frames=5), "name_time needs")])
def test_flaw_knobs_validate(kw, msg):
  with pytest.raises(ValueError, match=msg):
    synthetic.SyntheticConfig(**{**FLAWED, **kw})
