r"""Builds the tiny default tokenizer into mosaic_jax/assets/tiny_tokenizer/.

  python -m experiments.build_tokenizer [--vocab_size=2048] [--output_dir=...]

The corpus is the train split rendered with the tiny chat template: for every
train task, the episode of each scripted policy (the expert and the flawed
ones that comply, follow injections, over-refuse, leak or stop early) as the
model would see it: protocol system prompt with the task's tool schemas, user
request, assistant turns and tool results. Tasks and policies are
deterministic, so the output is byte-identical run to run.
"""
from __future__ import annotations

from typing import Iterator

from absl import flags

from experiments import cli
from mosaic_jax.agent import render, tokenizer
from mosaic_jax.envs import scripted, tasks
from mosaic_jax.envs.transcripts import transcript

_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 2048, "Total vocabulary.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir",
                                  str(tokenizer.TINY_TOKENIZER_DIR),
                                  "Where to save the tokenizer.")

# `malformed` writes no text (its turns are InvalidActions by construction).
POLICIES = tuple(name for name in scripted.POLICIES if name != "malformed")


def train_corpus() -> Iterator[str]:
  """Rendered transcripts of every (train task, scripted policy)."""
  # Any tokenizer carrying the tiny template renders; a merge-free one is
  # enough and keeps rendering on the one path `render.render` offers.
  renderer = tokenizer.train_tiny_tokenizer([], vocab_size=0)
  for task in tasks.all_tasks(split="train"):
    tools = tasks.make_env(task).tools
    for policy in POLICIES:
      yield render.render(renderer, transcript(task, policy), tools,
                          add_generation_prompt=False)


def main(argv):
  del argv
  tok = tokenizer.train_tiny_tokenizer(train_corpus(), _VOCAB_SIZE.value)
  tok.save_pretrained(_OUTPUT_DIR.value)
  print(f"saved {len(tok)} tokens to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
  cli.main(main, config_files=False)
