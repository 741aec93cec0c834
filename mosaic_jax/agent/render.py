"""One rendering path for every family: the tokenizer's own chat template.

A real checkpoint (Qwen2.5, Qwen3-Thinking) brings its template in its
tokenizer files; the project supplies the ones that do not exist upstream
(`tiny`; `phi4_tools` and `smollm2_tools`: Phi-4's and SmolLM2's turns plus
the project's tool convention) as Jinja files in `templates/`, installed into a
tokenizer with `install_chat_template` (`experiments.fetch` writes
`smollm2_tools` into the SmolLM2 directory it builds).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

from transformers.utils import chat_template_utils

from mosaic_jax.agent.protocol import (THINK_OPEN, Message, ToolSchema,
                                       user_message, with_refusal_tool)

TEMPLATE_DIR = pathlib.Path(__file__).parent / "templates"
TEMPLATE_NAMES = ("tiny", "phi4_tools", "smollm2_tools")


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
