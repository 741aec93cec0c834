"""KV-cache sampler: a jitted prefill and an on-device decode loop.

One turn of generation is two jitted calls:

  prefill: the new tokens [B, T] (a left-padded prompt, or a tool observation
    plus the next assistant header appended to an existing cache) run in one
    forward pass that writes their keys/values into the cache and returns the
    logits of each row's last real token.
  decode: a single `lax.while_loop` samples a token per row, records its
    log-prob, checks stop tokens and stop strings, and feeds the token back,
    until every row has stopped or `max_new_tokens` is reached. Nothing crosses
    to the host inside the loop.

Multi-turn episodes keep one cache: `sample(..., cache=out.cache)` appends the
next tokens after everything already generated, so turn k costs a prefill of
its new tokens only. `init_cache` allocates the whole episode's capacity once.

Groups (G samples per prompt, as GRPO needs) prefill each prompt once and
repeat its cache G times inside the decode call; group members are adjacent
rows `b * G + g`.

Stop strings are matched on device over the *bytes* the tokens spell, so a
string is found whatever tokenization the model chose (`</tool_call>` as one
added token or as `</`, `tool`, `_call`, `>`): `StopCriteria.create` compiles
each string into a KMP automaton over bytes and then into a table
`[state, token] -> state` that runs a whole token's bytes in one lookup.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mosaic_jax import sharding
from mosaic_jax.models.decoder import Decoder, KVCache

# --------------------------------------------------------------- strategies --


class Strategy(Protocol):
  """Picks the next token of each row from its logits."""

  def sample(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    """[B, V] float32 logits, [B] PRNG keys (one a row) -> [B] int32 ids.

    A row's draw depends on its own key and logits only, so it is the same
    whatever else is in the batch (how many rows, on how many processes).
    """


def _per_row(keys: jax.Array, logits: jax.Array) -> jax.Array:
  """[B] int32 draws from softmax(logits) `[B, N]`, row b with keys[b]."""
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def row_keys(key: jax.Array, rows: jax.Array) -> jax.Array:
  """[B] keys fold_in(key, rows[b]): a row's key from its index in the
  whole batch (`rollout` passes global row indices)."""
  return jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)


@dataclasses.dataclass(frozen=True)
class Greedy:
  """The most likely token (ties go to the lowest id, as torch.argmax)."""

  def sample(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    del keys
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
  """A draw from softmax(logits / temperature)."""
  temperature: float = 1.0

  def sample(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    return _per_row(keys, logits / self.temperature)


@dataclasses.dataclass(frozen=True)
class TopK:
  """A draw among the k most likely tokens, at `temperature`."""
  k: int
  temperature: float = 1.0

  def sample(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    top_logits, top_ids = jax.lax.top_k(logits, self.k)
    choice = _per_row(keys, top_logits / self.temperature)
    return jnp.take_along_axis(top_ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus sampling: a draw among the smallest set of most likely tokens
  whose probability (at `temperature`) reaches p; the top token always stays."""
  p: float
  temperature: float = 1.0

  def sample(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    scaled = logits / self.temperature
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Mass strictly before each token: a token is kept while that is < p.
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(before < self.p, sorted_logits, -jnp.inf)
    choice = _per_row(keys, kept)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


# How a decode step runs the layers (`SamplingConfig.layers`).
DECODE_LAYERS = ("unrolled", "scan")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static settings of one decode call (hashable: part of the jit key).

  Attributes:
    max_new_tokens: tokens generated per row at most (the output width).
    strategy: Greedy(), Temperature(t), TopK(k, t) or TopP(p, t).
    pad_id: token written after a row stops (and for inactive rows).
    layers: how a decode step runs the L blocks. 'unrolled' (default): a
      Python loop over per-layer weights sliced once per call, outside the
      loop, so a step reads each weight and the used cache window once
      (docs/benchmarks.md). 'scan': the stacked-weight `lax.scan` of
      training, which copies every weight per layer per token but compiles
      in time independent of depth. Same tokens either way.
  """
  max_new_tokens: int
  strategy: Strategy = Greedy()
  pad_id: int = 0
  layers: str = "unrolled"

  def __post_init__(self):
    if self.layers not in DECODE_LAYERS:
      raise ValueError(f"SamplingConfig.layers {self.layers!r}: use one of "
                       f"{DECODE_LAYERS}")


# ------------------------------------------------------------ stop criteria --


def _kmp_automaton(pattern: bytes) -> np.ndarray:
  """[m+1, 257] KMP automaton over bytes; state m (matched) is absorbing.

  Column 256 is the padding symbol, which leaves every state unchanged, so
  tokens of different byte lengths run through one padded array.
  """
  m = len(pattern)
  dfa = np.zeros((m + 1, 257), np.int32)
  dfa[:, 256] = np.arange(m + 1)
  dfa[m, :256] = m
  dfa[0, pattern[0]] = 1
  restart = 0
  for j in range(1, m):
    dfa[j, :256] = dfa[restart, :256]
    dfa[j, pattern[j]] = j + 1
    restart = dfa[restart, pattern[j]]
  return dfa


def _string_table(pattern: bytes, token_bytes: Sequence[bytes],
                  states: int) -> np.ndarray:
  """[states, V] state after reading each token's bytes from each state."""
  width = max(1, max(len(b) for b in token_bytes))
  padded = np.full((len(token_bytes), width), 256, np.int32)
  for i, b in enumerate(token_bytes):
    padded[i, :len(b)] = np.frombuffer(b, np.uint8)
  dfa = _kmp_automaton(pattern)
  m = len(pattern)
  state = np.broadcast_to(np.arange(m + 1)[:, None], (m + 1, len(token_bytes)))
  for j in range(width):
    state = dfa[state, padded[None, :, j]]
  table = np.zeros((states, len(token_bytes)), np.int32)
  table[:m + 1] = state
  return table


@flax.struct.dataclass
class StopCriteria:
  """Stop tokens and stop strings, as arrays the decode loop reads on device.

  Attributes:
    token_ids: [N] int32 ids whose sampling ends a row (e.g. end of turn).
    string_table: [S, Q, V] int16: the state of stop string s's automaton
      after reading a token's bytes; state = bytes of s matched so far.
    string_lengths: [S] int32 byte length of each string (its matched state).
  """
  token_ids: jax.Array
  string_table: jax.Array
  string_lengths: jax.Array

  @classmethod
  def create(cls, vocab_size: int, stop_tokens: Sequence[int] = (),
             stop_strings: Sequence[str] = (),
             token_bytes: Sequence[bytes] | None = None) -> "StopCriteria":
    """Builds the criteria (host numpy; do it once per tokenizer and strings).

    Args:
      vocab_size: V, the model's vocabulary (rows past the tokenizer's own
        vocabulary spell no bytes).
      stop_tokens: token ids that end a row.
      stop_strings: strings that end a row as soon as the generated text
        contains them; the token that completes the string is kept.
      token_bytes: the bytes each token id spells (`token_bytes(tokenizer)`);
        required with stop_strings.
    """
    patterns = [s.encode("utf-8") for s in stop_strings]
    if any(not p for p in patterns):
      raise ValueError("stop strings must be non-empty")
    if patterns and token_bytes is None:
      raise ValueError("stop_strings need token_bytes (see token_bytes())")
    states = max((len(p) for p in patterns), default=0) + 1
    if states > np.iinfo(np.int16).max:
      raise ValueError("stop strings longer than 32766 bytes are not supported")
    if patterns:
      spelled = list(token_bytes)[:vocab_size]
      spelled += [b""] * (vocab_size - len(spelled))
      table = np.stack([_string_table(p, spelled, states) for p in patterns])
    else:
      table = np.zeros((0, states, vocab_size), np.int32)
    return cls(token_ids=jnp.asarray(np.asarray(stop_tokens, np.int32).reshape(-1)),
               string_table=jnp.asarray(table.astype(np.int16)),
               string_lengths=jnp.asarray([len(p) for p in patterns], jnp.int32))

  def initial_state(self, batch: int) -> jax.Array:
    """[B, S] int32: nothing of any stop string matched yet."""
    return jnp.zeros((batch, self.string_table.shape[0]), jnp.int32)

  def step(self, state: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Advances the string automata by one token per row.

    Args:
      state: [B, S] automaton states; tokens: [B] sampled ids.

    Returns:
      (new state [B, S], stop [B] bool: a stop token or a completed string).
    """
    strings = jnp.arange(self.string_table.shape[0])[None, :]
    state = self.string_table[strings, state, tokens[:, None]].astype(jnp.int32)
    hit = jnp.any(state == self.string_lengths[None, :], axis=-1)
    hit |= jnp.any(tokens[:, None] == self.token_ids[None, :], axis=-1)
    return state, hit


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character map used by byte-level BPE vocabs."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def token_bytes(tokenizer) -> list[bytes]:
  """The bytes each token id spells, for a Hugging Face tokenizer.

  Byte-level BPE tokens (Qwen, Phi-4, the tiny tokenizer) map back through
  GPT-2's byte table; added tokens (`<|im_end|>`, `</tool_call>`) spell their
  content. Partial UTF-8 sequences keep their exact bytes, so stop strings
  with non-ASCII characters match across token boundaries too.
  """
  decoder = {c: b for b, c in _bytes_to_unicode().items()}
  added = {t.content for t in tokenizer.get_added_vocab_tokens()} if hasattr(
      tokenizer, "get_added_vocab_tokens") else set(tokenizer.get_added_vocab())
  pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
  out = []
  for piece in pieces:
    if piece is None:
      out.append(b"")
    elif piece in added or not all(c in decoder for c in piece):
      out.append(piece.encode("utf-8"))
    else:
      out.append(bytes(decoder[c] for c in piece))
  return out


# -------------------------------------------------------------------- cache --


_CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


def init_cache(model: Decoder, batch: int, length: int) -> KVCache:
  """An empty cache with room for `length` tokens per row.

  Allocate the whole episode at once (prompt + every observation + every
  turn's max_new_tokens), so multi-turn continuation never re-allocates.
  Under `sharding.use_mesh`, the batch is sharded like the activations.
  """
  cache = KVCache.init(model.cfg, batch, length)
  mesh = sharding.active_mesh()
  if mesh is None:
    return cache
  # Shape-aware: a batch or kv_heads that a mesh axis does not divide is
  # replicated instead of failing the constraint.
  put = lambda x, axes: jax.device_put(
      x, sharding.logical_sharding(axes, x.shape, mesh, what="kv cache"))
  return KVCache(k=put(cache.k, _CACHE_AXES), v=put(cache.v, _CACHE_AXES),
                 valid=put(cache.valid, ("batch", "cache_length")),
                 index=put(cache.index, ()), pos=put(cache.pos, ("batch",)))


def repeat_cache(cache: KVCache, group_size: int) -> KVCache:
  """Each row repeated G times along the batch: row b -> rows b*G .. b*G+G-1."""
  rep = functools.partial(jnp.repeat, repeats=group_size)
  return KVCache(k=rep(cache.k, axis=1), v=rep(cache.v, axis=1),
                 valid=rep(cache.valid, axis=0), index=cache.index,
                 pos=rep(cache.pos, axis=0))


# ---------------------------------------------------------------- sampling --


@flax.struct.dataclass
class SampleOutput:
  """One turn of generation.

  Attributes:
    tokens: [B, N] int32 generated ids; pad_id after a row stopped.
    logprobs: [B, N] float32 log-prob of each generated token under the
      model's unscaled distribution (softmax of the logits, no temperature or
      filtering: the policy log-prob RL losses need); 0 after a row stopped.
    lengths: [B] int32 tokens generated per row, the stop token included.
    stopped: [B] bool, the row ended on a stop token or string (not on
      max_new_tokens, and not because it was inactive).
    cache: the cache holding the prompt and every generated token, ready for
      the next turn.
  """
  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  stopped: jax.Array
  cache: KVCache


def _last_logits(model: Decoder, hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, V] float32 logits at each row's last real token ([B, T, D] hidden)."""
  t = mask.shape[1]
  last = t - 1 - jnp.argmax(mask[:, ::-1].astype(jnp.int32), axis=1)
  h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  return jnp.einsum("bd,dv->bv", h, model.unembedding()).astype(jnp.float32)


def attention_window(needed: int, capacity: int, minimum: int = 128) -> int:
  """Cache slots a call attends to: `needed` rounded up to a power of two.

  Attention then costs O(slots in use) instead of O(capacity), and the power
  of two bounds the number of compiled shapes by log2(capacity).
  """
  window = minimum
  while window < needed:
    window *= 2
  return min(window, capacity)


# The cache is donated: its input buffers become the output's, so every turn
# updates the (large) cache in place instead of holding two copies.
@functools.partial(jax.jit, static_argnames=("graphdef", "window"),
                   donate_argnames=("cache",))
def _prefill(graphdef, state, tokens, mask, cache, window):
  model = nnx.merge(graphdef, state)
  hidden, cache = model(tokens, mask=mask, cache=cache, cache_window=window,
                        return_hidden=True)
  return _last_logits(model, hidden, mask), cache


@flax.struct.dataclass
class _Loop:
  """The decode loop's carry."""
  step: jax.Array
  logits: jax.Array
  cache: KVCache
  tokens: jax.Array
  logprobs: jax.Array
  done: jax.Array
  stopped: jax.Array
  lengths: jax.Array
  string_state: jax.Array


def _decode(graphdef, state, logits, cache, key, active, stops, config, group_size,
            window):
  model = nnx.merge(graphdef, state)
  if group_size > 1:
    logits = jnp.repeat(logits, group_size, axis=0)
    cache = repeat_cache(cache, group_size)
    active = jnp.repeat(active, group_size, axis=0)
  b, n = logits.shape[0], config.max_new_tokens
  rows = jnp.arange(b)
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # raw uint32 key data
  keys = row_keys(key, rows) if key.ndim == 0 else key
  # Sliced here, once per call: inside the loop the per-layer weights and
  # kv-head-major windows are buffers that every step reads in place.
  full_cache, layers = cache, None
  if config.layers == "unrolled":
    layers = model.blocks.per_layer()
    cache = cache.windowed(window)

  def cond(c: _Loop):
    return (c.step < n) & ~jnp.all(c.done)

  def body(c: _Loop):
    live = ~c.done
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, c.step)
    token = config.strategy.sample(c.logits, step_keys)
    token = jnp.where(live, token, config.pad_id)
    logp = jax.nn.log_softmax(c.logits, axis=-1)[rows, token]
    string_state, hit = stops.step(c.string_state, token)
    hit &= live
    # The sampled token (a stop token included) joins the cache so the next
    # turn continues after it; rows already done write an invalid slot.
    hidden, cache = model(token[:, None], mask=live[:, None], cache=c.cache,
                          cache_window=None if layers is not None else window,
                          return_hidden=True, layer_params=layers)
    logits = jnp.einsum("bd,dv->bv", hidden[:, 0], model.unembedding())
    return _Loop(
        step=c.step + 1, logits=logits.astype(jnp.float32), cache=cache,
        tokens=jax.lax.dynamic_update_slice(c.tokens, token[:, None], (0, c.step)),
        logprobs=jax.lax.dynamic_update_slice(
            c.logprobs, jnp.where(live, logp, 0.0)[:, None], (0, c.step)),
        done=c.done | hit, stopped=c.stopped | hit,
        lengths=c.lengths + live.astype(jnp.int32), string_state=string_state)

  init = _Loop(step=jnp.zeros((), jnp.int32), logits=logits, cache=cache,
               tokens=jnp.full((b, n), config.pad_id, jnp.int32),
               logprobs=jnp.zeros((b, n), jnp.float32), done=~active,
               stopped=jnp.zeros((b,), bool), lengths=jnp.zeros((b,), jnp.int32),
               string_state=stops.initial_state(b))
  out = jax.lax.while_loop(cond, body, init)
  cache = (full_cache.merge_window(out.cache) if layers is not None
           else out.cache)
  return SampleOutput(tokens=out.tokens, logprobs=out.logprobs, lengths=out.lengths,
                      stopped=out.stopped, cache=cache)


_STATIC = ("graphdef", "config", "group_size", "window")
# Donated: the loop writes every generated token into the cache in place.
_decode_in_place = jax.jit(_decode, static_argnames=_STATIC, donate_argnames=("cache",))
# A group's [B*G]-row cache cannot reuse the [B]-row prompt cache's buffers.
_decode_groups = jax.jit(_decode, static_argnames=_STATIC)

# The jitted calls `prefill`/`decode` run and the cache's logical axes, public
# for ahead-of-time lowering with abstract inputs (experiments/plan.py).
PREFILL_JIT = _prefill
DECODE_JIT = _decode_in_place
DECODE_GROUPS_JIT = _decode_groups
CACHE_AXES = _CACHE_AXES


def prefill(model: Decoder, tokens: jax.Array, mask: jax.Array,
            cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Appends tokens to the cache in one forward pass (the cache is donated).

  Args:
    tokens: [B, T] int32 new tokens: a left-padded prompt, or the next
      observation of each row (left- or right-padded; holes are masked).
    mask: [B, T] 1 for real tokens; every row needs one (see `sample`'s
      `active` for rows that take no new tokens).
    cache: [B]-row cache with room for T more tokens.

  Returns:
    (logits [B, V] float32 of each row's last real token, the updated cache).
  """
  capacity, index = cache.capacity, int(cache.index)
  if index + tokens.shape[1] > capacity:
    raise ValueError(f"cache holds {capacity} slots; {index} used, "
                     f"{tokens.shape[1]} more requested")
  graphdef, state = nnx.split(model)
  return _prefill(graphdef, state, jnp.asarray(tokens, jnp.int32),
                  jnp.asarray(mask, bool), cache,
                  attention_window(index + tokens.shape[1], capacity))


def decode(model: Decoder, logits: jax.Array, cache: KVCache, key: jax.Array,
           config: SamplingConfig, stops: StopCriteria | None = None,
           active: jax.Array | None = None, group_size: int = 1) -> SampleOutput:
  """Samples up to `config.max_new_tokens` per row on device (cache donated).

  Args:
    logits: [B, V] next-token logits (from `prefill`).
    cache: the cache those logits came from, with max_new_tokens free slots.
    key: a PRNG key, or `[B*G]` keys, one a row (after the group repeat);
      a single key gives row r the key fold_in(key, r). Step i samples row
      r with fold_in(key_r, i). Pass fresh keys every turn.
    config: static settings (one compile per config and shape).
    stops: stop tokens and strings (default: none).
    active: [B] bool rows to generate for (default all); inactive rows
      produce pad and leave the cache untouched (finished episodes).
    group_size: G; rows are repeated G times (row b -> rows b*G + g) before
      decoding, sharing one prefill.

  Returns:
    SampleOutput with [B*G] rows.
  """
  b = logits.shape[0]
  if int(cache.index) + config.max_new_tokens > cache.capacity:
    raise ValueError(f"cache holds {cache.capacity} slots; {int(cache.index)} used, "
                     f"{config.max_new_tokens} more may be generated")
  stops = stops if stops is not None else StopCriteria.create(logits.shape[-1])
  active = jnp.ones((b,), bool) if active is None else jnp.asarray(active, bool)
  graphdef, state = nnx.split(model)
  run = _decode_in_place if group_size == 1 else _decode_groups
  window = attention_window(int(cache.index) + config.max_new_tokens, cache.capacity)
  return run(graphdef, state, logits, cache, key, active, stops, config, group_size,
             window)


def sample(model: Decoder, tokens: jax.Array, mask: jax.Array, cache: KVCache,
           key: jax.Array, config: SamplingConfig, stops: StopCriteria | None = None,
           active: jax.Array | None = None, group_size: int = 1) -> SampleOutput:
  """Prefills `tokens` into `cache`, then decodes: one turn of generation.

  The first turn passes a fresh cache (`init_cache`) and left-padded prompts
  [B, T]; later turns pass the previous output's cache and each row's new
  tokens (observation + next assistant header), so the history is never
  re-run. With group_size G the prompts are prefilled once and the returned
  rows (and cache) are [B*G]; continue such a group with [B*G]-row tokens.

  Rows with no new tokens (all-zero mask) must be marked inactive.
  """
  logits, cache = prefill(model, tokens, mask, cache)
  return decode(model, logits, cache, key, config, stops, active, group_size)
