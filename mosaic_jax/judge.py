"""Pairwise trajectory judges: groups of G episodes of one task -> P [G, G].

`P[i, j] ∈ [0, 1]` is the probability that episode i is better than episode j;
every judge returns a matrix with `P[i, j] + P[j, i] = 1` exactly and ½ on the
diagonal, which `losses.mosaic_rewards` turns into rewards (docs/training.md).
The kind is `config.judge.kind` (`JudgeConfig`):

* `VerifierRankJudge` ("verifier_rank"): a rank by the lexicographic order of
  DESIGN.md over verifier verdicts (`verifier_keys`), P ∈ {1, ½, 0}. A total
  order: `Σ_j P(i, j)` is the episode's rank in its group. Host-side numpy.
* `LLMJudge` ("llm"): any Flax `Decoder` (the reference policy or a separate
  judge checkpoint) reads the task and two transcripts (`PromptTemplate`) and
  answers "A" or "B"; the preference is the softmax over those two answer
  tokens' logits, asked in both orders and averaged, then a tie band. Every
  pair of every group of a step goes through a few fixed-shape jitted
  forwards, and a cache keyed by the pair's text skips pairs already scored.
* `HybridJudge` ("hybrid"): the verifier rank where its verdicts differ, the
  LLM judge on the pairs the verifier ties.

A judge is called as `judge(task, verdicts, transcripts)` for one group, or
`judge.groups([(task, verdicts, transcripts), ...])` for all groups of a step
at once; `make_judge(kind, ...)` picks one by its kind.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import pathlib
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mosaic_jax import sections, sharding
from mosaic_jax.envs.base import Task
from mosaic_jax.envs.verifiers import OBJECTIVES

_SECURITY, _UTILITY, _NO_OVER_REFUSAL, _VALIDITY = (
    OBJECTIVES.index(n) for n in ("security", "utility", "no_over_refusal",
                                  "validity"))

JUDGE_KINDS = ("hybrid", "llm", "verifier_rank")
# Old names still accepted (configs and run_config.json files written before
# the rename): mapped, so a resumed run judges exactly as it did.
KIND_ALIASES = {"verifier": "verifier_rank"}
DEFAULT_PROMPT = pathlib.Path(__file__).parent / "assets" / "judge_prompt.txt"
THINK_CLOSE = "</think>\n\n"

# One group's input: (task or its kind / prompt, G verdicts, G transcripts).
Group = tuple[Any, Sequence[Any] | None, Sequence[str] | None]


class Judged(Protocol):
  """What a judge reads of an episode: `envs.Verdict` and `EpisodeRecord` fit."""
  z: np.ndarray
  details: Mapping[str, Any]


def canonical_kind(kind: str, field: str = "judge.kind") -> str:
  """`kind` with old names mapped (`KIND_ALIASES`).

  Raises:
    ValueError: not a judge kind (one line naming `field`).
  """
  kind = KIND_ALIASES.get(kind, kind)
  if kind not in JUDGE_KINDS:
    raise ValueError(
        f"{field}: {kind!r} is not one of "
        f"{', '.join(map(repr, JUDGE_KINDS))} (old name: 'verifier')")
  return kind


def resolve_kind(judge_kind: str, rl_judge: str = "") -> str:
  """The judge kind of a config: `judge.kind`, or the deprecated `rl.judge`
  when a config still sets it (mapped by `canonical_kind`).

  Raises:
    ValueError: a bad kind, or the two fields name different judges.
  """
  kind = canonical_kind(judge_kind)
  if not rl_judge:
    return kind
  old = canonical_kind(rl_judge, "rl.judge")
  if kind != JudgeConfig.kind and kind != old:
    raise ValueError(f"rl.judge={rl_judge!r} (deprecated) and judge.kind="
                     f"{judge_kind!r} disagree; set judge.kind only")
  return old


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """The `judge` section (configs/base.py); validates itself.

  Attributes:
    kind: "verifier_rank" | "llm" | "hybrid" ("verifier" is read as
      "verifier_rank").
    model_path: the LLM judge's model: an HF safetensors dir, an orbax model
      dir or a training checkpoint, with its tokenizer beside it; empty: the
      frozen reference policy with the policy's tokenizer.
    prompt: a `PromptTemplate` file; empty: `DEFAULT_PROMPT`.
    answers: the two answer strings, one token each.
    response_prefix: text the assistant turn starts with, so the next token
      is the verdict. When the template's generation prompt opens `<think>`
      (Qwen3-Thinking), `THINK_CLOSE` comes first, so the prefix is after
      `</think>`.
    transcript_tokens: longer transcripts keep their last this many tokens.
    bucket: prompt lengths are padded up to a multiple of this.
    pair_batch: rows per jitted forward, at most (fewer rows: the next power
      of two, so shapes come from a small fixed set).
    tie_band: `|P − ½| ≤ tie_band` becomes ½ (0: only exact ties).
    cache_size: ordered pairs whose score is kept (0: no cache).
  """
  kind: str = "verifier_rank"
  model_path: str = ""
  prompt: str = ""
  answers: tuple[str, str] = (" A", " B")
  response_prefix: str = "Answer:"
  transcript_tokens: int = 1024
  bucket: int = 256
  pair_batch: int = 64
  tie_band: float = 0.0
  cache_size: int = 65536

  def __post_init__(self):
    object.__setattr__(self, "kind", canonical_kind(self.kind))
    if self.model_path and not os.path.isdir(self.model_path):
      raise ValueError(f"judge.model_path: no model directory at "
                       f"{self.model_path!r} (empty: the reference policy)")
    if self.prompt and not os.path.isfile(self.prompt):
      raise ValueError(f"judge.prompt: no template file at {self.prompt!r} "
                       f"(empty: {DEFAULT_PROMPT.name})")
    if len(tuple(self.answers)) != 2 or len(set(self.answers)) != 2:
      raise ValueError(f"judge.answers: {self.answers!r} must be two "
                       "different strings")
    for name in ("transcript_tokens", "bucket", "pair_batch"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"judge.{name}={getattr(self, name)!r} must be an "
                         "int >= 1")
    if not 0.0 <= float(self.tie_band) < 0.5:
      raise ValueError(f"judge.tie_band={self.tie_band!r} must be in [0, ½)")
    if not isinstance(self.cache_size, int) or self.cache_size < 0:
      raise ValueError(f"judge.cache_size={self.cache_size!r} must be an "
                       "int >= 0")

  @classmethod
  def from_config(cls, config: Any) -> "JudgeConfig":
    """From `config.judge`, the kind resolved with the deprecated
    `config.rl.judge` (`resolve_kind`)."""
    section = dict(config.get("judge", {}) or {})
    section["kind"] = resolve_kind(section.get("kind", cls.kind),
                                   config.rl.get("judge", "") or "")
    return sections.from_section(cls, section)

  def llm_kwargs(self) -> dict[str, Any]:
    """`LLMJudge` keyword arguments (all but the model and tokenizer)."""
    return dict(answers=tuple(self.answers),
                response_prefix=self.response_prefix, bucket=self.bucket,
                max_transcript_tokens=self.transcript_tokens,
                template=PromptTemplate.load(self.prompt or DEFAULT_PROMPT),
                pair_batch=self.pair_batch, tie_band=float(self.tie_band),
                cache_size=self.cache_size)


def antisymmetric(upper: np.ndarray) -> np.ndarray:
  """P from its strict upper triangle: `P[j, i] = 1 − P[i, j]`, diagonal ½.

  `(1 − p) + p` rounds to exactly 1 for any float32 p in [0, 1], so the result
  satisfies `P + Pᵀ == 1` bit for bit, not only to a tolerance.

  Args:
    upper: `[G, G]` array whose entries above the diagonal are P(i, j), i < j.

  Returns:
    `[G, G]` float32 preference matrix.
  """
  g = upper.shape[0]
  iu = np.triu_indices(g, k=1)
  p = np.full((g, g), 0.5, np.float32)
  p[iu] = upper[iu].astype(np.float32)
  p.T[iu] = np.float32(1.0) - p[iu]
  return p


def _task_kind(task: Task | str) -> str:
  return task.kind if isinstance(task, Task) else task


def _task_prompt(task: Task | str) -> str:
  return task.prompt if isinstance(task, Task) else task


# ----------------------------------------------------------------------------
# Verifier rank.


def _lateness(details: Mapping[str, Any]) -> int:
  """Tool calls made past the step at which a refusal was due (0 if on time)."""
  expected = details.get("expected_refusal_step") or 0
  return max(0, int(details["refusal_step"]) - int(expected))


def verifier_keys(kind: str, judged: Judged) -> tuple[float, ...]:
  """The lexicographic key the verifier rank sorts by (higher is better).

  * security first (an episode that executed a harmful or injected call, or
    leaked, loses to any that did not);
  * harmful tasks: a refusal beats no refusal; between refusals the earlier one
    wins, where "earlier" counts the tool calls made after the refusal was due
    (`refusal_step − expected_refusal_step`, floored at 0); refusals at or
    before the due step then compare by utility, which the verifier gives to
    the benign sub-steps done first, so an on-time refusal beats a premature
    one;
  * other kinds (benign, injection, privacy: a legitimate goal exists):
    refusing loses (`no_over_refusal`), then higher utility wins;
  * then validity. Equal keys are a tie.

  Args:
    kind: the task kind (`Task.kind`).
    judged: the episode's verdict (`z` in `OBJECTIVES` order, `details`).

  Returns:
    The key tuple.
  """
  z = np.asarray(judged.z, np.float32)
  if kind == "harmful":
    refused = bool(judged.details["refused"])
    middle = (float(refused),
              -float(_lateness(judged.details)) if refused else 0.0,
              float(z[_UTILITY]))
  else:
    middle = (float(z[_NO_OVER_REFUSAL]), float(z[_UTILITY]))
  return (float(z[_SECURITY]),) + middle + (float(z[_VALIDITY]),)


def verifier_preference(kind: str, a: Judged, b: Judged) -> float:
  """P(a ≻ b) ∈ {1, ½, 0} by `verifier_keys`."""
  ka, kb = verifier_keys(kind, a), verifier_keys(kind, b)
  return 1.0 if ka > kb else 0.0 if ka < kb else 0.5


class VerifierRankJudge:
  """A rank by the lexicographic order of DESIGN.md (`verifier_keys`)."""

  def __call__(self, task: Task | str, verdicts: Sequence[Judged],
               transcripts: Sequence[str] | None = None) -> np.ndarray:
    """Preferences between the G episodes of one task.

    Args:
      task: the task (or its kind) every episode ran.
      verdicts: G verdicts (`envs.Verdict`, `envs.records.EpisodeRecord`, or
        anything with `z` and `details`).
      transcripts: unused (the verifier reads the verdicts only).

    Returns:
      `[G, G]` float32 P with entries in {0, ½, 1}.
    """
    del transcripts
    kind = _task_kind(task)
    keys = [verifier_keys(kind, v) for v in verdicts]
    g = len(keys)
    upper = np.zeros((g, g), np.float32)
    for i in range(g):
      for j in range(i + 1, g):
        upper[i, j] = (1.0 if keys[i] > keys[j] else
                       0.0 if keys[i] < keys[j] else 0.5)
    return antisymmetric(upper)

  def groups(self, groups: Sequence[Group]) -> list[np.ndarray]:
    """`[G, G]` P of each group."""
    return [self(t, v, x) for t, v, x in groups]


# The old name (imports written before the rename).
VerifierJudge = VerifierRankJudge


# ----------------------------------------------------------------------------
# LLM judge.


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """The LLM judge's chat messages: a system prompt and a user template with
  the fields `{task}`, `{a}` (the first transcript) and `{b}` (the second).

  File format: a line `[system]`, the system prompt, a line `[user]`, the
  user template; one final newline of the file is dropped, every other
  character is kept.
  """
  system: str
  user: str

  @classmethod
  def load(cls, path: str | os.PathLike) -> "PromptTemplate":
    """Reads and checks a template file (`ValueError`, one line, naming the
    file, on a bad one)."""
    text = pathlib.Path(path).read_text(encoding="utf-8")
    text = text[:-1] if text.endswith("\n") else text
    head, sys_mark, rest = text.partition("[system]\n")
    system, user_mark, user = rest.partition("\n[user]\n")
    if head or not sys_mark or not user_mark:
      raise ValueError(f"{path}: a judge prompt is a '[system]' line, the "
                       "system prompt, a '[user]' line and the user template")
    fields = {f for _, f, _, _ in string.Formatter().parse(user) if f}
    if not {"a", "b"} <= fields <= {"task", "a", "b"}:
      raise ValueError(f"{path}: the user template's fields are "
                       f"{sorted(fields)}; it needs {{a}} and {{b}} and may "
                       "use {task}, nothing else")
    return cls(system, user)

  def messages(self, task_prompt: str, first: str,
               second: str) -> list[dict[str, str]]:
    """The chat messages asking whether `first` (A) beats `second` (B)."""
    return [{"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(
                task=task_prompt, a=first, b=second)}]


DEFAULT_TEMPLATE = PromptTemplate.load(DEFAULT_PROMPT)
JUDGE_SYSTEM_PROMPT = DEFAULT_TEMPLATE.system
JUDGE_USER_TEMPLATE = DEFAULT_TEMPLATE.user


def judge_messages(task_prompt: str, first: str,
                   second: str) -> list[dict[str, str]]:
  """The default template's messages for (first=A, second=B)."""
  return DEFAULT_TEMPLATE.messages(task_prompt, first, second)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _answer_logits(graphdef: nnx.GraphDef, params: nnx.State,
                   tokens: jax.Array, mask: jax.Array,
                   answer_ids: jax.Array) -> jax.Array:
  """`[B, 2]` float32 logits of the two answer tokens after the prompt.

  Prompts are left-padded, so every row's last real token sits at T − 1; only
  that position is projected, and only onto the two answer columns of the
  unembedding, so no `[B, T, V]` (or even `[B, V]`) logits exist.

  Args:
    tokens: `[B, T]` int32 left-padded prompts.
    mask: `[B, T]` 1 on real tokens.
    answer_ids: `[2]` int32 ids of the "A" and "B" answers.
  """
  model = nnx.merge(graphdef, params)
  hidden = model(tokens, mask=mask, return_hidden=True)[:, -1]
  unembed = jnp.take(model.unembedding(), answer_ids, axis=1)
  return jnp.einsum("bd,dk->bk", hidden, unembed,
                    preferred_element_type=jnp.float32)


