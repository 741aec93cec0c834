"""TFDS builders (no TensorFlow) and grain pipelines: counts, exact resume,
disjoint per-process shards. Benchmark fixtures are written by the tests in
the published schemas; nothing is downloaded."""
import hashlib
import json
import os

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mosaic_jax import data
from mosaic_jax.agent import render, tokenizer
from mosaic_jax.envs import tasks
from mosaic_jax.benchmarks import agentharm as agentharm_files
from mosaic_jax.benchmarks import atbench as atbench_files
from mosaic_jax.benchmarks import privacylens as privacylens_files
from mosaic_jax.benchmarks.jsonfiles import DatasetError
from tests.benchmark_fixtures import (behavior, privacy_item,
                                      trajectory_record, write_json)


def _config(data_dir, manual_dir="", max_length=2048):
  return ml_collections.ConfigDict(dict(
      data_dir=str(data_dir), manual_dir=str(manual_dir), sft_config="tiny",
      max_length=max_length))


def _files(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, names in os.walk(root) for f in names}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  cfg = _config(tmp_path_factory.mktemp("tfds"))
  data.prepare(cfg, [data.TASKS, "mosaic_sft/tiny"])
  return cfg


@pytest.fixture(scope="module")
def tiny_tokenizer():
  return tokenizer.load_tiny_tokenizer()


def test_tasks_builder_counts_fields_and_round_trip(built):
  b = data.builder(built, data.TASKS)
  assert str(b.version) == "2.0.0" and b.info.file_format.value == (
      "array_record")
  assert set(b.info.splits) == set(tasks.SPLITS)
  for split in tasks.SPLITS:
    expected = {t.task_id: t for t in tasks.all_tasks(split=split)}
    records = data.source(built, data.TASKS, split)
    assert b.info.splits[split].num_examples == len(records) == len(expected)
    assert set(records[0]) == {"task_id", "suite", "kind", "template_id",
                               "seed", "task"}
    decoded = [data.decode_task(records[i]) for i in range(len(records))]
    assert {t.task_id: t for t in decoded} == expected


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value).encode()).hexdigest()


# Measured on version 1 (before the four splits): the task ids of its
# `heldout` split in record order (renamed `.../test/N`), of `train` in
# record order, and of the 96-task subset configs/tiny.py evaluates on.
V1_HELDOUT_ORDER = (
    "4060c5a7c599992b9c14224d1e464f798c40560cbb03f3e3c26cab404f19ef94")
V1_TRAIN_ORDER = (
    "f5479c59f649bd50e9abe2b0147c511a444f28ef6f000f4d63461f1cdc157570")
V1_TINY_EVAL_96 = (
    "a5dc50ed888fccb4f42e1d6e89e5864c52dd628a3a02d9b075c2579073e459c2")


def test_test_split_reads_as_the_version_1_heldout_split(built):
  from mosaic_jax.eval.heldout import stratified_subset
  def read(split):
    records = data.source(built, data.TASKS, split)
    return [data.decode_task(records[i]) for i in range(len(records))]
  test = read("test")
  assert _digest([t.task_id for t in test]) == V1_HELDOUT_ORDER
  assert _digest([t.task_id for t in read("train")]) == V1_TRAIN_ORDER
  assert _digest([t.task_id for t in stratified_subset(test, 96)]) == (
      V1_TINY_EVAL_96)


def test_second_build_is_a_no_op(built):
  before = _files(built.data_dir)
  data.prepare(built, [data.TASKS, "mosaic_sft/tiny"])
  assert _files(built.data_dir) == before


