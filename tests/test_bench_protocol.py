"""experiments/bench.py: rows reach docs/benchmarks.md only with --record;
the side-by-side protocol alternates sides and records loads and CPU time."""
from absl import flags
import pytest

from experiments import bench


@pytest.fixture
def parsed_flags():
  saved = flags.FLAGS.is_parsed()
  if not saved:
    flags.FLAGS.mark_as_parsed()
  yield flags.FLAGS
  flags.FLAGS.record = False


def test_report_appends_only_with_record(tmp_path, monkeypatch, parsed_flags):
  md = tmp_path / "benchmarks.md"
  monkeypatch.setattr(bench, "BENCHMARKS_MD", md)
  parsed_flags.record = False
  bench.report("toy", {"x": 1})
  assert not md.exists()
  parsed_flags.record = True
  bench.report("toy", {"x": 1})
  assert md.read_text().count("| x=1 |") == 1


def test_alternate_swaps_order_and_records_loads_and_cpu():
  calls = []
  sides = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  timed = bench.alternate(sides, rounds=3)
  # One warm-up round, then a>b, b>a, a>b.
  assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
  assert [r["order"] for r in timed["rounds"]] == ["a>b", "b>a", "a>b"]
  for row in timed["rounds"]:
    assert {"load_before", "load_after", "a_wall_s", "a_cpu_s"} <= set(row)
  ratio = bench.ratios({"a_wall_s": 2.0, "b_wall_s": 1.0, "a_cpu_s": 3.0,
                        "b_cpu_s": 1.0}, "a", "b")
  assert ratio == {"a_over_b_wall": 2.0, "a_over_b_cpu": 3.0}


def test_memory_bound_is_positive():
  assert bench.memory_bound_gbps(megabytes=8, repeats=2) > 0
