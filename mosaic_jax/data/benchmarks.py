"""TFDS builders of the external benchmarks, from files in a manual directory.

AgentHarm, ATBench and PrivacyLens are Hub-hosted and cannot be downloaded at
run time, so each builder reads the published files from
`<manual_dir>/<builder name>/` (a clone of the dataset repository), validates
every record with the loader of `mosaic_jax.eval` (errors name the file and
the record) and writes array_record files like `builders` does. Flat
published fields keep their names and types; nested objects (ATBench turns,
PrivacyLens seed / vignette / trajectory) are JSON `Text` fields. `decode_*`
turns a stored example back into the loader's dataclass, which the metric
code of `mosaic_jax.eval` consumes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from mosaic_jax.benchmarks import agentharm, atbench, privacylens
from mosaic_jax.benchmarks.jsonfiles import DatasetError
from mosaic_jax.data.builders import ArrayRecordBuilder


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _texts(values: Any) -> tuple[str, ...]:
  return tuple(_text(v) for v in values)


def _manual_files(builder: tfds.core.DatasetBuilder, dl_manager,
                  relative: Mapping[str, str]) -> dict[str, str]:
  """The expected files (split -> path) that exist under the manual dir.

  Raises:
    DatasetError: none of them exists; the message lists where they go.
  """
  # `dl_manager.manual_dir` itself raises, with MANUAL_DOWNLOAD_INSTRUCTIONS,
  # when the manual directory is missing or empty.
  root = os.path.join(os.fspath(dl_manager.manual_dir), builder.name)
  paths = {split: os.path.join(root, rel) for split, rel in relative.items()}
  found = {split: p for split, p in paths.items() if os.path.isfile(p)}
  if not found:
    config = builder.builder_config
    raise DatasetError(
        f"{builder.name}{'/' + config.name if config else ''}: none of the "
        f"expected files exists: {', '.join(sorted(paths.values()))}.\n"
        f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return found


class Agentharm(ArrayRecordBuilder):
  """AgentHarm behaviours; configs `harmful` and `benign` (HF configs
  `harmful` and `harmless_benign`); splits `test_public` and `validation`,
  those whose file is present."""
  name = "agentharm"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Published behaviour files, validated."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="harmful",
                              description="Harmful behaviours."),
      tfds.core.BuilderConfig(name="benign",
                              description="Benign counterparts.")]
  SPLIT_NAMES = ("test_public", "validation")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Clone https://huggingface.co/datasets/ai-safety-institute/AgentHarm (read
  its terms: it asks not to be trained on) into `<manual_dir>/agentharm/`, so
  that `<manual_dir>/agentharm/benchmark/` holds
  `{harmful,benign}_behaviors_{test_public,validation}.json`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="AgentHarm behaviours (published schema).",
        homepage="https://huggingface.co/datasets/ai-safety-institute/"
                 "AgentHarm",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "id_original": tfds.features.Text(),
            "name": tfds.features.Text(),
            "category": tfds.features.Text(),
            "prompt": tfds.features.Text(),
            "target_functions": tfds.features.Sequence(tfds.features.Text()),
            "grading_function": tfds.features.Text(),
            "detailed_prompt": tfds.features.Scalar(np.bool_),
            "hint_included": tfds.features.Scalar(np.bool_),
            "source": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    kind = self.builder_config.name
    files = _manual_files(self, dl_manager, {
        split: f"benchmark/{kind}_behaviors_{split}.json"
        for split in self.SPLIT_NAMES})
    return {split: self._generate_examples(path)
            for split, path in files.items()}

  def _generate_examples(self, path: str) -> Iterator[tuple[str, dict]]:
    harmful = self.builder_config.name == "harmful"
    for b in agentharm.load_behaviors(path, harmful=harmful):
      yield b.id, {
          "id": b.id, "id_original": b.id_original, "name": b.name,
          "category": b.category, "prompt": b.prompt,
          "target_functions": list(b.target_functions),
          "grading_function": b.grading_function,
          "detailed_prompt": b.detailed_prompt,
          "hint_included": b.hint_included, "source": b.source}


def decode_behavior(record: Mapping[str, Any], config: str, split: str
                    ) -> agentharm.Behavior:
  """An `agentharm` example as the loader's `Behavior`."""
  return agentharm.Behavior(
      id=_text(record["id"]), id_original=_text(record["id_original"]),
      name=_text(record["name"]), category=_text(record["category"]),
      prompt=_text(record["prompt"]),
      target_functions=_texts(record["target_functions"]),
      grading_function=_text(record["grading_function"]),
      detailed_prompt=bool(record["detailed_prompt"]),
      hint_included=bool(record["hint_included"]),
      harmful=config == "harmful", split=split, source=_text(record["source"]))


