"""One grammar: encode -> automaton path -> in-graph parse round trips, for an atomic-piece and a char tokenizer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import AddedToken, Tokenizer as HFTokenizer

from videor4_jax.processing import grammar as g
from videor4_jax.processing.tokenizer import SPECIAL_TOKENS, Tokenizer

K = 4
NUM_FRAMES = 12


def char_tokenizer():
  """Like a real tokenizer for the grammar: every literal piece is a multi-token path (no atomic pieces)."""
  vocab = {"[UNK]": 0}
  for c in ["\n"] + [chr(i) for i in range(32, 127)]:
    vocab[c] = len(vocab)
  tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  return Tokenizer(tok)


TOKENIZERS = {"tiny": Tokenizer.tiny(), "chars": char_tokenizer()}
AUTOS = {k: g.build_automaton(t, K) for k, t in TOKENIZERS.items()}


@functools.lru_cache(maxsize=None)
def _walker(name):
  auto, tok = AUTOS[name], TOKENIZERS[name]

  @jax.jit
  def walk(tokens, valid):
    def body(state, x):
      t, v = x
      ok = g.allowed_tokens(auto, state[None], tok.vocab_size)[0, t]
      return jnp.where(v, g.step(auto, state[None], t[None])[0], state), ok | ~v
    final, oks = jax.lax.scan(body, jnp.int32(g.OUTSIDE_CALL), (tokens, valid))
    return jnp.all(oks), g.accepts(auto, final[None])[0], g.parse_tokens(auto, tokens, valid, num_frames=NUM_FRAMES)
  return walk


def _pad(ids, n=160):
  return jnp.asarray(ids + [0] * (n - len(ids))), jnp.asarray([True] * len(ids) + [False] * (n - len(ids)))


coord = st.integers(0, 99).map(lambda v: v / 100)
crop_actions = st.builds(lambda f, b: {"name": "crop", "frame": f, "bbox_2d": b}, st.integers(1, 99),
                         st.lists(coord, min_size=4, max_size=4))
clip_actions = st.builds(lambda fs: {"name": "clip", "frames": fs}, st.lists(st.integers(1, 99), min_size=1,
                                                                                max_size=K))


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@settings(max_examples=40, deadline=None)
@given(action=st.one_of(crop_actions, clip_actions), think=st.text("abc xyz.", max_size=8))
def test_encode_walk_parse_round_trip(name, action, think):
  tok = TOKENIZERS[name]
  ids = tok.encode(f"<think>{think}</think>") + g.encode_action(tok, action)
  assert tok.decode(g.encode_action(tok, action)) == g.action_text(action)
  all_allowed, accepted, parsed = _walker(name)(*_pad(ids))
  assert bool(all_allowed) and bool(accepted)
  host, host_err = g.parse_action_text(tok.decode(ids), num_frames=NUM_FRAMES, max_frames=K)
  assert int(parsed.error) == int(host_err)
  if action["name"] == "crop":
    assert int(parsed.kind) == g.KIND_CROP and int(parsed.frame) == action["frame"]
    np.testing.assert_allclose(np.asarray(parsed.box), action["bbox_2d"], atol=1e-6)
  else:
    n = len(action["frames"])
    assert int(parsed.kind) == g.KIND_CLIP and int(parsed.num_frames) == n
    assert np.asarray(parsed.frames)[:n].tolist() == action["frames"]


@functools.lru_cache(maxsize=None)
def _dist_to_accept(name):
  """Fewest tokens from each state to the accept state (BFS on the reversed edges); -1 = accept unreachable."""
  auto = AUTOS[name]
  dist = np.full(auto.edge_tok.shape[0], -1)
  dist[auto.accept] = 0
  frontier = [auto.accept]
  while frontier:
    nxt = []
    for s in np.nonzero(dist < 0)[0]:
      targets = auto.edge_next[s][auto.edge_tok[s] >= 0]
      if any(t in frontier for t in targets):
        dist[s] = dist[frontier[0]] + 1
        nxt.append(s)
    frontier = nxt
  return dist


@pytest.mark.parametrize("finish", [True, False])
@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@settings(max_examples=25, deadline=None)
@given(choices=st.lists(st.integers(0, 10_000), max_size=100))
def test_random_walks_on_the_automaton_always_parse(name, finish, choices):
  """Any path the automaton allows parses without exception and without NaN: cut anywhere it is MALFORMED; finished
  along the shortest path to accept it is accepted and the in-graph parse equals the host parse of its text."""
  auto, tok = AUTOS[name], TOKENIZERS[name]
  dist = _dist_to_accept(name)
  state, ids = g.CALL_START, [tok.tool_call_start_id]

  def take(i):
    nonlocal state
    ids.append(int(auto.edge_tok[state][i]))
    state = int(auto.edge_next[state][i])

  for c in choices:
    live = np.nonzero(auto.edge_tok[state] >= 0)[0]
    if not len(live):
      break
    take(live[c % len(live)])
  if finish:
    assert dist[state] >= 0, "every state the automaton reaches can still finish the call"
    while state != auto.accept:
      live = np.nonzero(auto.edge_tok[state] >= 0)[0]
      take(next(i for i in live if dist[auto.edge_next[state][i]] == dist[state] - 1))
  assert len(ids) <= 200
  all_allowed, accepted, parsed = _walker(name)(*_pad(ids, 200))
  assert bool(all_allowed)
  assert np.all(np.isfinite(np.asarray(parsed.box)))
  if state == auto.accept:
    assert bool(accepted)
    host, host_err = g.parse_action_text(tok.decode(ids), num_frames=NUM_FRAMES, max_frames=K)
    assert int(parsed.error) == int(host_err)
    if host_err == g.ActionError.OK and host["name"] == "crop":
      assert int(parsed.kind) == g.KIND_CROP and int(parsed.frame) == host["frame"]
      np.testing.assert_allclose(np.asarray(parsed.box), host["bbox_2d"], atol=1e-6)
    elif host_err == g.ActionError.OK:
      assert int(parsed.kind) == g.KIND_CLIP and np.asarray(parsed.frames)[:int(parsed.num_frames)].tolist() == \
          host["frames"]
  else:
    assert not finish
    assert not bool(accepted) and int(parsed.error) == g.ActionError.MALFORMED


def test_off_grammar_token_is_dead_and_malformed():
  tok, auto = TOKENIZERS["tiny"], AUTOS["tiny"]
  ids = g.encode_action(tok, {"name": "crop", "frame": 2, "bbox_2d": [0.1, 0.1, 0.5, 0.5]})
  ids[5] = tok.encode("z")[0]
  _, accepted, parsed = _walker("tiny")(*_pad(ids))
  assert not bool(accepted) and int(parsed.error) == g.ActionError.MALFORMED


@pytest.mark.parametrize("text,err", [
    ('<tool_call>{"name": "crop", "arguments": {"frame": 13, "bbox_2d": [0.1, 0.1, 0.2, 0.2]}}</tool_call>',
     g.ActionError.FRAME_OUT_OF_RANGE),
    ('<tool_call>{"name": "crop", "arguments": {"frame": 1, "bbox_2d": [0.5, 0.1, 0.2, 0.2]}}</tool_call>',
     g.ActionError.BOX_INVALID),
    ('<tool_call>{"name": "crop", "arguments": {"frame": 1, "bbox_2d": [NaN, 0.1, 0.2, 0.2]}}</tool_call>',
     g.ActionError.BOX_INVALID),
    ('<tool_call>{"name": "clip", "arguments": {"frames": [1, 2, 3, 4, 5]}}</tool_call>',
     g.ActionError.TOO_MANY_FRAMES),
    ('<tool_call>{"name": "clip", "arguments": {"frames": []}}</tool_call>', g.ActionError.NO_FRAMES),
    ('<tool_call>{"name": "delete", "arguments": {}}</tool_call>', g.ActionError.UNKNOWN_TOOL),
    ('<tool_call>{"name": "crop", "arguments": {"frame": 1}}</tool_call>', g.ActionError.MALFORMED),
    ('<tool_call>__import__("os")</tool_call>', g.ActionError.MALFORMED),
    ("no call at all", g.ActionError.MALFORMED),
])
def test_host_parse_error_codes(text, err):
  _, e = g.parse_action_text(text, num_frames=NUM_FRAMES, max_frames=K)
  assert e == err
