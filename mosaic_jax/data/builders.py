"""TFDS builders of the project's own data: task suites and SFT demonstrations.

Both are materialised from deterministic code (the seeded task generators and
the scripted policies), so a run's data is a versioned artefact under
`data_dir` rather than something recomputed, and possibly different, per run.
Bump a builder's `VERSION` (and add a release note) whenever the generators,
policies or templates change what it writes.

Storage, and why it needs no TensorFlow: the builders write `array_record`
files, which tensorflow-datasets writes and reads through `array_record` and
its own numpy feature codecs. Only numpy-encodable features are used (`Text`,
`Scalar`, `Tensor`, `Sequence` of `Text`); a nested, free-form value (a whole
`Task`, a conversation) is one JSON `Text` field, since its shape varies by
suite and a `FeaturesDict` would have to enumerate every key. Text decodes to
`bytes` on read.

Record order: each split is written unshuffled (`disable_shuffling`) in
the order `record_order` gives, which is the order TFDS's own shuffle gave
version 1 (the md5 of split name + example key), with `test` ordered under
its version-1 name and keys (`heldout`, `.../heldout/N`). So `train` and
`test` read exactly as `train` and `heldout` did, and every evaluation
subset of `test` (`eval.heldout.stratified_subset`) holds the same tasks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from mosaic_jax.agent import render
from mosaic_jax.envs import tasks
from mosaic_jax.envs.tasks import SPLITS
from mosaic_jax.envs.transcripts import transcript

# Array-record is the random-access format `as_data_source` (and so grain)
# reads; TFDS's own default, tfrecord, would need TensorFlow to read.
FILE_FORMAT = "array_record"


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder whose files are array_record unless the caller says otherwise.

  Abstract (no `_info`), hence not registered itself.
  """

  def __init__(self, *args, file_format: str | None = None, **kwargs):
    super().__init__(*args, file_format=file_format or FILE_FORMAT, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> None:
    """No download checksums: these builders download nothing.

    TFDS would otherwise look for a checksums file beside the builder's
    module, and locating a module inside a package makes TFDS import
    `importlib_resources`, which is not a dependency of this project.
    """
    return None


# The split whose version-1 name differs: `test` was `heldout`.
_VERSION1_NAMES = {"test": "heldout"}


def record_order(split: str, keys: Sequence[str]) -> list[int]:
  """The write order of a split's examples: indices into `keys`.

  Sorted by the 128-bit md5 of (salt + key), as TFDS's shuffle sorts them,
  with the split's version-1 name as salt and in the keys (see the module
  docstring).

  Args:
    split: a name in `SPLITS`.
    keys: the example keys (`task_id`, or `task_id/policy`), [N].

  Returns:
    A permutation of range(N).
  """
  salt = _VERSION1_NAMES.get(split, split)
  def digest(key: str) -> int:
    old = key.replace(f"/{split}/", f"/{salt}/")
    return int(hashlib.md5((salt + old).encode("utf-8")).hexdigest(), 16)
  return sorted(range(len(keys)), key=lambda i: digest(keys[i]))


def _ordered_tasks(split: str) -> list[tasks.Task]:
  task_list = tasks.all_tasks(split=split)
  return [task_list[i] for i in
          record_order(split, [t.task_id for t in task_list])]


def _dumps(value: Any) -> str:
  # Key order is kept, not sorted: chat templates render dicts (tool schemas,
  # call arguments) in their order, so re-rendering must see the same order.
  return json.dumps(value, ensure_ascii=False)


class MosaicTasks(ArrayRecordBuilder):
  """The built-in task suites, one split per generator split.

  Each example is one `Task`: its identifying fields as features (for
  filtering without parsing) and the whole task as `Task.to_dict()` JSON
  (`mosaic_jax.data.pipelines.decode_task` turns it back into a `Task`).
  """
  name = "mosaic_tasks"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Train and held-out splits of the four suites.",
      "2.0.0": "Splits train, validation, test (the held-out split, same "
               "records in the same order) and test_ood (OOD templates).",
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Seeded tasks of the workspace, banking, drive and "
                     "messaging suites (benign, harmful, injection, privacy)."),
        disable_shuffling=True,  # Written in `record_order`.
        features=tfds.features.FeaturesDict({
            "task_id": tfds.features.Text(),
            "suite": tfds.features.Text(),
            "kind": tfds.features.Text(),
            "template_id": tfds.features.Text(),
            "seed": tfds.features.Scalar(np.int64),
            "task": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated from code, nothing to download.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    for task in _ordered_tasks(split):
      yield task.task_id, {
          "task_id": task.task_id, "suite": task.suite, "kind": task.kind,
          "template_id": task.template_id, "seed": task.seed,
          "task": _dumps(task.to_dict())}


@dataclasses.dataclass
class SftConfig(tfds.core.BuilderConfig):
  """Which chat format renders the demonstrations, and whose they are.

  Attributes:
    template: a project chat template (`render.TEMPLATE_NAMES`); it must mark
      assistant text with `{% generation %}`.
    policy: the scripted policy that acts (a key of `scripted.POLICIES`).
  """
  template: str = "tiny"
  policy: str = "expert"


class MosaicSft(ArrayRecordBuilder):
  """SFT demonstrations: one scripted episode per task, rendered.

  Per example: the rendered conversation `text`, `spans` `[K, 2]` int32
  character ranges `[start, end)` of its K assistant turns (what the loss
  trains on; `sft_pipeline` maps them to a token mask with any tokenizer's
  offsets), and `messages` / `tools` as JSON so another chat format can
  re-render the same conversation.
  """
  name = "mosaic_sft"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Expert episodes of the train and held-out tasks in the tiny "
               "and phi4_tools formats.",
      "2.0.0": "Splits train, validation, test (the held-out split, same "
               "order) and test_ood.",
  }
  BUILDER_CONFIGS = [
      SftConfig(name=name, template=name,
                description=f"Expert episodes rendered with the {name} "
                            "chat template.")
      for name in render.TEMPLATE_NAMES]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Scripted-policy episodes of the built-in tasks as chat "
                     "transcripts with assistant spans."),
        disable_shuffling=True,  # Written in `record_order`.
        features=tfds.features.FeaturesDict({
            "task_id": tfds.features.Text(),
            "suite": tfds.features.Text(),
            "kind": tfds.features.Text(),
            "policy": tfds.features.Text(),
            "text": tfds.features.Text(),
            "spans": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            "messages": tfds.features.Text(),
            "tools": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated from code, nothing to download.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    task_list = tasks.all_tasks(split=split)
    order = record_order(split, [f"{t.task_id}/{config.policy}"
                                 for t in task_list])
    for task in (task_list[i] for i in order):
      messages = transcript(task, config.policy)
      tools = tasks.make_env(task).tools
      text, spans = render.render_with_generation_spans(
          config.template, messages, tools)
      yield f"{task.task_id}/{config.policy}", {
          "task_id": task.task_id, "suite": task.suite, "kind": task.kind,
          "policy": config.policy, "text": text,
          "spans": np.asarray(spans, np.int32).reshape(-1, 2),
          "messages": _dumps(messages), "tools": _dumps(tools)}
