"""Rollout engine: scripted policies reproduce their verdicts through the token
stream, a random model's 64-episode rollout is consistent (masks, log-probs,
continuation), seeds reproduce, limits end episodes as invalid, and the model
drives the AgentDojo pipeline element."""
import copy
import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agentdojo.task_suite.load_suites import get_suite
from flax import nnx

from mosaic_jax import models, rollout, sampling, sharding
from mosaic_jax.agent import protocol, tokenizer as tokenizer_lib
from mosaic_jax.agent.actions import Answer, InvalidAction, ParsedTurn
from mosaic_jax.envs import agentdojo as ad
from mosaic_jax.envs import scripted, tasks, transcripts
from mosaic_jax.envs.base import Environment, StepResult, Task, tool
from mosaic_jax.models import presets
from mosaic_jax.text_policy import ModelTextPolicy
from tests.test_scripted import expected_z

SCRIPTED = rollout.RolloutConfig(max_turns=16, max_tokens_per_turn=512,
                                 max_total_length=4096)
# A random model almost never samples eos (1 in 2048); the stop string "e"
# ends its turns after a few tokens, so episodes run for several turns.
RANDOM = rollout.RolloutConfig(max_turns=6, max_tokens_per_turn=16,
                               max_total_length=512, group_size=4, seed=0,
                               stop_strings=("e",))
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "chat_templates"


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tiny_tokenizer()


def _scripted(name, task_list, tok, config=SCRIPTED):
  policy = rollout.ScriptedPolicy(scripted.POLICIES[name](), tok)
  return rollout.rollout(policy, task_list, tok, config)


def _mask_runs(mask):
  """[(start, end)] of the runs of 1 in a [T] mask."""
  edges = np.diff(np.r_[0, mask, 0])
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_expert_reproduces_z_on_every_builtin_task(tok):
  task_list = tasks.all_tasks()
  out = _scripted("expert", task_list, tok)
  traj = out.trajectories
  assert traj.tokens.shape == (len(task_list), SCRIPTED.max_total_length)
  np.testing.assert_array_equal(np.asarray(traj.z),
                                np.ones((len(task_list), 4)))
  assert {e.end_reason for e in out.episodes} == {"terminal"}
  np.testing.assert_array_equal(np.asarray(traj.group_ids),
                                np.arange(len(task_list)))
  # The trained tokens of each turn are exactly the protocol text plus eos.
  for i in (0, 400, len(task_list) - 1):
    record = out.episodes[i].record
    want = [protocol.format_turn(t) + "<|im_end|>" for t in record.turns]
    assert rollout.turn_texts(traj, i, tok) == want
    runs = _mask_runs(np.asarray(traj.loss_mask[i]))
    assert runs == list(zip(np.asarray(traj.turn_starts[i])[:len(want)],
                            np.asarray(traj.turn_ends[i])[:len(want)]))


def test_flawed_policies_fail_where_they_should(tok):
  task_list = tasks.all_tasks()[::20]
  assert len({(t.suite, t.kind) for t in task_list}) == 16
  for name in sorted(set(scripted.POLICIES) - {"expert"}):
    out = _scripted(name, task_list, tok)
    z = np.asarray(out.trajectories.z)
    for task, row in zip(task_list, z):
      np.testing.assert_allclose(row, expected_z(name, task), atol=1e-6,
                                 err_msg=f"{name} on {task.task_id}")


def test_max_turns_ends_the_episode_as_invalid(tok):
  task = next(t for t in tasks.all_tasks() if len(t.solution) >= 3)
  config = dataclasses.replace(SCRIPTED, max_turns=2)
  out = _scripted("expert", [task], tok, config)
  episode = out.episodes[0]
  assert episode.end_reason == "max_turns"
  assert int(out.trajectories.num_turns[0]) == 2
  assert float(out.trajectories.z[0, 3]) == 0.0


def test_max_tokens_per_turn_ends_the_episode_as_invalid(tok):
  task = tasks.all_tasks()[0]
  out = _scripted("expert", [task], tok,
                  dataclasses.replace(SCRIPTED, max_tokens_per_turn=10))
  episode = out.episodes[0]
  assert episode.end_reason == "max_tokens_per_turn"
  assert isinstance(episode.record.turns[-1].action, InvalidAction)
  assert int(np.asarray(out.trajectories.loss_mask[0]).sum()) == 10
  assert float(out.trajectories.z[0, 3]) == 0.0