def test_sft_builder_renders_expert_episodes(built, tiny_tokenizer):
  records = data.source(built, "mosaic_sft/tiny", "train")
  assert len(records) == len(tasks.all_tasks(split="train"))
  for i in (0, 1, len(records) - 1):
    r = records[i]
    text, messages = r["text"].decode(), json.loads(r["messages"])
    assert r["policy"] == b"expert"
    # The tokenizer-free render is the tokenizer's own render.
    assert text == render.render(tiny_tokenizer, messages,
                                 json.loads(r["tools"]),
                                 add_generation_prompt=False)
    turns = [m for m in messages if m["role"] == "assistant"]
    assert r["spans"].shape == (len(turns), 2)
    for start, end in r["spans"]:
      assert text[start - len("<|im_start|>assistant\n"):start] == (
          "<|im_start|>assistant\n")
      assert text[end - len("<|im_end|>"):end] == "<|im_end|>"


def test_sft_loss_mask_covers_exactly_the_assistant_text(built,
                                                         tiny_tokenizer):
  records = data.source(built, "mosaic_sft/tiny", "train")
  r = records[5]
  text = r["text"].decode()
  example = data.tokenize_sft(text, r["spans"], tiny_tokenizer, 4096)
  n = int(example["input_mask"].sum())
  assert n == len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
  assert (example["tokens"][n:] == tiny_tokenizer.pad_token_id).all()
  assert not example["loss_mask"][n:].any()
  trained = tiny_tokenizer.decode(example["tokens"][example["loss_mask"]])
  assert trained == "".join(text[s:e] for s, e in r["spans"])
  short = data.tokenize_sft(text, r["spans"], tiny_tokenizer, 16)
  assert short["input_mask"].all() and not short["loss_mask"].any()
  np.testing.assert_array_equal(short["tokens"], example["tokens"][:16])


def test_sft_pipeline_batches(built, tiny_tokenizer):
  cfg = _config(built.data_dir, max_length=64)
  batch = next(iter(data.sft_pipeline(cfg, "test", tiny_tokenizer,
                                      batch_size=3, seed=0)))
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      "tokens": ((3, 64), "int32"), "loss_mask": ((3, 64), "bool"),
      "input_mask": ((3, 64), "bool")}


def _ids(batches):
  return [[t.task_id for t in batch] for batch in batches]


def test_resumed_iterator_yields_the_uninterrupted_sequence(built, tmp_path):
  def make():
    return iter(data.task_pipeline(built, "test", batch_size=8, seed=7))
  # 302 test tasks, 37 full batches an epoch: 45 + 40 crosses an epoch.
  reference = make()
  expected = _ids(next(reference) for _ in range(85))
  run = make()
  seen = _ids(next(run) for _ in range(45))
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(45, args=ocp.args.Composite(
        step=ocp.args.JsonSave({"step": 45}),
        data=grain.checkpoint.CheckpointSave(run)))
    manager.wait_until_finished()
  del run
  resumed = make()
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    restored = manager.restore(45, args=ocp.args.Composite(
        step=ocp.args.JsonRestore(),
        data=grain.checkpoint.CheckpointRestore(resumed)))
  assert restored.step == {"step": 45}
  seen += _ids(next(resumed) for _ in range(40))
  assert seen == expected
  # Each epoch is a fresh permutation of the same tasks.
  flat = [i for batch in expected for i in batch]
  assert flat[:296] != flat[302:598]
  assert set(flat[302:598]) <= set(flat[:302])


def test_two_process_shards_are_disjoint_and_cover_the_split(built):
  for shuffle in (False, True):
    shards = [
        [t.task_id for batch in data.task_pipeline(
            built, "train", batch_size=5, seed=3, shuffle=shuffle,
            num_epochs=1, drop_remainder=False, process_index=p,
            process_count=2) for t in batch]
        for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == 376
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == {
        t.task_id for t in tasks.all_tasks(split="train")}
  with pytest.raises(ValueError, match="process_index 2 is not in"):
    data.task_pipeline(built, "train", batch_size=1, process_index=2,
                       process_count=2)


def test_seed_decides_the_order(built):
  def order(seed):
    ds = data.task_pipeline(built, "test", batch_size=10, seed=seed,
                            num_epochs=1)
    return _ids(ds)
  assert order(1) == order(1) != order(2)


def test_unbuilt_dataset_says_how_to_build_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"mosaic_jax\.data\.prepare"):
    data.source(_config(tmp_path), data.TASKS, "train")