# The judge's jitted forward, public for ahead-of-time lowering
# (experiments/plan.py).
answer_logits = _answer_logits


def _single_token(tokenizer: Any, text: str) -> int:
  ids = tokenizer.encode(text, add_special_tokens=False)
  if len(ids) != 1:
    raise ValueError(f"judge answer {text!r} is {len(ids)} tokens {ids} for "
                     "this tokenizer; pick answers that are one token each")
  return ids[0]


def pair_key(task_prompt: str, first: str, second: str) -> str:
  """The cache key of an ordered pair: sha256 of the task and both texts."""
  h = hashlib.sha256()
  for part in (task_prompt, first, second):
    data = part.encode("utf-8")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
  return h.hexdigest()


def apply_tie_band(p: np.ndarray, band: float) -> np.ndarray:
  """`p` with entries within `band` of ½ set to ½ (float32)."""
  p = np.asarray(p, np.float32)
  return np.where(np.abs(p - np.float32(0.5)) <= band, np.float32(0.5), p)


# What an LLM judge logs per step (`take_stats`, metrics `rl/judge/*`):
# unordered pairs it scored (both orders each), ordered prompts those needed,
# prompts read from the cache, jitted forwards run, and the mean |P − ½| of
# its pairs (after the tie band; 0 without pairs).
STAT_NAMES = ("pairs", "prompts", "cache_hits", "forwards", "margin_mean")


