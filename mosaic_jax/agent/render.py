"""One rendering path for every family: the tokenizer's own chat template.

A real checkpoint (Qwen2.5, Qwen3-Thinking) brings its template in its
tokenizer files; the project supplies the ones that do not exist upstream
(`tiny`; `phi4_tools` and `smollm2_tools`: Phi-4's and SmolLM2's turns plus
the project's tool convention; `smollm2_compact`: `smollm2_tools` with tools
as one-line signatures) as Jinja files in `templates/`, installed into a
tokenizer with `install_chat_template` (`experiments.fetch` writes
`smollm2_tools` into the SmolLM2 directory it builds, `smollm2_compact` into
its tokenizer_compact/).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

from transformers.utils import chat_template_utils

from mosaic_jax.agent.protocol import (THINK_CLOSE, THINK_OPEN, Message,
                                       ToolSchema, user_message,
                                       with_refusal_tool)

TEMPLATE_DIR = pathlib.Path(__file__).parent / "templates"
TEMPLATE_NAMES = ("tiny", "phi4_tools", "smollm2_tools", "smollm2_compact")


def load_template(name: str) -> str:
  """The Jinja source of a project template (one of `TEMPLATE_NAMES`)."""
  if name not in TEMPLATE_NAMES:
    raise ValueError(f"unknown chat template {name!r}; "
                     f"expected one of {TEMPLATE_NAMES}")
  return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


def install_chat_template(tokenizer: Any, name: str) -> Any:
  """Sets `tokenizer.chat_template` to a project template; returns tokenizer."""
  tokenizer.chat_template = load_template(name)
  return tokenizer


def write_chat_template(tokenizer_dir: str | os.PathLike, name: str) -> None:
  """Installs a project template into a saved tokenizer directory.

  Writes `chat_template.jinja`, which transformers loads in preference to a
  `chat_template` entry of `tokenizer_config.json` (as upstream checkpoints
  such as Phi-4 carry).
  """
  path = pathlib.Path(tokenizer_dir) / "chat_template.jinja"
  path.write_text(load_template(name), encoding="utf-8")


def render(tokenizer: Any,
           messages: Sequence[Message],
           tools: Sequence[ToolSchema] | None = None,
           add_generation_prompt: bool = True) -> str:
  """Renders a conversation with the tokenizer's chat template.

  Args:
    tokenizer: any HF tokenizer with a chat template.
    messages: HF-convention messages (see `protocol`).
    tools: tool schemas; `refusal_tool` is added when absent, so refusal is
      always an available action.
    add_generation_prompt: end with the opening of an assistant turn.

  Returns:
    The prompt text.
  """
  return tokenizer.apply_chat_template(
      list(messages),
      tools=with_refusal_tool(tools),
      tokenize=False,
      add_generation_prompt=add_generation_prompt)


def render_with_generation_spans(
    template: str,
    messages: Sequence[Message],
    tools: Sequence[ToolSchema] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
  """Renders a whole conversation with a project template, without a tokenizer.

  The text equals `render(tokenizer, messages, tools,
  add_generation_prompt=False)` for a tokenizer carrying `template`; the
  spans locate the `{% generation %}` blocks, i.e. what an SFT loss trains on,
  so any tokenizer's offsets turn them into a token mask.

  Args:
    template: one of `TEMPLATE_NAMES`.
    messages: HF-convention messages.
    tools: tool schemas; `refusal_tool` is added as in `render`.

  Returns:
    (text, [(start, end), ...]) character spans, one per assistant turn.
  """
  texts, spans = chat_template_utils.render_jinja_template(
      conversations=[list(messages)], tools=with_refusal_tool(tools),
      chat_template=load_template(template),
      return_assistant_tokens_mask=True, add_generation_prompt=False)
  return texts[0], [tuple(span) for span in spans[0]]


def generation_opens_think(tokenizer: Any) -> bool:
  """Whether the template's generation prompt already opens `<think>`.

  True for Qwen3-Thinking: the model's output then starts inside the plan,
  which `parse_turn(..., think_opened=True)` must know.
  """
  prompt = tokenizer.apply_chat_template(
      [user_message("x")], tokenize=False, add_generation_prompt=True)
  return prompt.rstrip().endswith(THINK_OPEN)


class TemplateDeltaError(ValueError):
  """A chat template from whose rendering the text after an assistant turn
  cannot be located, so observations cannot be appended to a token stream."""


# The assistant turn of the probe conversation `observation_delta` renders.
# It has a plan, so templates that keep the reasoning of turns after the last
# user query (Qwen3) render it the same whether or not it is the last
# message; the marker ends it, so the text after the marker is the delta.
_DELTA_MARK = "mosaic-jax-delta-probe"
_DELTA_PROBE = f"{THINK_OPEN}\nprobe\n{THINK_CLOSE}\n\n{_DELTA_MARK}"


def observation_delta(tokenizer: Any, observations: Sequence[Message],
                      tools: Sequence[ToolSchema] | None = None, *,
                      after_eos: bool = True) -> str:
  """The text that follows a generated assistant turn: its end-of-turn text
  (unless the turn's ids already ended with eos), the observations as the
  template renders them, and the next generation prompt.

  Rendering only this delta (token-in, token-out) keeps the ids of earlier
  turns exactly as sampled, whatever the template does to history when it
  renders a whole conversation (Qwen3-Thinking drops or re-spaces earlier
  reasoning). The delta is read off a probe conversation
  [user, assistant(probe), *observations]: what the template writes after
  an assistant turn depends only on that turn's end and what follows it.

  Args:
    tokenizer: an HF tokenizer with a chat template.
    observations: the messages after the assistant turn (tool results).
    tools: the episode's tool schemas (rendered in the probe's system turn).
    after_eos: the turn's ids ended with the eos token, whose text the
      template's end of turn begins with; it is then left out.

  Returns:
    The delta text, to be tokenized and appended to the stream.

  Raises:
    TemplateDeltaError: the probe's assistant turn is not rendered
      verbatim, or the template does not end it with the eos token.
  """
  probe = [user_message("probe"),
           {"role": "assistant", "content": _DELTA_PROBE}, *observations]
  text = render(tokenizer, probe, tools, add_generation_prompt=True)
  at = text.rfind(_DELTA_MARK)
  if at < 0:
    raise TemplateDeltaError(
        f"chat template of {_name(tokenizer)!r} does not render an assistant "
        "message's content verbatim, so a generated turn cannot be followed "
        "by its observation")
  delta = text[at + len(_DELTA_MARK):]
  if after_eos:
    eos = tokenizer.eos_token or ""
    if not delta.startswith(eos):
      raise TemplateDeltaError(
          f"chat template of {_name(tokenizer)!r} ends an assistant turn with "
          f"{delta[:20]!r}, not the eos token {eos!r} that ends generation")
    delta = delta[len(eos):]
  return delta


def _name(tokenizer: Any) -> str:
  return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