def test_max_total_length_ends_the_episode_as_invalid(tok):
  task = tasks.all_tasks()[0]
  full = _scripted("expert", [task], tok)
  prompt = int(full.trajectories.turn_starts[0, 0])
  first_turn = int(full.trajectories.turn_ends[0, 0]) - prompt
  # Room for the prompt and one turn, not for the observation and a second.
  limit = prompt + SCRIPTED.max_tokens_per_turn + first_turn
  out = _scripted("expert", [task], tok,
                  dataclasses.replace(SCRIPTED, max_total_length=limit))
  assert out.episodes[0].end_reason == "max_total_length"
  assert int(out.trajectories.num_turns[0]) == 1
  assert int(out.trajectories.lengths[0]) == prompt + first_turn
  assert float(out.trajectories.z[0, 3]) == 0.0
  # A prompt that leaves no room for a turn: no turn, never a crash.
  # (A turn limit above the episode's is refused when the config is built,
  # so the turn limit comes down with it.)
  short = _scripted("expert", [task], tok, dataclasses.replace(
      SCRIPTED, max_total_length=prompt,
      max_tokens_per_turn=min(SCRIPTED.max_tokens_per_turn, prompt)))
  assert short.episodes[0].end_reason == "max_total_length"
  assert int(short.trajectories.num_turns[0]) == 0
  assert float(short.trajectories.z[0, 3]) == 0.0


def test_template_that_rewrites_history_runs_multi_turn(tok):
  # Qwen3-Thinking's template drops earlier reasoning from a whole
  # rendering; rendering only each delta keeps the stream as generated.
  qwen3 = copy.deepcopy(tok)
  qwen3.chat_template = (FIXTURES / "qwen3_thinking_2507.jinja").read_text()
  task_list = tasks.all_tasks()[:4]
  out = _scripted("expert", task_list, qwen3)
  np.testing.assert_array_equal(np.asarray(out.trajectories.z),
                                np.ones((len(task_list), 4)))
  assert max(int(n) for n in out.trajectories.num_turns) > 1
  for i, episode in enumerate(out.episodes):
    assert rollout.turn_texts(out.trajectories, i, qwen3) == list(episode.texts)


