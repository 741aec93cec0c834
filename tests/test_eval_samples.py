"""eval.samples: several sampled episodes per held-out task."""
from configs import tiny
from mosaic_jax.eval import heldout
from mosaic_jax.train import pg, validate


def test_eval_samples_sets_the_evaluation_group_size():
  config = tiny.get_config()
  assert heldout.eval_rollout_config(config).group_size == 1
  config.eval.update(samples=4, strategy="temperature")
  rc = heldout.eval_rollout_config(config)
  assert (rc.group_size, rc.strategy) == (4, "temperature")
  # RL keeps its own group size.
  assert pg.rl_rollout_config(config).group_size == config.rl.group_size
  assert validate.value_problems(config) == []


def test_greedy_with_several_samples_is_rejected():
  config = tiny.get_config()
  config.eval.samples = 3
  problems = validate.value_problems(config)
  assert any("eval.samples=3" in p and "temperature" in p for p in problems)
  config.eval.samples = 0
  assert any("eval.samples" in p and ">= 1" in p
             for p in validate.value_problems(config))
