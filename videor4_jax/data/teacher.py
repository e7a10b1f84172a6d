"""The teacher of the synthetic task's gold trajectories: flawless, or with the systematic flaws of a real one.

Real chain-of-thought data (Video-R4's is synthesized by a teacher model from evidence) is imperfect, and the
method's claim is that RL goes beyond its demonstrations. `SyntheticConfig.teacher_flaw_prob` = p makes the teacher
of this task wrong in two stated, plausible ways, each on a subset of questions the question itself identifies:

  crop questions naming a neighbouring sign ("... at the top left, next to the blue sign?"): with probability p
    the teacher is drawn to the neighbour, says the sign is there, crops the neighbour's box and reads the
    neighbour's code (a wrong answer read off a real crop);
  clip_crop questions about an inner time window (name_time, e.g. "in the second quarter"): with probability p
    the teacher anchors on the nearer end of the video, clips the adjacent outer window, crops the named sign on
    a frame of that clip (a blank plate: the text is not shown there) and guesses a code. With
    `clip_flaw_windows="all"` it is also off by one on the first and last windows (it clips the window beside
    them): a teacher whose temporal localisation is one window off everywhere.

The right action always follows from the question (the position and the window are named), so a policy can learn
it; with p > 0.5 SFT learns the teacher's mixture and greedy decoding takes the wrong action, while sampling at
temperature 1 still takes the right one with probability ~1 - p: GRPO's groups then hold both outcomes, and the
accuracy reward says which is right. The gold *answers* (the reward's and the evaluation's labels) stay correct;
only the demonstrated steps are flawed.
"""
from __future__ import annotations

from videor4_jax.data.schema import Action, Step

WINDOW_NAMES = {2: ("first half", "second half"), 3: ("first third", "middle third", "last third"),
                4: ("first quarter", "second quarter", "third quarter", "last quarter")}


def window_name(k: int, n: int) -> str:
  return WINDOW_NAMES[n][k] if n in WINDOW_NAMES else f"window {k + 1} of {n}"


def window_frames(k: int, length: int) -> tuple[int, ...]:
  """1-based frames of fixed window k of `length` frames."""
  return tuple(range(k * length + 1, (k + 1) * length + 1))


def flawed_window(k: int, n: int, windows: str = "inner") -> int | None:
  """The window the flawed teacher clips instead of window k: for an inner window the adjacent one towards the
  nearer end; for the first or last window (windows="all" only) the one beside it. None: the teacher is right on
  k (an outer window under windows="inner")."""
  if 0 < k < n - 1:
    return k - 1 if k <= (n - 1) / 2 else k + 1
  if windows == "all" and n >= 2:
    return 1 if k == 0 else n - 2
  return None


def crop_steps(colour: str, pos: str, frame: int, box, code: str) -> tuple[Step, ...]:
  """Deliberate trajectory: crop the sign at `pos` (box) on `frame`, read `code`."""
  return (Step(f"The {colour} sign is {pos}; too small. Crop.", Action("crop", frame=frame, bbox_2d=box)),
          Step(f"It reads {code}.", answer=code))


def clip_steps(colour: str, clip_frames, code: str) -> tuple[Step, ...]:
  return (Step(f"The {colour} sign has text on a few frames. Clip.", Action("clip", frames=tuple(clip_frames))),
          Step(f"It reads {code}.", answer=code))


def clip_crop_steps(colour: str, pos: str, clip_frames, box, code: str) -> tuple[Step, ...]:
  """Compositional trajectory: clip `clip_frames`, crop the sign on the clip's middle frame, read `code`."""
  frame = clip_frames[len(clip_frames) // 2]
  return (Step(f"The {colour} sign has text on a few frames. Clip.", Action("clip", frames=tuple(clip_frames))),
          Step(f"Text on frame {frame}, {pos}; too small. Crop.", Action("crop", frame=frame, bbox_2d=box)),
          Step(f"It reads {code}.", answer=code))
