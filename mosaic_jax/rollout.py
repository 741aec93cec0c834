"""Batched multi-turn rollouts: sampler <-> environments -> `Trajectories`.

N = len(tasks) * G episodes run at once (row n plays task n // G; the rows of
a group are adjacent). Each turn:

  1. the policy continues every live episode: the model prefills each row's
     new tokens into one KV cache and decodes on device, and only the
     generated ids, their log-probs and lengths come back to the host;
  2. each row's ids are decoded and parsed (`parse_turn`), and its
     environment steps;
  3. the text between the end of that assistant turn and the next generation
     prompt (tool result + next assistant header) is rendered with the chat
     template, tokenized, and becomes the row's new tokens for the next turn.

Token stream of one episode, and its masks:

  prompt = render([system, user], tools, add_generation_prompt=True)   mask 0
  turn k = the ids as sampled, stop token included                     mask 1
  delta k = render.observation_delta(tool k): the end of the assistant
            turn (unless its ids ended with eos), the tool result and the
            next generation prompt, rendered alone                     mask 0

Only each new turn's delta is rendered and tokenized (token-in, token-out):
earlier ids are never re-rendered or re-tokenized, so what the trainer sees
is exactly what was sampled, also under a template that rewrites history
when it renders a whole conversation (Qwen3-Thinking drops or re-spaces the
reasoning of earlier turns). For a template that keeps history verbatim the
deltas equal the differences between successive full renderings
(tests/test_rollout_families.py).

Limits (each a `RolloutConfig` field; hitting one ends the episode as invalid,
never with an exception): `max_turns`; `max_tokens_per_turn` (a turn that ends
without a stop token is recorded as an `InvalidAction` and the episode ends);
`max_total_length` (the episode's tokens; an episode whose next observation
plus a full turn would not fit ends before it).

Fixed shapes, so nothing recompiles across turns: one cache of
`cache_capacity(config)` slots is allocated per rollout; the new tokens of a
turn are left-padded to a power-of-two bucket (at least `min_bucket`, at most
`max_total_length`), one prefill compile per bucket; finished rows stay in the
batch as inactive rows fed one pad token, and cost no decode steps (the decode
loop ends when every live row has stopped). The cache is shared-index (all
rows write the same slot), so before each continuation `compact_cache`
right-aligns each live row's real tokens at slot `max(real tokens)`: holes
left by shorter rows never accumulate, which is what bounds the capacity.

Multi-host: process p steps rows [p*N/P, (p+1)*N/P) (whole groups) and the
arrays are assembled into global ones; host metadata stays per process.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax import distributed, sampling, sections
from mosaic_jax.agent import protocol, render as render_lib
from mosaic_jax.agent.actions import (InvalidAction, ParsedTurn,
                                      turns_from_json, turns_to_json,
                                      replace_surrogates)
from mosaic_jax.agent.parse import parse_turn
from mosaic_jax.envs import tasks as tasks_lib
from mosaic_jax.envs import verifiers
from mosaic_jax.envs.base import Environment
from mosaic_jax.envs.records import EpisodeRecord
from mosaic_jax.models.decoder import Decoder, KVCache

# Why an episode ended (`EpisodeInfo.end_reason`); all but "terminal" leave
# the episode invalid: limits, and "env_error" (the environment raised on a
# turn; the turn is recorded as an `InvalidAction` with the reason, the
# verdict's details say `env_error`, and the rollout goes on).
END_REASONS = ("terminal", "max_turns", "max_tokens_per_turn",
               "max_total_length", "env_error")


@dataclasses.dataclass(frozen=True)
class RolloutConfig(sections.Section):
  """Limits and sampling of a rollout (hashable; `from_config` reads c.rollout).

  Attributes:
    max_turns: assistant turns per episode at most.
    max_tokens_per_turn: tokens one assistant turn may generate.
    max_total_length: T, the tokens of a whole episode (the Trajectories width).
    group_size: G episodes per task.
    strategy: greedy | temperature | top_k | top_p.
    temperature: sampling temperature (all but greedy).
    top_k: k of top_k.
    top_p: p of top_p.
    seed: turn t samples global row r with fold_in(fold_in(key(seed), t),
      r) (`sampling.row_keys`), so a row's draws are the same whatever the
      process count.
    stop_strings: strings that end a turn besides the eos token.
    min_bucket: smallest padded width of a turn's new tokens.
  """
  max_turns: int = 8
  max_tokens_per_turn: int = 256
  max_total_length: int = 4096
  group_size: int = 1
  strategy: str = "temperature"
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop_strings: tuple[str, ...] = ()
  min_bucket: int = 16

  SECTION = "rollout"
  STRATEGIES = ("greedy", "temperature", "top_k", "top_p")

  @classmethod
  def field_problems(cls, values: Mapping[str, Any]) -> list[str]:
    """Positive limits, a turn that fits an episode, a known strategy."""
    p: list[str] = []
    for name in ("max_turns", "max_tokens_per_turn", "max_total_length"):
      sections.at_least(p, f"rollout.{name}", values[name], 1)
    per_turn, total = values["max_tokens_per_turn"], values["max_total_length"]
    if (isinstance(total, int) and isinstance(per_turn, int)
        and per_turn > total):
      p.append("rollout.max_tokens_per_turn exceeds rollout.max_total_length;"
               " lower it or raise max_total_length")
    sections.choice(p, "rollout.strategy", values["strategy"], cls.STRATEGIES)
    return p

  def strategy_object(self) -> sampling.Strategy:
    """The sampler strategy these fields name."""
    if self.strategy == "greedy":
      return sampling.Greedy()
    if self.strategy == "temperature":
      return sampling.Temperature(self.temperature)
    if self.strategy == "top_k":
      return sampling.TopK(self.top_k, self.temperature)
    if self.strategy == "top_p":
      return sampling.TopP(self.top_p, self.temperature)
    raise ValueError(f"unknown sampling strategy {self.strategy!r}; expected "
                     "greedy, temperature, top_k or top_p")


def bucket(n: int, config: RolloutConfig) -> int:
  """The padded width of n new tokens: a power of two in
  [min_bucket, max_total_length] (few widths, so few prefill compiles)."""
  width = max(config.min_bucket, 1 << max(0, n - 1).bit_length())
  return min(width, max(n, config.max_total_length))


def cache_capacity(config: RolloutConfig) -> int:
  """Cache slots that always suffice: after compaction the write index is the
  longest live row (<= T), a turn then adds one bucket (<= T) and at most
  max_tokens_per_turn decoded tokens."""
  return 2 * config.max_total_length + config.max_tokens_per_turn


# ------------------------------------------------------------ trajectories --


@flax.struct.dataclass
class Trajectories:
  """N episodes as fixed-shape arrays (each row compacted: no holes).

  Attributes:
    tokens: [N, T] int32 prompt, generated and observation ids; pad after
      `lengths`.
    loss_mask: [N, T] int32, 1 on model-generated ids (stop tokens included),
      0 on prompt, observations, chat scaffolding and padding.
    logprobs: [N, T] float32, logprobs[n, t] = the sampler's log-prob of
      tokens[n, t] (unscaled policy); 0 where loss_mask is 0.
    attention_mask: [N, T] int32, 1 on the first `lengths[n]` slots.
    turn_starts: [N, max_turns] int32, slot of each turn's first generated id.
    turn_ends: [N, max_turns] int32, one past its last; both 0 for turns that
      did not happen.
    num_turns: [N] int32 assistant turns taken.
    group_ids: [N] int32 index of the row's task in the (global) task list.
    z: [N, 4] float32 verifier objectives (`verifiers.OBJECTIVES` order).
    lengths: [N] int32 real tokens per row.
  """
  tokens: jax.Array
  loss_mask: jax.Array
  logprobs: jax.Array
  attention_mask: jax.Array
  turn_starts: jax.Array
  turn_ends: jax.Array
  num_turns: jax.Array
  group_ids: jax.Array
  z: jax.Array
  lengths: jax.Array


@dataclasses.dataclass(frozen=True)
class EpisodeInfo:
  """Host-side metadata of one row, beside the arrays.

  Attributes:
    row: the row in the global Trajectories.
    record: task, z, verifier details and parsed turns (what eval metrics
      read).
    texts: each assistant turn as decoded from its generated ids.
    observations: each environment observation, in order (the last may not
      be in the token stream: nothing follows a final turn).
    end_reason: one of `END_REASONS`.
    length: tokens of the row (prompt, turns and observations).
    generated: generated (loss) tokens of the row.
  """
  row: int
  record: EpisodeRecord
  texts: tuple[str, ...]
  observations: tuple[str, ...]
  end_reason: str
  length: int
  generated: int

  def to_json(self) -> dict[str, Any]:
    """The JSON form `from_json` inverts, the task named by its id."""
    r = self.record
    return {"row": self.row, "task_id": r.task.task_id,
            "z": np.asarray(r.z, np.float32).tolist(),
            "details": dict(r.details), "turns": turns_to_json(r.turns),
            "policy": r.policy, "texts": list(self.texts),
            "observations": list(self.observations),
            "end_reason": self.end_reason, "length": self.length,
            "generated": self.generated}

  @classmethod
  def from_json(cls, data: Mapping[str, Any], task: Any) -> EpisodeInfo:
    """The info of `to_json`, with `task` (whose id it names)."""
    if task.task_id != data["task_id"]:
      raise ValueError(f"episode of row {data['row']} is of task "
                       f"{data['task_id']!r}, not {task.task_id!r}")
    record = EpisodeRecord(task, np.asarray(data["z"], np.float32),
                           dict(data["details"]),
                           turns_from_json(data["turns"]), data["policy"])
    return cls(data["row"], record, tuple(data["texts"]),
               tuple(data["observations"]), data["end_reason"],
               data["length"], data["generated"])


@dataclasses.dataclass(frozen=True)
class Rollout:
  """What `rollout` returns.

  Attributes:
    trajectories: global arrays (all processes' rows).
    episodes: every row's metadata, in row order (with several processes,
      gathered from all of them: every process holds the whole step's).
    stats: wall, device and host seconds, turns, generated tokens.
  """
  trajectories: Trajectories
  episodes: tuple[EpisodeInfo, ...]
  stats: Mapping[str, float]


# ---------------------------------------------------------------- policies --


@dataclasses.dataclass(frozen=True)
class Generation:
  """One row's assistant turn as the policy produced it.

  Attributes:
    tokens: [n] int32 ids, the stop token included.
    logprobs: [n] float32 log-prob of each id (0 for scripted turns).
    stopped: ended on a stop token or string (not on max_tokens_per_turn).
  """
  tokens: np.ndarray
  logprobs: np.ndarray
  stopped: bool


@dataclasses.dataclass
class _Episode:
  """Mutable host state of one row."""
  task: Any
  env: Environment
  tools: list[protocol.ToolSchema]
  messages: list[protocol.Message]
  text: str
  tokens: list[int] = dataclasses.field(default_factory=list)
  loss_mask: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)
  turns: list[ParsedTurn] = dataclasses.field(default_factory=list)
  texts: list[str] = dataclasses.field(default_factory=list)
  observations: list[str] = dataclasses.field(default_factory=list)
  end_reason: str | None = None
  env_error: str | None = None

  @property
  def history(self) -> list[tuple[ParsedTurn, str]]:
    """(turn, observation) pairs, as scripted policies read them."""
    return list(zip(self.turns, self.observations))

  def append(self, ids: Sequence[int], generated: bool,
             logprobs: Sequence[float] | None = None) -> None:
    self.tokens.extend(int(i) for i in ids)
    self.loss_mask.extend([int(generated)] * len(ids))
    self.logprobs.extend([0.0] * len(ids) if logprobs is None else
                         [float(x) for x in logprobs])


class TurnPolicy(Protocol):
  """Produces one assistant turn for each live row.

  `new_tokens[n]` are the ids appended to row n since its last turn (the
  prompt on the first call; rows of a group get the same prompt), or None for
  a finished row. `episodes[n]` exposes `task` and `history`. `key` holds
  one PRNG key per row (`[N]`, row n's from its global row index).
  """
  name: str

  def begin(self, new_tokens: Sequence[np.ndarray | None],
            episodes: Sequence[Any], key: jax.Array,
            config: RolloutConfig) -> list[Generation | None]:
    """The first turn of every row."""

  def step(self, new_tokens: Sequence[np.ndarray | None],
           episodes: Sequence[Any], key: jax.Array,
           config: RolloutConfig) -> list[Generation | None]:
    """A later turn, continuing each live row."""


def scripted_text(turn: ParsedTurn) -> str:
  """The text a scripted turn writes.

  An `InvalidAction` becomes a call that is never closed, which the parser
  rejects, so the turn stays invalid when re-read.
  """
  if isinstance(turn.action, InvalidAction):
    return f"{protocol.CALL_OPEN}\n{turn.action.reason}"
  return protocol.format_turn(turn)


class ScriptedPolicy:
  """A scripted policy (`envs.scripted.POLICIES`) as a token-level policy.

  Each turn is `scripted_text(policy.act(task, history))` tokenized plus eos,
  log-probs 0; a turn longer than max_tokens_per_turn is cut there (and so
  counts as unstopped). No model compute.
  """

  def __init__(self, policy: Any, tokenizer: Any):
    self.policy = policy
    self.tokenizer = tokenizer
    self.name = getattr(policy, "name", type(policy).__name__)

  def _turns(self, new_tokens, episodes, config) -> list[Generation | None]:
    live = [n for n, t in enumerate(new_tokens) if t is not None]
    texts = [scripted_text(self.policy.act(episodes[n].task,
                                           episodes[n].history)) for n in live]
    ids = (self.tokenizer(texts, add_special_tokens=False).input_ids
           if texts else [])
    out: list[Generation | None] = [None] * len(new_tokens)
    for n, row in zip(live, ids):
      row = (row + [self.tokenizer.eos_token_id])[:config.max_tokens_per_turn]
      stopped = row[-1] == self.tokenizer.eos_token_id
      out[n] = Generation(np.asarray(row, np.int32),
                          np.zeros(len(row), np.float32), stopped)
    return out

  def begin(self, new_tokens, episodes, key, config):
    del key
    return self._turns(new_tokens, episodes, config)

  def step(self, new_tokens, episodes, key, config):
    del key
    return self._turns(new_tokens, episodes, config)


# Donated: compaction rewrites the cache in place of the old one.
@functools.partial(jax.jit, donate_argnums=0)
def compact_cache(cache: KVCache, keep: jax.Array) -> KVCache:
  """Right-aligns each row's real slots at slot m = max_b(real slots of b).

  Rows not in `keep` [B] bool are emptied first (finished episodes). Order
  within a row is kept and keys carry their RoPE positions already (`pos` is
  unchanged), so attention over the compacted cache equals attention over
  the original; the write index becomes m.
  """
  valid = cache.valid & keep[:, None]
  s = valid.shape[1]
  m = jnp.max(jnp.sum(valid, axis=1, dtype=jnp.int32))
  # Stable: holes first, then real slots, each in slot order; real slots then
  # sit at [s - count, s), and the shift by s - m moves them to [m - count, m).
  order = jnp.argsort(valid.astype(jnp.int8), axis=1, stable=True)
  src = jnp.take(order, (jnp.arange(s) + s - m) % s, axis=1)
  gather = lambda x: jnp.take_along_axis(x, src[None, :, :, None, None], axis=2)
  return KVCache(k=gather(cache.k), v=gather(cache.v),
                 valid=jnp.take_along_axis(valid, src, axis=1), index=m,
                 pos=cache.pos)


def _left_pad(rows: Sequence[np.ndarray | None], width: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[B, width] ids and mask, rows right-aligned; a None row gets one real pad
  (every prefill row needs a real token) and is inactive. Also [B] active."""
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  active = np.array([r is not None for r in rows])
  for n, row in enumerate(rows):
    row = np.asarray([pad_id] if row is None else row, np.int32)
    ids[n, width - len(row):] = row
    mask[n, width - len(row):] = 1
  return ids, mask, active


class ModelPolicy:
  """The Flax decoder as a turn policy: one KV cache for the whole rollout.

  Args:
    model: the decoder.
    tokenizer: its tokenizer (eos ends a turn; pad fills holes).
    name: the policy name recorded in episode records.
  """

  def __init__(self, model: Decoder, tokenizer: Any, name: str = "model"):
    self.model = model
    self.tokenizer = tokenizer
    self.name = name
    self.cache: KVCache | None = None
    self._stops: dict[tuple[str, ...], sampling.StopCriteria] = {}

  def _stop_criteria(self, config: RolloutConfig) -> sampling.StopCriteria:
    if config.stop_strings not in self._stops:
      spelled = (sampling.token_bytes(self.tokenizer) if config.stop_strings
                 else None)
      self._stops[config.stop_strings] = sampling.StopCriteria.create(
          self.model.cfg.vocab_size, [self.tokenizer.eos_token_id],
          config.stop_strings, spelled)
    return self._stops[config.stop_strings]

  def _sampling_config(self, config: RolloutConfig) -> sampling.SamplingConfig:
    return sampling.SamplingConfig(
        max_new_tokens=config.max_tokens_per_turn,
        strategy=config.strategy_object(), pad_id=self.tokenizer.pad_token_id)

  def _generations(self, out: sampling.SampleOutput,
                   active: np.ndarray) -> list[Generation | None]:
    # The only device -> host transfer of a turn: generated ids and log-probs.
    tokens, logprobs, lengths, stopped = jax.device_get(
        (out.tokens, out.logprobs, out.lengths, out.stopped))
    return [Generation(tokens[n, :lengths[n]], logprobs[n, :lengths[n]],
                       bool(stopped[n])) if active[n] else None
            for n in range(len(active))]

  def begin(self, new_tokens, episodes, key, config):
    del episodes
    g = config.group_size
    prompts = list(new_tokens[::g])
    width = bucket(max(len(p) for p in prompts if p is not None), config)
    ids, mask, active = _left_pad(prompts, width, self.tokenizer.pad_token_id)
    self.cache = sampling.init_cache(self.model, len(prompts),
                                     cache_capacity(config))
    out = sampling.sample(self.model, ids, mask, self.cache, key,
                          self._sampling_config(config),
                          self._stop_criteria(config), active=active,
                          group_size=g)
    self.cache = out.cache
    return self._generations(out, np.repeat(active, g))

  def step(self, new_tokens, episodes, key, config):
    del episodes
    live = [t for t in new_tokens if t is not None]
    width = bucket(max(len(t) for t in live), config)
    ids, mask, active = _left_pad(new_tokens, width,
                                  self.tokenizer.pad_token_id)
    self.cache = compact_cache(self.cache, jnp.asarray(active))
    out = sampling.sample(self.model, ids, mask, self.cache, key,
                          self._sampling_config(config),
                          self._stop_criteria(config), active=active)
    self.cache = out.cache
    return self._generations(out, active)


# ------------------------------------------------------------------ engine --


# A template the delta of an observation cannot be read from (the name is
# kept from when whole renderings had to extend each other).
TemplatePrefixError = render_lib.TemplateDeltaError


def process_rows(num_tasks: int, group_size: int, process_index: int,
                 process_count: int) -> range:
  """The task indices process p steps: an equal share of whole groups.

  Rows [p*N/P, (p+1)*N/P) with N = num_tasks * G are tasks
  [p*num_tasks/P, (p+1)*num_tasks/P).

  Raises:
    ValueError: num_tasks is not a multiple of the process count (a group
      would be split, or processes would hold different row counts, which a
      global array cannot have).
  """
  del group_size  # Whole tasks are whole groups; kept for the call's clarity.
  if num_tasks % process_count:
    raise ValueError(f"{num_tasks} tasks do not split evenly over "
                     f"{process_count} processes")
  share = num_tasks // process_count
  return range(process_index * share, (process_index + 1) * share)


def even_tasks(tasks: Sequence[Any]) -> list[Any]:
  """`tasks` padded with repeats of the last to a multiple of the process
  count (`process_rows` splits only whole, equal shares); the episodes of
  the first len(tasks) * G rows are the real ones."""
  tasks = list(tasks)
  return tasks + tasks[-1:] * (-len(tasks) % jax.process_count())


class _Engine:
  """Host side of one rollout: token streams, parsing, environments."""

  def __init__(self, tokenizer, config, make_env):
    self.tokenizer = tokenizer
    self.config = config
    self.make_env = make_env
    self.think_opened = render_lib.generation_opens_think(tokenizer)
    self.eos = tokenizer.eos_token_id

  def start(self, task, group_size: int) -> tuple[list[_Episode], np.ndarray]:
    """G fresh episodes of `task` and their (shared) prompt ids."""
    episodes = []
    for _ in range(group_size):
      env = self.make_env(task)
      messages = [protocol.system_message(protocol.SYSTEM_PROMPT),
                  protocol.user_message(env.reset())]
      # Schemas are derived from code on every `env.tools`: read them once.
      episodes.append(_Episode(task=task, env=env, tools=env.tools,
                               messages=messages, text=""))
    text = render_lib.render(self.tokenizer, episodes[0].messages,
                             episodes[0].tools)
    for episode in episodes:
      episode.text = text
    ids = np.asarray(self.tokenizer(text, add_special_tokens=False).input_ids,
                     np.int32)
    return episodes, ids

  def begin(self, episode: _Episode, prompt: np.ndarray) -> bool:
    """Appends the prompt; False when it leaves no room for a turn."""
    limit = self.config.max_total_length
    episode.append(prompt[:limit], generated=False)
    if len(prompt) + self.config.max_tokens_per_turn > limit:
      episode.end_reason = "max_total_length"
      return False
    return True

  def take_turn(self, episode: _Episode, gen: Generation) -> np.ndarray | None:
    """Records a generated turn, steps the environment; the next new tokens,
    or None when the episode ended."""
    config = self.config
    start = len(episode.tokens)
    episode.append(gen.tokens, generated=True, logprobs=gen.logprobs)
    episode.spans.append((start, len(episode.tokens)))
    ids = list(gen.tokens)
    text = self.tokenizer.decode(ids, skip_special_tokens=False)
    episode.texts.append(text)
    if not gen.stopped:
      episode.turns.append(ParsedTurn(InvalidAction(
          f"turn reached max_tokens_per_turn={config.max_tokens_per_turn} "
          "without ending")))
      episode.end_reason = "max_tokens_per_turn"
      return None
    tools = episode.tools
    turn = parse_turn(text, schemas=tools, think_opened=self.think_opened)
    episode.turns.append(turn)
    try:
      result = episode.env.step(turn)
    except Exception as e:  # pylint: disable=broad-except
      # `step` promises not to raise on agent input; when an environment
      # breaks that promise, one episode ends, not the run.
      episode.env_error = _error_text("environment", e)
      episode.turns[-1] = ParsedTurn(InvalidAction(episode.env_error),
                                     plan=turn.plan,
                                     safety_thoughts=turn.safety_thoughts)
      episode.observations.append(f"Error: {episode.env_error}")
      episode.end_reason = "env_error"
      return None
    # Tokenizers cannot encode a lone surrogate; observations never carry one.
    observation = replace_surrogates(str(result.observation))
    episode.observations.append(observation)
    # The environment decides what ends an episode (answers and refusals, in
    # every built-in and AgentDojo environment).
    if result.done:
      episode.end_reason = "terminal"
      return None
    if len(episode.turns) >= config.max_turns:
      episode.end_reason = "max_turns"
      return None
    # Only the new text is rendered: the observation after the turn as it
    # ended, and the next generation prompt.
    ended_with_eos = bool(ids) and ids[-1] == self.eos
    content = self.tokenizer.decode(ids[:-1] if ended_with_eos else ids,
                                    skip_special_tokens=False)
    message = protocol.tool_message(observation)
    episode.messages += [{"role": "assistant", "content": content},
                         message]
    delta_text = render_lib.observation_delta(
        self.tokenizer, [message], tools, after_eos=ended_with_eos)
    delta = self.tokenizer(delta_text, add_special_tokens=False).input_ids
    if (len(episode.tokens) + len(delta) + config.max_tokens_per_turn
        > config.max_total_length):
      episode.end_reason = "max_total_length"
      return None
    episode.text += text + delta_text
    episode.append(delta, generated=False)
    return np.asarray(delta, np.int32)


def _error_text(what: str, error: Exception) -> str:
  """One line naming an exception, e.g. "environment error (KeyError: 'x')"."""
  message = " ".join(str(error).split())[:200]
  return f"{what} error ({type(error).__name__}{': ' if message else ''}" \
         f"{message})"


def _verdict(verify: Callable[..., verifiers.Verdict], e: _Episode,
             max_turns: int) -> tuple[np.ndarray, dict[str, Any]]:
  """(z [4], details) of one episode; a verifier that raises scores the
  episode 0 on every objective with `verifier_error` in the details."""
  try:
    verdict = verify(e.task, e.env, e.turns, max_turns)
    z, details = np.asarray(verdict.z, np.float32), dict(verdict.details)
  except Exception as error:  # pylint: disable=broad-except
    verdict = verifiers.error_verdict(e.task, e.turns,
                                      _error_text("verifier", error))
    z, details = verdict.z, dict(verdict.details)
  if e.env_error is not None:
    details["env_error"] = e.env_error
  return z, details


def _arrays(episodes: Sequence[_Episode], z: np.ndarray, group_ids: np.ndarray,
            config: RolloutConfig, pad_id: int) -> dict[str, np.ndarray]:
  n, t, k = len(episodes), config.max_total_length, config.max_turns
  out = {
      "tokens": np.full((n, t), pad_id, np.int32),
      "loss_mask": np.zeros((n, t), np.int32),
      "logprobs": np.zeros((n, t), np.float32),
      "attention_mask": np.zeros((n, t), np.int32),
      "turn_starts": np.zeros((n, k), np.int32),
      "turn_ends": np.zeros((n, k), np.int32),
      "num_turns": np.zeros((n,), np.int32),
      "group_ids": group_ids.astype(np.int32),
      "z": z.astype(np.float32),
      "lengths": np.zeros((n,), np.int32),
  }
  for i, e in enumerate(episodes):
    length = len(e.tokens)
    out["tokens"][i, :length] = e.tokens
    out["loss_mask"][i, :length] = e.loss_mask
    out["logprobs"][i, :length] = e.logprobs
    out["attention_mask"][i, :length] = 1
    out["lengths"][i] = length
    out["num_turns"][i] = len(e.spans)
    for j, (start, end) in enumerate(e.spans):
      out["turn_starts"][i, j], out["turn_ends"][i, j] = start, end
  return out


def prompt_ids(task: Any, tokenizer: Any,
               make_env: Callable[[Any], Environment] = tasks_lib.make_env
               ) -> np.ndarray:
  """`[P]` int32 ids of a task's first prompt, exactly as `rollout` feeds
  it (system and user message, the tool list, the assistant header)."""
  return _Engine(tokenizer, None, make_env).start(task, 1)[1]


def rollout(policy: TurnPolicy, tasks: Sequence[Any], tokenizer: Any,
            config: RolloutConfig, *,
            make_env: Callable[[Any], Environment] = tasks_lib.make_env,
            verify: Callable[..., verifiers.Verdict] = verifiers.verify,
            mesh: jax.sharding.Mesh | None = None) -> Rollout:
  """Runs len(tasks) * G episodes to the end and scores them.

  Args:
    policy: `ModelPolicy`, `ScriptedPolicy`, or any `TurnPolicy`.
    tasks: the global task list; this process runs its `process_rows` share.
    tokenizer: HF tokenizer with a chat template; eos ends a turn.
    config: limits and sampling.
    make_env: task -> fresh Environment (built-in suites by default;
      `envs.agentdojo.AgentDojoEnvironment` for AgentDojo).
    verify: `verify(task, env, turns, max_turns) -> Verdict`.
    mesh: where to place the arrays (batch-sharded); required with several
      processes, which each contribute their rows.

  Returns:
    The Rollout (arrays global, metadata for this process's rows).

  Raises:
    TemplatePrefixError: the chat template does not render an assistant
      turn verbatim, so an observation cannot follow it.
  """
  wall_start = time.perf_counter()
  g, pid, count = config.group_size, jax.process_index(), jax.process_count()
  if count > 1 and mesh is None:
    raise ValueError("a multi-process rollout needs a mesh for its arrays")
  local = process_rows(len(tasks), g, pid, count)
  engine = _Engine(tokenizer, config, make_env)
  key = jax.random.key(config.seed)

  episodes, new_tokens = [], []
  for task_index in local:
    # Rows of a group share one prompt (the policy prefills it once).
    group, prompt = engine.start(tasks[task_index], g)
    for episode in group:
      episodes.append(episode)
      new_tokens.append(prompt if engine.begin(episode, prompt) else None)

  # Global row indices of this process's episodes (the sampling keys').
  global_rows = jnp.arange(local.start * g, local.stop * g, dtype=jnp.int32)
  device_s, generated = 0.0, 0
  for turn in range(config.max_turns):
    if all(t is None for t in new_tokens):
      break
    call_start = time.perf_counter()
    step = policy.begin if turn == 0 else policy.step
    gens = step(new_tokens, episodes,
                sampling.row_keys(jax.random.fold_in(key, turn), global_rows),
                config)
    device_s += time.perf_counter() - call_start
    new_tokens = [None] * len(episodes)
    for n, gen in enumerate(gens):
      if gen is not None:
        generated += len(gen.tokens)
        new_tokens[n] = engine.take_turn(episodes[n], gen)

  rows = [r * g + j for r in local for j in range(g)]
  records = []
  for e in episodes:
    z_row, details = _verdict(verify, e, config.max_turns)
    records.append(EpisodeRecord(e.task, z_row, details, tuple(e.turns),
                                 policy.name))
  z = np.stack([r.z for r in records]) if records else np.zeros((0, 4))
  arrays = _arrays(episodes, z, np.asarray([r // g for r in rows]), config,
                   tokenizer.pad_token_id)
  if mesh is not None:
    arrays = distributed.host_local_batch_to_global(arrays, mesh)
  else:
    arrays = jax.tree.map(jnp.asarray, arrays)
  infos = tuple(EpisodeInfo(row, rec, tuple(e.texts), tuple(e.observations),
                            e.end_reason, len(e.tokens), int(sum(e.loss_mask)))
                for row, rec, e in zip(rows, records, episodes))
  counts = {"episodes": len(episodes), "generated_tokens": generated,
            "turns": sum(len(e.spans) for e in episodes),
            "env_errors": sum(e.env_error is not None for e in episodes),
            "verifier_errors": sum("verifier_error" in r.details
                                   for r in records)}
  if count > 1:
    infos, counts = gather_episodes(infos, counts, tasks, g)
  wall = time.perf_counter() - wall_start
  stats = {"wall_s": wall, "device_s": device_s, "host_s": wall - device_s,
           **counts}
  return Rollout(Trajectories(**arrays), infos, stats)


def gather_episodes(infos: Sequence[EpisodeInfo], counts: Mapping[str, int],
                    tasks: Sequence[Any], group_size: int
                    ) -> tuple[tuple[EpisodeInfo, ...], dict[str, int]]:
  """Every process's episode metadata in row order, and the counts summed:
  what each process then holds, so rewards, metrics and reports are
  computed from the whole step alike on every process (and equal one
  process's). `tasks` is the global task list; row r is of task r // G."""
  parts = distributed.allgather_json(
      {"infos": [i.to_json() for i in infos], "counts": dict(counts)})
  gathered = [EpisodeInfo.from_json(d, tasks[d["row"] // group_size])
              for part in parts for d in part["infos"]]
  summed = {k: sum(int(part["counts"][k]) for part in parts) for k in counts}
  return tuple(sorted(gathered, key=lambda i: i.row)), summed


# ------------------------------------------------------------- transcripts --


def turn_texts(traj: Trajectories, i: int, tokenizer: Any) -> list[str]:
  """The decoded ids of each generated turn of row i (per turn_starts/ends)."""
  tokens = np.asarray(traj.tokens[i])
  starts, ends = np.asarray(traj.turn_starts[i]), np.asarray(traj.turn_ends[i])
  return [tokenizer.decode(tokens[s:e].tolist(), skip_special_tokens=False)
          for s, e in zip(starts[:int(traj.num_turns[i])],
                          ends[:int(traj.num_turns[i])])]