class Atbench(ArrayRecordBuilder):
  """ATBench trajectories; configs `atbench` (1,000) and `atbench500` (the
  original 500), one `test` split each."""
  name = "atbench"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Published trajectory files, validated."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="atbench", description="ATBench/test.json"),
      tfds.core.BuilderConfig(name="atbench500",
                              description="ATBench500/test.json")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Clone https://huggingface.co/datasets/AI45Research/ATBench into
  `<manual_dir>/atbench/`, so that `<manual_dir>/atbench/ATBench/test.json`
  (and `ATBench500/test.json`) exist.
  """
  _DIRS = {"atbench": "ATBench", "atbench500": "ATBench500"}

  def _info(self) -> tfds.core.DatasetInfo:
    sequence = tfds.features.Sequence(tfds.features.Text())
    return tfds.core.DatasetInfo(
        builder=self,
        description=("ATBench agent trajectories with safe/unsafe labels; "
                     "`contents` is the JSON list of turns, flattened."),
        homepage="https://huggingface.co/datasets/AI45Research/ATBench",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "label": tfds.features.Scalar(np.int64),
            "contents": tfds.features.Text(),
            **{field: sequence for field in atbench.FIELDS},
            "source": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    directory = self._DIRS[self.builder_config.name]
    files = _manual_files(self, dl_manager, {"test": f"{directory}/test.json"})
    return {"test": self._generate_examples(files["test"])}

  def _generate_examples(self, path: str) -> Iterator[tuple[str, dict]]:
    for t in atbench.load_trajectories(path):
      yield t.id, {
          "id": t.id, "label": int(t.unsafe),
          "contents": json.dumps(list(t.turns), ensure_ascii=False),
          **{field: list(t.taxonomy.get(field, ())) for field in
             atbench.FIELDS},
          "source": t.source}


def decode_trajectory(record: Mapping[str, Any]) -> atbench.Trajectory:
  """An `atbench` example as the loader's `Trajectory`."""
  taxonomy = {field: _texts(record[field]) for field in atbench.FIELDS
              if len(record[field])}
  return atbench.Trajectory(
      id=_text(record["id"]), turns=tuple(json.loads(record["contents"])),
      unsafe=bool(record["label"]), taxonomy=taxonomy,
      source=_text(record["source"]))


class Privacylens(ArrayRecordBuilder):
  """PrivacyLens data points, one `test` split."""
  name = "privacylens"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Published main_data.json, validated."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Clone https://github.com/SALT-NLP/PrivacyLens into
  `<manual_dir>/privacylens/`, so that
  `<manual_dir>/privacylens/data/main_data.json` exists.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("PrivacyLens items; `seed`, `vignette` and `trajectory` "
                     "are the published objects as JSON."),
        homepage="https://github.com/SALT-NLP/PrivacyLens",
        features=tfds.features.FeaturesDict({
            "name": tfds.features.Text(),
            "seed": tfds.features.Text(),
            "vignette": tfds.features.Text(),
            "trajectory": tfds.features.Text(),
            "source": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    files = _manual_files(self, dl_manager, {"test": "data/main_data.json"})
    return {"test": self._generate_examples(files["test"])}

  def _generate_examples(self, path: str) -> Iterator[tuple[str, dict]]:
    for item in privacylens.load_items(path):
      yield item.name, {
          "name": item.name,
          **{field: json.dumps(getattr(item, field), ensure_ascii=False)
             for field in ("seed", "vignette", "trajectory")},
          "source": item.source}


def decode_item(record: Mapping[str, Any]) -> privacylens.Item:
  """A `privacylens` example as the loader's `Item`."""
  return privacylens.Item(
      name=_text(record["name"]), seed=json.loads(record["seed"]),
      vignette=json.loads(record["vignette"]),
      trajectory=json.loads(record["trajectory"]),
      source=_text(record["source"]))
