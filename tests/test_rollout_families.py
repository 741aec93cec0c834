"""Multi-turn rollouts of every family with its own chat template, on tiny
random models: the ids trained on are the ids sampled (token-in, token-out),
Qwen3-Thinking's upstream template included.

All families share the tiny tokenizer (rendering needs only a template);
each gets a one-layer random model of its architecture.
"""
import copy
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mosaic_jax import models, rollout
from mosaic_jax.agent import protocol, render
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs.base import Environment, StepResult, Task, tool

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "chat_templates"
SIZES = dict(vocab_size=2048, hidden_size=32, intermediate_size=64,
             num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
# family -> (architecture fields, template: a project name or a fixture file).
FAMILIES = {
    "qwen25": (dict(family="qwen2", qkv_bias=True), "qwen25_instruct.jinja"),
    "qwen3": (dict(family="qwen3", qk_norm=True, tie_embeddings=True), "tiny"),
    "qwen3_thinking": (dict(family="qwen3", qk_norm=True, tie_embeddings=True),
                       "qwen3_thinking_2507.jinja"),
    "phi4": (dict(family="phi3"), "phi4_tools"),
    "smollm2": (dict(family="llama", tie_embeddings=True), "smollm2_tools"),
    "smollm2_compact": (dict(family="llama", tie_embeddings=True),
                        "smollm2_compact"),
}
# A random model rarely samples eos; the stop string "e" ends its turns
# after a few tokens, so episodes run to max_turns. Two turns: one delta is
# what a template can get wrong. 512 tokens hold the ~430-token prompts.
CONFIG = rollout.RolloutConfig(max_turns=2, max_tokens_per_turn=12,
                               max_total_length=512, group_size=2, seed=0,
                               stop_strings=("e",), min_bucket=64)


class Echo(Environment):
  """One tool; nothing ends an episode but the turn limit."""
  suite = "echo"

  @tool
  def echo(self, text: str) -> str:
    """Echoes the text.

    Args:
      text: what to echo.
    """
    return text

  def step(self, action):
    del action
    return StepResult("Go on.", False, {"ok": True})


TASKS = [Task("echo/benign/e/train/0", "echo", "benign", "train", "e", 0,
              "Echo 0.", {})]


def _tokenizer(template):
  tok = load_tiny_tokenizer()
  if template.endswith(".jinja"):
    tok.chat_template = (FIXTURES / template).read_text()
  else:
    render.install_chat_template(tok, template)
  return tok


@functools.partial(jax.jit, static_argnums=0)
def _forward_logprobs(graphdef, state, tokens, mask):
  logits = nnx.merge(graphdef, state)(tokens, mask=mask)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@functools.cache
def _model(**fields):
  # Qwen3 and Qwen3-Thinking share one model, so one set of compiles.
  return models.init_model(models.ModelConfig(**SIZES, **fields), seed=0)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_rollout(request):
  fields, template = FAMILIES[request.param]
  model = _model(**fields)
  tok = _tokenizer(template)
  out = rollout.rollout(rollout.ModelPolicy(model, tok), TASKS, tok, CONFIG,
                        make_env=Echo)
  return request.param, model, tok, out


def _full_rendering(tok, episode):
  """The stream as a whole-conversation rendering would give it: every
  observation's turn re-rendered from its text, then the last turn."""
  messages = [protocol.system_message(protocol.SYSTEM_PROMPT),
              protocol.user_message(episode.record.task.prompt)]
  for text, observation in zip(episode.texts[:-1], episode.observations):
    messages += [{"role": "assistant",
                  "content": text.removesuffix(tok.eos_token)},
                 protocol.tool_message(observation)]
  tools = Echo(episode.record.task).tools
  return render.render(tok, messages, tools) + episode.texts[-1]


def test_multi_turn_ids_are_the_sampled_ids(family_rollout):
  name, model, tok, out = family_rollout
  traj = out.trajectories
  turns = np.asarray(traj.num_turns)
  assert (turns == CONFIG.max_turns).sum() >= 1, name
  # The sampler's log-probs, taken turn by turn from the KV cache, equal a
  # cache-free forward pass over the stored rows: the cache held exactly
  # these ids.
  graphdef, state = nnx.split(model)
  want = np.asarray(_forward_logprobs(graphdef, state, traj.tokens,
                                      traj.attention_mask))
  mask = np.asarray(traj.loss_mask)[:, 1:] == 1
  np.testing.assert_allclose(np.asarray(traj.logprobs)[:, 1:][mask],
                             want[mask], atol=2e-3, err_msg=name)
  for i, episode in enumerate(out.episodes):
    assert rollout.turn_texts(traj, i, tok) == list(episode.texts), name


def test_deltas_equal_full_renderings_where_templates_keep_history(
    family_rollout):
  name, _, tok, out = family_rollout
  traj = out.trajectories
  for i, episode in enumerate(out.episodes):
    if len(episode.texts) < 2:
      continue
    length = int(traj.lengths[i])
    stream = tok.decode(np.asarray(traj.tokens[i, :length]).tolist(),
                        skip_special_tokens=False)
    full = _full_rendering(tok, episode)
    if name == "qwen3_thinking":
      # Its template re-renders earlier turns (reasoning dropped, no
      # `<think>` opened): a stream built from whole renderings would not
      # hold the sampled ids.
      assert stream != full
    else:
      assert stream == full, name


def test_qwen3_thinking_delta_opens_think():
  tok = _tokenizer("qwen3_thinking_2507.jinja")
  delta = render.observation_delta(tok, [protocol.tool_message("ok")])
  assert delta == ("\n<|im_start|>user\n<tool_response>\nok\n"
                   "</tool_response><|im_end|>\n<|im_start|>assistant\n"
                   "<think>\n")
  # A turn cut by a stop string still needs the end of its turn.
  assert render.observation_delta(
      tok, [protocol.tool_message("ok")], after_eos=False) == (
          "<|im_end|>" + delta)


def test_template_without_eos_end_of_turn_fails_loudly():
  tok = copy.deepcopy(_tokenizer("tiny"))
  tok.chat_template = tok.chat_template.replace("<|im_end|>", "<|end|>")
  with pytest.raises(render.TemplateDeltaError, match="not the eos token"):
    render.observation_delta(tok, [protocol.tool_message("ok")])
