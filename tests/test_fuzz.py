"""Model output at scale: generated turns through parser, environments and
verifiers raise nothing and each gets a class (experiments/fuzz.py; its
100,000-turn run is recorded in docs/benchmarks.md)."""
from experiments import fuzz
from mosaic_jax.envs import tasks

N = 4000


def test_fuzzed_turns_raise_nothing_and_are_all_classified():
  # Every 10th task of every suite and kind: all four tool suites, few
  # expert transcripts to render for the mutation source.
  report = fuzz.run(N, seed=1, task_list=tasks.all_tasks()[::10])
  assert report.errors == [], report.errors[:3]
  assert report.turns == N
  classes = report.classes()
  assert sum(classes.values()) == N
  assert set(report.by_source) == set(fuzz.SOURCES)
  assert all(sum(c.values()) > N / 10 for c in report.by_source.values())
  # Every kind of outcome is reached: accepted and rejected tool calls,
  # refusals, answers and many distinct invalid-turn reasons; a parser
  # failure would show as "parser error", which must never happen.
  kinds = report.summary()["kinds"]
  assert set(kinds) == {"answer", "call", "invalid", "refusal"}, kinds
  assert classes["call:ok"] and classes["call:rejected"]
  assert sum(1 for name in classes if name.startswith("invalid:")) >= 20
  assert not any("parser error" in name for name in classes)
  assert sum(report.episode_z.values()) == report.episodes > N / fuzz.MAX_TURNS