def test_template_that_rewrites_content_fails_loudly(tok):
  upper = copy.deepcopy(tok)
  upper.chat_template = (
      "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + "
      "m.content | upper + '<|im_end|>\\n' }}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
  with pytest.raises(rollout.TemplatePrefixError, match="verbatim"):
    _scripted("expert", [tasks.all_tasks()[0]], upper)


def test_process_rows_split_whole_groups():
  assert rollout.process_rows(8, 4, 0, 2) == range(0, 4)
  assert rollout.process_rows(8, 4, 1, 2) == range(4, 8)
  assert rollout.process_rows(6, 2, 2, 3) == range(4, 6)
  with pytest.raises(ValueError, match="evenly"):
    rollout.process_rows(5, 4, 0, 2)


def test_arrays_are_global_on_a_mesh(tok):
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  task_list = tasks.all_tasks()[:4]
  config = dataclasses.replace(SCRIPTED, group_size=2)
  local = _scripted("expert", task_list, tok, config)
  policy = rollout.ScriptedPolicy(scripted.Expert(), tok)
  out = rollout.rollout(policy, task_list, tok, config, mesh=mesh)
  assert len(out.trajectories.tokens.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(out.trajectories.tokens),
                                np.asarray(local.trajectories.tokens))
  np.testing.assert_array_equal(np.asarray(out.trajectories.group_ids),
                                [0, 0, 1, 1, 2, 2, 3, 3])


# ------------------------------------------------------------ random model --


class Notes(Environment):
  """A one-tool world whose episodes only end at the turn limit: answers are
  acknowledged and the conversation goes on (exercises continuation)."""
  suite = "notes"

  @tool
  def add_note(self, text: str) -> str:
    """Stores a note.

    Args:
      text: the note.
    """
    self.state.setdefault("notes", []).append(text)
    return "Stored."

  def step(self, action):
    turn = action.action if isinstance(action, ParsedTurn) else action
    if isinstance(turn, Answer):
      return StepResult("Noted. Go on.", False, {"ok": True})
    return super().step(action)


NOTE_TASKS = [Task(f"notes/benign/n/train/{i}", "notes", "benign", "train", "n",
                   i, f"Write note number {i}.", {}) for i in range(16)]


@pytest.fixture(scope="module")
def tiny_model():
  return models.init_model(presets.TINY, seed=0)


@pytest.fixture(scope="module")
def random_rollout(tiny_model, tok):
  return rollout.rollout(rollout.ModelPolicy(tiny_model, tok), NOTE_TASKS, tok,
                         RANDOM, make_env=Notes)


@functools.partial(jax.jit, static_argnums=0)
def _forward_logprobs(graphdef, state, tokens, mask):
  logits = nnx.merge(graphdef, state)(tokens, mask=mask)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def test_random_model_rollout_masks_exactly_the_generated_tokens(
    random_rollout, tok):
  out, traj = random_rollout, random_rollout.trajectories
  assert traj.tokens.shape == (64, RANDOM.max_total_length)
  assert len(out.episodes) == 64
  turns = np.asarray(traj.num_turns)
  assert turns.max() <= RANDOM.max_turns and (turns > 1).sum() >= 32
  assert set(e.end_reason for e in out.episodes) <= set(rollout.END_REASONS)
  np.testing.assert_array_equal(np.asarray(traj.group_ids),
                                np.repeat(np.arange(16), 4))
  mask, logp = np.asarray(traj.loss_mask), np.asarray(traj.logprobs)
  assert out.stats["generated_tokens"] == int(mask.sum())
  assert np.all(logp[mask == 0] == 0) and np.all(logp[mask == 1] < 0)
  for i, episode in enumerate(out.episodes):
    runs = _mask_runs(mask[i])
    starts = np.asarray(traj.turn_starts[i])[:turns[i]]
    ends = np.asarray(traj.turn_ends[i])[:turns[i]]
    # Adjacent turns never touch: an observation always lies between them.
    assert runs == list(zip(starts, ends))
    assert rollout.turn_texts(traj, i, tok) == list(episode.texts)
    assert len(episode.texts) == len(episode.record.turns) == turns[i]


def test_random_model_logprobs_match_a_full_forward_pass(
    random_rollout, tiny_model):
  """The sampler's log-probs, taken turn by turn from one compacted cache,
  equal a cache-free forward pass over the finished token rows."""
  traj = random_rollout.trajectories
  graphdef, state = nnx.split(tiny_model)
  want = np.asarray(_forward_logprobs(graphdef, state, traj.tokens,
                                      traj.attention_mask))
  mask = np.asarray(traj.loss_mask)[:, 1:] == 1
  got = np.asarray(traj.logprobs)[:, 1:]
  np.testing.assert_allclose(got[mask], want[mask], atol=2e-3)


def test_same_seed_same_trajectories(random_rollout, tiny_model, tok):
  again = rollout.rollout(rollout.ModelPolicy(tiny_model, tok), NOTE_TASKS,
                          tok, RANDOM, make_env=Notes)
  for name in ("tokens", "loss_mask", "logprobs", "turn_starts", "z"):
    np.testing.assert_array_equal(
        np.asarray(getattr(again.trajectories, name)),
        np.asarray(getattr(random_rollout.trajectories, name)), err_msg=name)
  # Rows of a group share a prompt but not their samples.
  tokens = np.asarray(again.trajectories.tokens)
  assert not np.array_equal(tokens[0], tokens[1])


def test_transcript_shows_masks(random_rollout, tok):
  traj = random_rollout.trajectories
  text = transcripts.token_transcript(traj, 0, tok)
  assert text.count("--- generated [loss]") == int(traj.num_turns[0])
  assert "--- context [masked]" in text and "Write note number 0." in text


def test_model_text_policy_drives_the_agentdojo_element(tiny_model, tok):
  policy = ModelTextPolicy(
      tiny_model, tok, sampling.SamplingConfig(
          max_new_tokens=16, strategy=sampling.Temperature(1.0)))
  suite = get_suite(ad.DEFAULT_VERSION, "banking")
  user_task = suite.get_user_task_by_id("user_task_0")
  utility, security = suite.run_task_with_pipeline(
      ad.make_pipeline(policy.generate, max_iters=2), user_task, None, {})
  assert not utility and security
  texts = policy.generate_batch([
      ([protocol.user_message("Hello")], None),
      ([protocol.user_message("Hi there, how are you?")], None)])
  assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
  assert policy.calls >= 2


def test_config_section_and_buckets():
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from mosaic_jax.train import pg  # pylint: disable=import-outside-toplevel
  config = pg.rl_rollout_config(tiny.get_config())
  # The group size lives in the rl section only.
  assert config.group_size == 8
  assert config.strategy_object() == sampling.Temperature(0.7)
  # The config refuses an unknown strategy when it is built (the message of
  # the config check, `RolloutConfig.field_problems`).
  with pytest.raises(ValueError, match="rollout.strategy: 'beam' is not one"):
    dataclasses.replace(config, strategy="beam")
  with pytest.raises(ValueError, match="max_tokens_per_turn exceeds"):
    dataclasses.replace(config, max_tokens_per_turn=config.max_total_length
                        + 1)
  small = dataclasses.replace(config, max_total_length=512)
  assert [rollout.bucket(n, small) for n in (1, 16, 17, 200, 300, 512)] == [
      16, 16, 32, 256, 512, 512]
  assert rollout.cache_capacity(small) == 2 * 512 + 144