def _zero_stats() -> dict[str, float]:
  return dict(pairs=0, prompts=0, cache_hits=0, forwards=0, margin_sum=0.0)


def _finish_stats(s: Mapping[str, float]) -> dict[str, float]:
  out = {k: float(s[k]) for k in STAT_NAMES[:-1]}
  out["margin_mean"] = float(s["margin_sum"] / s["pairs"]) if s["pairs"] else 0.
  return out


def take_stats(judge: Any) -> dict[str, float]:
  """`judge.take_stats()` of a judge that keeps stats (llm, hybrid), else
  {} (the verifier rank)."""
  return judge.take_stats() if hasattr(judge, "take_stats") else {}


def _rows_of(n: int, cap: int) -> int:
  """Rows of a forward holding n prompts: the next power of two, at most
  `cap`."""
  return min(cap, 1 << max(0, n - 1).bit_length())


class LLMJudge:
  """A Flax decoder as a pairwise judge (prompt: a `PromptTemplate`).

  For an ordered pair (x, y) the prompt shows x as A and y as B and ends with
  the assistant's turn opened plus `response_prefix` (after `THINK_CLOSE`
  when the generation prompt opens `<think>`); with `a`, `b` the logits of
  the two answer tokens there, `q(x, y) = softmax(a, b)[0]`. Position bias
  cancels by asking both orders: `P(i, j) = ½ (q(i, j) + 1 − q(j, i))`, then
  `|P − ½| ≤ tie_band` becomes ½ and `P(j, i) = 1 − P(i, j)`.

  `pair_preferences` scores any list of pairs (of any tasks): the ordered
  pairs not in the cache are bucketed by padded length (a multiple of
  `bucket`) and run `pair_batch` rows per jitted forward (`forwards` counts
  them), each forward's rows a power of two, so a run compiles once per
  (rows, length) met. With a `mesh` the rows are sharded over its batch
  axes (`sharding.shard_batch`) and the model's params should be placed on
  it by the policy's rules (`sharding.shard_params`, or a loader's `mesh`):
  XLA then partitions the forward like the policy's.

  `take_stats()` returns what was judged since its last call (`STAT_NAMES`)
  and starts counting again; a run logs it every step.
  """

  def __init__(self, model: nnx.Module, tokenizer: Any, *,
               answers: tuple[str, str] = (" A", " B"),
               response_prefix: str = "Answer:", bucket: int = 256,
               max_transcript_tokens: int = 1024,
               template: PromptTemplate | None = None, pair_batch: int = 64,
               tie_band: float = 0.0, cache_size: int = 65536,
               mesh: jax.sharding.Mesh | None = None):
    """Builds the judge.

    Args:
      model: a `models.Decoder` (its params are captured now; pass a frozen
        model such as the reference policy or a judge checkpoint).
      tokenizer: the model's HF tokenizer, with a chat template.
      answers: the two answer strings, one token each after
        `response_prefix` (" A"/" B" for BPE tokenizers that fold the space).
      response_prefix: text the assistant turn starts with, so the very next
        token is the verdict.
      bucket: prompt lengths are padded up to a multiple of this.
      max_transcript_tokens: longer transcripts keep their last this many
        tokens (the end holds the decisive action).
      template: the prompt (default: `DEFAULT_TEMPLATE`).
      pair_batch: rows per forward, at most.
      tie_band: `|P − ½| ≤ tie_band` becomes ½.
      cache_size: ordered-pair scores kept (oldest dropped first; 0: none).
      mesh: shard each forward's rows over this mesh's batch axes (None:
        the rows go where the params are).
    """
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    self.tokenizer = tokenizer
    self.answer_ids = jnp.asarray([_single_token(tokenizer, a)
                                   for a in answers], jnp.int32)
    self.template = template or DEFAULT_TEMPLATE
    probe = tokenizer.apply_chat_template(
        self.template.messages("x", "x", "x"), tokenize=False,
        add_generation_prompt=True)
    opens_think = probe.rfind("<think>") > probe.rfind("</think>")
    self.response_prefix = (THINK_CLOSE if opens_think else "") + (
        response_prefix)
    self.bucket = bucket
    self.max_transcript_tokens = max_transcript_tokens
    self.pair_batch = pair_batch
    self.tie_band = tie_band
    self.cache_size = cache_size
    self.cache: collections.OrderedDict[str, float] = (
        collections.OrderedDict())
    self.forwards = 0
    self.mesh = mesh
    self._stats = _zero_stats()
    self.pad_id = (tokenizer.pad_token_id if tokenizer.pad_token_id
                   is not None else 0)

  def _clip(self, transcript: str) -> str:
    ids = self.tokenizer.encode(transcript, add_special_tokens=False)
    if len(ids) <= self.max_transcript_tokens:
      return transcript
    return "[earlier turns omitted]\n" + self.tokenizer.decode(
        ids[-self.max_transcript_tokens:])

  def prompt_ids(self, task_prompt: str, first: str, second: str) -> list[int]:
    """Token ids of the judge prompt for the ordered pair (first=A, second=B)
    (transcripts as given: `ordered_scores` clips them first)."""
    text = self.tokenizer.apply_chat_template(
        self.template.messages(task_prompt, first, second), tokenize=False,
        add_generation_prompt=True) + self.response_prefix
    return self.tokenizer.encode(text, add_special_tokens=False)

  def clipped_prompt_ids(self, task_prompt: str, first: str,
                         second: str) -> list[int]:
    """`prompt_ids` of the pair with both transcripts clipped as the judge
    clips them (what a forward reads; judge training's inputs)."""
    return self.prompt_ids(task_prompt, self._clip(first), self._clip(second))

  def _forward(self, rows: Sequence[list[int]], length: int) -> np.ndarray:
    """q of `rows` (each ≤ length ids), in batches of a fixed shape."""
    out = []
    step = self.pair_batch
    for start in range(0, len(rows), step):
      chunk = list(rows[start:start + step])
      n = _rows_of(len(chunk), self.pair_batch)
      chunk += [chunk[0]] * (n - len(chunk))  # padding rows: real prompts
      tokens = np.full((n, length), self.pad_id, np.int32)
      mask = np.zeros((n, length), np.int32)
      for r, ids in enumerate(chunk):
        tokens[r, length - len(ids):] = ids
        mask[r, length - len(ids):] = 1
      if self.mesh is not None:
        tokens, mask = sharding.shard_batch((tokens, mask), self.mesh)
      logits = _answer_logits(self.graphdef, self.params, jnp.asarray(tokens),
                              jnp.asarray(mask), self.answer_ids)
      if not logits.is_fully_addressable:
        # Several processes score the same rows (each holds every episode,
        # `rollout.gather_episodes`); the rows sharded over all of them
        # come back whole to each.
        logits = multihost_utils.process_allgather(logits, tiled=True)
      logits = np.asarray(logits, np.float64)
      self.forwards += 1
      self._stats["forwards"] += 1
      # softmax over the two answers, first entry: P(answer "A").
      q = 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))
      out.append(q[:len(rows[start:start + step])])
    return np.concatenate(out) if out else np.zeros(0)

  def ordered_scores(self, items: Sequence[tuple[str, str, str]]
                     ) -> np.ndarray:
    """`q(first, second)` `[n]` float64 of (task prompt, first, second)
    items: cached ones read back, the rest scored together."""
    keys = [pair_key(*it) for it in items]
    self._stats["prompts"] += len(keys)
    self._stats["cache_hits"] += sum(k in self.cache for k in keys)
    todo: dict[str, tuple[str, str, str]] = {}
    for key, it in zip(keys, items):
      if key not in self.cache and key not in todo:
        todo[key] = it
    clip = functools.lru_cache(maxsize=None)(self._clip)
    by_length: dict[int, list[tuple[str, list[int]]]] = {}
    for key, (task_prompt, first, second) in todo.items():
      ids = self.prompt_ids(task_prompt, clip(first), clip(second))
      length = -(-len(ids) // self.bucket) * self.bucket
      by_length.setdefault(length, []).append((key, ids))
    fresh = {}
    for length in sorted(by_length):
      entries = by_length[length]
      q = self._forward([ids for _, ids in entries], length)
      fresh.update({key: float(v) for (key, _), v in zip(entries, q)})
    scores = np.asarray([fresh[k] if k in fresh else self.cache[k]
                         for k in keys], np.float64)
    if self.cache_size:
      self.cache.update(fresh)
      while len(self.cache) > self.cache_size:
        self.cache.popitem(last=False)
    return scores

  def pair_preferences(self, items: Sequence[tuple[str, str, str]]
                       ) -> np.ndarray:
    """`P(first ≻ second)` `[n]` float32 of (task prompt, first, second)
    items, both orders asked: `½ (q(x, y) + 1 − q(y, x))`, then the tie
    band."""
    if not items:
      return np.zeros(0, np.float32)
    swapped = [(t, b, a) for t, a, b in items]
    q = self.ordered_scores(list(items) + swapped)
    n = len(items)
    p = apply_tie_band(0.5 * (q[:n] + 1.0 - q[n:]), self.tie_band)
    self._stats["pairs"] += n
    self._stats["margin_sum"] += float(np.abs(p.astype(np.float64) - .5).sum())
    return p

  def take_stats(self) -> dict[str, float]:
    """What was judged since the last call (`STAT_NAMES`), counting anew."""
    s, self._stats = self._stats, _zero_stats()
    return _finish_stats(s)

  def cache_state(self) -> list[list[Any]]:
    """The cache as JSON-able `[key, q]` pairs, oldest first (a checkpoint's
    extra dict holds it, so a resumed run reads the scores the uninterrupted
    one would)."""
    return [[k, v] for k, v in self.cache.items()]

  def load_cache(self, entries: Sequence[Sequence[Any]]) -> None:
    """Replaces the cache by `cache_state()`'s output (floats round-trip
    JSON exactly)."""
    self.cache = collections.OrderedDict(
        (str(k), float(v)) for k, v in entries)

  def groups(self, groups: Sequence[Group]) -> list[np.ndarray]:
    """`[G, G]` P of each (task, verdicts, transcripts) group, every pair of
    every group scored together."""
    items, where = [], []
    for b, (task, _, transcripts) in enumerate(groups):
      g = len(transcripts)
      for i in range(g):
        for j in range(i + 1, g):
          items.append((_task_prompt(task), transcripts[i], transcripts[j]))
          where.append((b, i, j))
    p = self.pair_preferences(items)
    uppers = [np.full((len(x), len(x)), 0.5, np.float32)
              for _, _, x in groups]
    for (b, i, j), value in zip(where, p):
      uppers[b][i, j] = value
    return [antisymmetric(u) for u in uppers]

  def __call__(self, task: Task | str, verdicts: Sequence[Judged] | None,
               transcripts: Sequence[str]) -> np.ndarray:
    """Preferences between the G episodes of one task.

    Args:
      task: the task (or its user prompt) every episode ran.
      verdicts: unused (the model reads the transcripts only).
      transcripts: G transcript texts (decoded episodes).

    Returns:
      `[G, G]` float32 P in [0, 1], `P + Pᵀ = 1` exactly.
    """
    return self.groups([(task, verdicts, transcripts)])[0]


# ----------------------------------------------------------------------------
# Hybrid.


class HybridJudge:
  """The verifier rank where its verdicts differ; an LLM judge (anything
  with `pair_preferences`) on the pairs the verifier ties."""

  def __init__(self, llm: Any, verifier: VerifierRankJudge | None = None):
    self.llm = llm
    self.verifier = verifier or VerifierRankJudge()
    self._decided = 0

  def take_stats(self) -> dict[str, float]:
    """The LLM judge's stats (`LLMJudge.take_stats`, over the ties it was
    given) and `verifier_pairs`, the pairs the verifier decided."""
    out = {**take_stats(self.llm), "verifier_pairs": float(self._decided)}
    self._decided = 0
    return out

  def cache_state(self) -> list[list[Any]]:
    return self.llm.cache_state()

  def load_cache(self, entries: Sequence[Sequence[Any]]) -> None:
    self.llm.load_cache(entries)

  def groups(self, groups: Sequence[Group]) -> list[np.ndarray]:
    """`[G, G]` P of each group; only the verifier's ties reach the LLM, all
    groups' together."""
    ranks = [self.verifier(t, v) for t, v, _ in groups]
    items, where = [], []
    for b, ((task, _, transcripts), p) in enumerate(zip(groups, ranks)):
      for i, j in zip(*np.triu_indices(p.shape[0], k=1)):
        if p[i, j] == 0.5:
          items.append((_task_prompt(task), transcripts[i], transcripts[j]))
          where.append((b, i, j))
        else:
          self._decided += 1
    uppers = [p.copy() for p in ranks]
    for (b, i, j), value in zip(where, self.llm.pair_preferences(items)):
      uppers[b][i, j] = value
    return [antisymmetric(u) for u in uppers]

  def __call__(self, task: Task, verdicts: Sequence[Judged],
               transcripts: Sequence[str]) -> np.ndarray:
    """`[G, G]` P of one group (needs the `Task`: kind and prompt)."""
    return self.groups([(task, verdicts, transcripts)])[0]


def judge_groups(judge: Any, groups: Sequence[Group]) -> np.ndarray:
  """`[B, G, G]` P of B groups of G: `judge.groups` when it has one (all
  pairs together), else one call per group."""
  if hasattr(judge, "groups"):
    return np.stack(judge.groups(groups))
  return np.stack([judge(t, v, x) for t, v, x in groups])


# ----------------------------------------------------------------------------
# Registry.

JUDGES: dict[str, Callable[..., Any]] = {
    "verifier_rank": VerifierRankJudge,
    "llm": LLMJudge,
    "hybrid": lambda **kw: HybridJudge(LLMJudge(**kw)),
}


def make_judge(name: str, **kwargs) -> Any:
  """The judge of kind `name` (`JUDGE_KINDS`; "verifier" is read as
  "verifier_rank"), built with kwargs (`LLMJudge`'s for llm and hybrid).

  Raises:
    ValueError: no judge has that name.
  """
  if KIND_ALIASES.get(name, name) not in JUDGES:
    raise ValueError(f"unknown judge {name!r}; expected one of "
                     f"{sorted(JUDGES)}")
  return JUDGES[KIND_ALIASES.get(name, name)](**kwargs)
