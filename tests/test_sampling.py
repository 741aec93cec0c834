"""KV-cache sampler: parity with transformers generate, padding invariance,
log-probs, multi-turn continuation, groups, stop strings, sharded params."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from mosaic_jax import models, sampling, sharding
from mosaic_jax.agent import tokenizer as tokenizer_lib
from tests import hf_models

MAX_NEW = 10
PAD = 0
# Fixed shapes, so the jitted prefill / decode / forward compile once per
# model and batch size and are reused across tests.
WIDTH = 12  # prompts are left-padded to this width
CAPACITY = WIDTH + MAX_NEW
HISTORY = 64  # full-forward width (left-padded)


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "phi3", "llama"])
def family_models(request, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp(request.param))
  hf = hf_models.make_hf_model(request.param, directory)
  return hf, models.from_pretrained(directory)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("qwen3_sampler"))
  # Same config as the parity fixture's qwen3: the jitted functions' cache
  # keys (graphdef and shapes) match, so compiles are shared.
  hf_models.make_hf_model("qwen3", directory, seed=1)
  return directory, models.from_pretrained(directory)


def _prompts(lengths, seed):
  """Random prompts left-padded to WIDTH: ids, mask [B, WIDTH] int32."""
  ids, mask, _ = hf_models.left_padded_batch(256, lengths, seed=seed)
  pad = ((0, 0), (WIDTH - ids.shape[1], 0))
  return np.pad(ids, pad), np.pad(mask, pad)


def _stops(token=-1, **kwargs):
  """One stop token; -1 never matches but keeps the shapes of a real one."""
  return sampling.StopCriteria.create(256, stop_tokens=[token], **kwargs)


def _greedy(max_new=MAX_NEW):
  return sampling.SamplingConfig(max_new_tokens=max_new, pad_id=PAD)


def _sample(model, ids, mask, config, *, stops=None, key=0, group_size=1):
  cache = sampling.init_cache(model, ids.shape[0], CAPACITY)
  return sampling.sample(model, jnp.asarray(ids), jnp.asarray(mask), cache,
                         jax.random.key(key), config, stops or _stops(),
                         group_size=group_size)


@functools.partial(jax.jit, static_argnums=0)
def _forward_logprobs(graphdef, state, ids, mask):
  return jax.nn.log_softmax(nnx.merge(graphdef, state)(ids, mask=mask), -1)


def _full_logprobs(model, rows: list[list[int]]) -> list[np.ndarray]:
  """Log-softmax [len(row), V] of a cache-free forward pass over each row."""
  graphdef, state = nnx.split(model)
  out = []
  for start in range(0, len(rows), 4):
    chunk = rows[start:start + 4]
    ids = np.zeros((4, HISTORY), np.int32)
    mask = np.zeros((4, HISTORY), np.int32)
    for i, r in enumerate(chunk):
      ids[i, HISTORY - len(r):], mask[i, HISTORY - len(r):] = r, 1
    logp = np.asarray(_forward_logprobs(graphdef, state, ids, mask))
    out += [logp[i, HISTORY - len(r):] for i, r in enumerate(chunk)]
  return out


def _real(ids_row, mask_row) -> list[int]:
  return [int(x) for x, m in zip(ids_row, mask_row) if m]


# ----------------------------------------------------- transformers parity --


@pytest.mark.parametrize("lengths", [[7], [9, 4, 7, 6]], ids=["b1", "b4"])
def test_greedy_tokens_equal_transformers_generate(family_models, lengths):
  hf, model = family_models
  ids, mask = _prompts(lengths, seed=3)
  # EOS: a token row 0 greedily produces mid-way, so rows stop early (and at
  # different steps) in both implementations.
  eos = int(_sample(model, ids, mask, _greedy()).tokens[0, 4])
  ours = _sample(model, ids, mask, _greedy(), stops=_stops(eos))
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long),
                      do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos,
                      pad_token_id=PAD)
  ref = ref[:, ids.shape[1]:].numpy()
  ref = np.pad(ref, ((0, 0), (0, MAX_NEW - ref.shape[1])), constant_values=PAD)
  np.testing.assert_array_equal(np.asarray(ours.tokens), ref)
  hit = (ref == eos).argmax(1)
  expected_len = np.where((ref == eos).any(1), hit + 1, MAX_NEW)
  assert expected_len[0] <= 5
  np.testing.assert_array_equal(np.asarray(ours.lengths), expected_len)
  np.testing.assert_array_equal(np.asarray(ours.stopped), (ref == eos).any(1))


# ------------------------------------------------ padding and log-probs --


def test_prompt_alone_equals_prompt_in_padded_batch(qwen3):
  _, model = qwen3
  ids, mask = _prompts([9, 4, 7, 6], seed=5)
  batched = _sample(model, ids, mask, _greedy())
  alone_ids, alone_mask = _prompts([4], seed=0)
  alone_ids[0, -4:] = ids[1, -4:]
  alone = _sample(model, alone_ids, alone_mask, _greedy())
  np.testing.assert_array_equal(np.asarray(batched.tokens[1]), np.asarray(alone.tokens[0]))
  np.testing.assert_allclose(np.asarray(batched.logprobs[1]), np.asarray(alone.logprobs[0]),
                             atol=1e-5)


def _top_k_rank_ok(logp, token, k):
  return (logp > logp[token]).sum() < k


def _top_p_mass_ok(logp, token, p, temperature):
  scaled = jax.nn.log_softmax(logp / temperature)
  return np.exp(scaled[scaled > scaled[token]]).sum() < p


@pytest.mark.parametrize("strategy", [sampling.Greedy(), sampling.TopK(3, 1.5),
                                      sampling.TopP(0.5, 1.2)],
                         ids=["greedy", "topk", "topp"])
def test_logprobs_equal_full_forward(qwen3, strategy):
  _, model = qwen3
  ids, mask = _prompts([9, 4, 7, 6], seed=6)
  out = _sample(model, ids, mask, sampling.SamplingConfig(MAX_NEW, strategy, PAD), key=7)
  rows = [_real(ids[i], mask[i]) + [int(x) for x in out.tokens[i]] for i in range(4)]
  for i, (row, logp) in enumerate(zip(rows, _full_logprobs(model, rows))):
    p = len(row) - MAX_NEW
    ref = logp[np.arange(p - 1, len(row) - 1), row[p:]]
    np.testing.assert_allclose(np.asarray(out.logprobs[i]), ref, atol=1e-4)
    # Every drawn token was allowed by the strategy.
    for j in range(p, len(row)):
      if isinstance(strategy, sampling.TopK):
        assert _top_k_rank_ok(logp[j - 1], row[j], strategy.k)
      if isinstance(strategy, sampling.TopP):
        assert _top_p_mass_ok(logp[j - 1], row[j], strategy.p, strategy.temperature)
  if not isinstance(strategy, sampling.Greedy):
    greedy = _sample(model, ids, mask, _greedy())
    assert (np.asarray(out.tokens) != np.asarray(greedy.tokens)).any()


# ------------------------------------------------------------ continuation --


def test_continuation_equals_rerunning_the_history(qwen3):
  _, model = qwen3
  ids, mask = _prompts([9, 4, 7, 5], seed=11)
  obs_width, turns = 6, 3
  capacity = WIDTH + turns * MAX_NEW + (turns - 1) * obs_width
  config = sampling.SamplingConfig(MAX_NEW, sampling.TopK(20, 1.0), PAD)
  free = sampling.sample(model, jnp.asarray(ids), jnp.asarray(mask),
                         sampling.init_cache(model, 4, capacity), jax.random.key(1),
                         config, _stops())
  # Stop row 1 on its 3rd token so rows end at different slots.
  stops = _stops(int(free.tokens[1, 2]))
  out = sampling.sample(model, jnp.asarray(ids), jnp.asarray(mask),
                        sampling.init_cache(model, 4, capacity), jax.random.key(1),
                        config, stops)
  assert int(out.lengths[1]) <= 3
  history = [_real(ids[i], mask[i]) + [int(x) for x in out.tokens[i, :out.lengths[i]]]
             for i in range(4)]
  rng = np.random.RandomState(12)
  # Observations of different lengths per row, right- then left-padded; in
  # the last turn row 3's episode is over: no new tokens, inactive.
  for turn, (obs_lengths, right_pad) in enumerate([([6, 2, 4, 3], True),
                                                   ([3, 5, 1, 0], False)]):
    obs = np.zeros((4, obs_width), np.int32)
    obs_mask = np.zeros((4, obs_width), np.int32)
    for i, n in enumerate(obs_lengths):
      cols = slice(0, n) if right_pad else slice(obs_width - n, obs_width)
      obs[i, cols], obs_mask[i, cols] = rng.randint(1, 256, n), 1
    active = np.array(obs_lengths) > 0
    cache_before = (np.asarray(out.cache.k[:, 3]), np.asarray(out.cache.pos[3]))
    logits, cache = sampling.prefill(model, jnp.asarray(obs), jnp.asarray(obs_mask),
                                     out.cache)
    history = [h + _real(obs[i], obs_mask[i]) for i, h in enumerate(history)]
    ref = _full_logprobs(model, history)
    np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(logits, -1))[active],
                               np.stack([r[-1] for r in ref])[active], atol=1e-5)
    out = sampling.decode(model, logits, cache, jax.random.key(2 + turn), config, stops,
                          active=jnp.asarray(active))
    history = [h + [int(x) for x in out.tokens[i, :out.lengths[i]]]
               for i, h in enumerate(history)]
    # This turn's log-probs equal a from-scratch forward over the episode.
    for i, (h, logp) in enumerate(zip(history, _full_logprobs(model, history))):
      n = int(out.lengths[i])
      ref_lp = logp[np.arange(len(h) - n - 1, len(h) - 1), h[len(h) - n:]]
      np.testing.assert_allclose(np.asarray(out.logprobs[i, :n]), ref_lp, atol=1e-4)
  # The finished row generated nothing and its cache entries are unchanged.
  assert int(out.lengths[3]) == 0 and (np.asarray(out.tokens[3]) == PAD).all()
  assert int(out.cache.pos[3]) == int(cache_before[1]) == len(history[3])
  np.testing.assert_array_equal(np.asarray(out.cache.valid[3]).sum(), len(history[3]))
  assert int(out.cache.index) <= capacity


# ------------------------------------------------------------------ groups --


def test_group_rows_share_one_prefill(qwen3):
  _, model = qwen3
  ids, mask = _prompts([9, 4, 7, 6], seed=14)
  greedy = _sample(model, ids, mask, _greedy())
  grouped = _sample(model, ids, mask, _greedy(), group_size=2)
  np.testing.assert_array_equal(np.asarray(grouped.tokens),
                                np.repeat(np.asarray(greedy.tokens), 2, axis=0))
  sampled = _sample(model, ids, mask, sampling.SamplingConfig(MAX_NEW, sampling.Temperature(2.0)),
                    group_size=2, key=3)
  tokens = np.asarray(sampled.tokens).reshape(4, 2, MAX_NEW)
  assert all((tokens[b, 0] != tokens[b, 1]).any() for b in range(4))
  rows = [_real(ids[r // 2], mask[r // 2]) + [int(x) for x in sampled.tokens[r]]
          for r in range(8)]
  for r, (row, logp) in enumerate(zip(rows, _full_logprobs(model, rows))):
    p = len(row) - MAX_NEW
    np.testing.assert_allclose(np.asarray(sampled.logprobs[r]),
                               logp[np.arange(p - 1, len(row) - 1), row[p:]], atol=1e-4)


# ------------------------------------------------------------ stop strings --


def _first_containing(pieces: list[bytes], needle: bytes) -> int:
  text = b""
  for i, piece in enumerate(pieces):
    text += piece
    if needle in text:
      return i
  return -1


def test_stop_string_automaton_matches_brute_force():
  rng = np.random.RandomState(0)
  alphabet = [b"a", b"b", b"<", b"/", b"t", b">"]
  token_bytes = [b""] + [b"".join(rng.choice(alphabet, rng.randint(1, 4)))
                         for _ in range(63)]
  strings = ["</t>", "aab", "b"]
  stops = sampling.StopCriteria.create(64, stop_strings=strings, token_bytes=token_bytes)
  step = jax.jit(stops.step)
  seqs = rng.randint(0, 64, size=(200, 12))
  state = stops.initial_state(200)
  first = np.full((200,), -1)
  for j in range(12):
    state, hit = step(state, jnp.asarray(seqs[:, j], jnp.int32))
    first = np.where((first < 0) & np.asarray(hit), j, first)
  for i in range(200):
    pieces = [token_bytes[t] for t in seqs[i]]
    expect = min((k for k in (_first_containing(pieces, s.encode()) for s in strings)
                  if k >= 0), default=-1)
    assert first[i] == expect, (i, pieces)


def test_sampler_stops_on_a_string_spanning_tokens(qwen3):
  _, model = qwen3
  ids, mask = _prompts([9, 4, 7, 6], seed=15)
  t = np.asarray(_sample(model, ids, mask, _greedy()).tokens)
  token_bytes = [b"<%d>" % i for i in range(256)]
  # The end of row 1's 3rd token and the start of its 4th: only the text
  # spells it, no single token does.
  needle = (b"%d><%d" % (t[1, 2], t[1, 3])).decode()
  out = _sample(model, ids, mask, _greedy(),
                stops=_stops(stop_strings=[needle], token_bytes=token_bytes))
  for i in range(4):
    k = _first_containing([token_bytes[x] for x in t[i]], needle.encode())
    n = k + 1 if k >= 0 else MAX_NEW
    assert int(out.lengths[i]) == n and bool(out.stopped[i]) == (k >= 0)
    np.testing.assert_array_equal(np.asarray(out.tokens[i, :n]), t[i, :n])
    assert (np.asarray(out.tokens[i, n:]) == PAD).all()
  assert int(out.lengths[1]) <= 4


def test_token_bytes_spell_the_tiny_tokenizer_text():
  tok = tokenizer_lib.load_tiny_tokenizer()
  spelled = sampling.token_bytes(tok)
  text = "<tool_call>{\"name\": \"send\"}</tool_call> café ünï\n<|im_end|>"
  ids = tok.encode(text, add_special_tokens=False)
  assert b"".join(spelled[i] for i in ids) == text.encode("utf-8")
  stops = sampling.StopCriteria.create(len(spelled), stop_strings=["</tool_call>", "é ü"],
                                       token_bytes=spelled)
  state, hits = stops.initial_state(1), []
  for i in ids:
    state, hit = stops.step(state, jnp.array([i], jnp.int32))
    hits.append(bool(hit[0]))
  pieces = [spelled[i] for i in ids]
  assert hits.index(True) == _first_containing(pieces, b"</tool_call>")
  assert hits[_first_containing(pieces, "é ü".encode())]


# ---------------------------------------------------------------- sharding --


def test_sharded_params_sample_the_same_tokens(qwen3):
  directory, model = qwen3
  mesh = jax.make_mesh((2, 1, 2), ("data", "fsdp", "tensor"), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  sharded = models.from_pretrained(directory, mesh=mesh)
  assert not sharded.blocks.wq_ldnh[...].sharding.is_fully_replicated
  ids, mask = _prompts([9, 4, 7, 6], seed=16)
  expected = _sample(model, ids, mask, _greedy())
  with sharding.use_mesh(mesh):
    out = _sample(sharded, ids, mask, _greedy())
  assert out.cache.k.sharding.spec[1] in ("data", ("data", "fsdp"))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(expected.tokens))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(expected.logprobs),
                             atol=1e-5)
