"""experiments.plan on the tiny model with short shapes, 8 simulated devices."""
import dataclasses
import math

import jax
import pytest

from configs import tiny
from experiments import plan as plan_lib

MESH = {"data": 2, "fsdp": 4, "tensor": 1}


def _small_config():
  c = tiny.get_config()
  c.sft.update(batch=8, microbatch=8, max_len=64)
  c.rl.update(tasks_per_step=2, group_size=4, microbatch=8, chunk_size=32)
  c.rollout.update(max_total_length=64, max_tokens_per_turn=16)
  return c


@pytest.fixture(scope="module")
def plan():
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices (tests/conftest.py)")
  return plan_lib.make_plan(_small_config(), MESH, "v5e",
                            only=("sft", "decode"), name="tiny",
                            log=lambda _: None)


def test_numbers_are_positive_and_fit_a_real_chip(plan):
  assert [s.name for s in plan.steps] == ["sft", "decode"]
  for s in plan.steps:
    assert s.args > 0 and s.outputs > 0 and s.temps > 0, s
    assert s.total >= s.args, s
    assert s.slope is not None and s.slope > 0, s
    assert s.max_length(plan.hbm) > s.length, s
  assert plan.fits()
  assert "FITS" in plan_lib.format_plan(plan)


def test_params_share_is_count_times_bytes_over_shards(plan):
  # tiny is float32; fsdp shards the embed dim of (almost) every weight, so
  # the per-device share is close to N * 4 / fsdp (norm scales and the
  # q/k norms, [L, head_dim], are replicated).
  expected = plan.num_params * 4 / MESH["fsdp"]
  assert math.isclose(plan.params_bytes, expected, rel_tol=0.05), (
      plan.params_bytes, expected)
  # AdamW keeps two moments like the params (plus replicated counts).
  assert math.isclose(plan.opt_bytes, 2 * plan.params_bytes, rel_tol=0.01)


def test_absurdly_small_chip_names_the_field(plan):
  small = dataclasses.replace(plan, hbm=1 << 16)
  text = plan_lib.format_plan(small)
  assert not small.fits()
  assert "DOES NOT FIT: sft" in text and "sft.microbatch" in text
  assert "DOES NOT FIT: decode" in text and "rl.tasks_per_step" in text


def test_mesh_flag_parses():
  assert plan_lib._parse_mesh("data:1,fsdp:16") == {
      "data": 1, "fsdp": 16, "tensor": 1}
  with pytest.raises(ValueError, match="--mesh"):
    plan_lib._parse_mesh("fsdp=16")