# Benchmarks, from files in the published schemas under <manual>/<name>/.

@pytest.fixture
def manual(tmp_path):
  root = tmp_path / "manual"
  write_json(root / "agentharm/benchmark/harmful_behaviors_test_public.json",
             {"behaviors": [behavior("1-1"), behavior("2-1", "Cybercrime"),
                            behavior("3-1")]})
  write_json(root / "agentharm/benchmark/harmful_behaviors_validation.json",
             {"behaviors": [behavior("9-1")]})
  write_json(root / "agentharm/benchmark/benign_behaviors_test_public.json",
             {"behaviors": [behavior("1-1-b")]})
  write_json(root / "atbench/ATBench/test.json",
             [trajectory_record(1, 1, risk_source="Tool output",
                                failure_mode=["Unsafe action"]),
              trajectory_record(2, "safe")])
  write_json(root / "privacylens/data/main_data.json",
             [privacy_item("main1"), privacy_item("main2")])
  return root


def _read_all(cfg, name, split, **kwargs):
  return [x for batch in data.benchmark_pipeline(cfg, name, split, **kwargs)
          for x in batch]


def test_benchmark_builders_match_the_loaders(tmp_path, manual):
  cfg = _config(tmp_path / "tfds", manual)
  data.prepare(cfg, ["agentharm/harmful", "agentharm/benign",
                     "atbench/atbench", "privacylens"])
  harmful = data.builder(cfg, "agentharm/harmful").info.splits
  assert {s: harmful[s].num_examples for s in harmful} == {
      "test_public": 3, "validation": 1}
  assert list(data.builder(cfg, "agentharm/benign").info.splits) == [
      "test_public"]
  path = str(manual / "agentharm/benchmark/harmful_behaviors_test_public.json")
  got = _read_all(cfg, "agentharm/harmful", "test_public")
  assert sorted(got, key=lambda b: b.id) == agentharm_files.load_behaviors(path)
  (benign,) = _read_all(cfg, "agentharm/benign", "test_public")
  assert not benign.harmful and benign.id_original == "68"
  got = _read_all(cfg, "atbench/atbench", "test")
  assert sorted(got, key=lambda t: t.id) == atbench_files.load_trajectories(
      manual / "atbench/ATBench/test.json")
  got = _read_all(cfg, "privacylens", "test", batch_size=2)
  assert sorted(got, key=lambda i: i.name) == privacylens_files.load_items(
      manual / "privacylens/data/main_data.json")
  shards = [[b.id for b in _read_all(cfg, "agentharm/harmful", "test_public",
                                     process_index=p, process_count=2)]
            for p in range(2)]
  assert sorted(shards[0] + shards[1]) == ["1-1", "2-1", "3-1"]


def test_malformed_benchmark_record_names_file_and_record(tmp_path, manual):
  path = write_json(manual / "atbench/ATBench/test.json",
                    [trajectory_record(1, 1), trajectory_record(2, 7)])
  with pytest.raises(DatasetError) as e:
    data.prepare(_config(tmp_path / "tfds", manual), ["atbench/atbench"])
  assert str(e.value).startswith(f"{path}: record 1 (id 2): field 'label'")


def test_missing_benchmark_files_say_where_to_put_them(tmp_path, manual):
  with pytest.raises(DatasetError) as e:
    data.prepare(_config(tmp_path / "tfds", manual), ["atbench/atbench500"])
  message = str(e.value)
  assert str(manual / "atbench/ATBench500/test.json") in message
  assert "huggingface.co/datasets/AI45Research/ATBench" in message
  with pytest.raises(AssertionError, match="does not exist or is empty"):
    data.prepare(_config(tmp_path / "tfds", tmp_path / "nowhere"),
                 ["privacylens"])
