"""The colabs/ notebooks: their shape, every cell runs (smoke sizes), and
their helpers.

Each notebook executes top to bottom in a fresh kernel with
`MOSAIC_NOTEBOOK_SMOKE=1` (tiny step counts, see `colabs/common.py`), on one
CPU device, from a working directory outside the repository (its first cell
finds the checkout), writing its runs under the test's tmp_path; a failing
cell fails the test with the cell's error.
"""
import json
import os
import pathlib
import re
import sys
import time

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from mosaic_jax.agent.actions import (Answer, InvalidAction, ParsedTurn,
                                      Refusal, ToolCall)

REPO = pathlib.Path(__file__).resolve().parent.parent
COLABS = REPO / "colabs"
NOTEBOOKS = sorted(p.name for p in COLABS.glob("*.ipynb"))
# Committed with the outputs of a CPU run (the ablations, 02 and 03, take
# longer than a notebook reader waits on a CPU: committed without).
WITH_OUTPUTS = ("01_agent_loop.ipynb", "04_losses_from_your_code.ipynb")

sys.path.insert(0, str(COLABS))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_the_four_notebooks_are_there():
  assert NOTEBOOKS == ["01_agent_loop.ipynb", "02_mosaic_ablations.ipynb",
                       "03_fate_ablations.ipynb",
                       "04_losses_from_your_code.ipynb"]


def _code(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_cell_installs_and_the_runtime_is_detected(name):
  nb = nbformat.read(COLABS / name, as_version=4)
  nbformat.validate(nb)
  first, *rest = _code(nb)
  # The install cell: the repository's URL, a clone and an editable pip
  # install of it, and colabs/ put on sys.path for `import common`.
  assert re.search(r'^REPO_URL = "https://\S+\.git"', first.source, re.M)
  for part in ('"git", "clone"', 'REPO_URL', '"pip", "install"', '"-e"',
               'str(REPO / "colabs")'):
    assert part in first.source, (name, part)
  # The same cell in every notebook.
  others = {_code(nbformat.read(COLABS / n, as_version=4))[0].source
            for n in NOTEBOOKS}
  assert others == {first.source}
  text = "\n".join(c.source for c in rest)
  # No runtime set by hand: detected, and the sizes follow it.
  assert not re.search(r"^\s*RUNTIME\s*=\s*[\"']", text, re.M), name
  if re.search(r"^import common", text, re.M):
    assert "RUNTIME = common.detect_runtime()" in text, name
    assert "common.size_name(RUNTIME)" in text, name
    assert "common.warm_start(SIZE)" in text, name
    assert "default_warm_start" not in text, name
  # The set-up prose names what the cell does.
  setup = next(c.source for c in nb.cells if c.cell_type == "markdown"
               and c.source.startswith("**Set-up.**"))
  assert "REPO_URL" in setup and "installs" in setup, name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_a_clean_cpu_run(name):
  nb = nbformat.read(COLABS / name, as_version=4)
  code = _code(nb)
  if name not in WITH_OUTPUTS:
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    return
  # Every cell ran, in order, without an error, on a CPU runtime.
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs
                 if o.output_type == "stream")
  if re.search(r"^import common", "".join(c.source for c in code), re.M):
    assert "runtime: CPU; sizes: cpu;" in text, name


def _execute(name, tmp_path):
  """Runs the notebook in a fresh kernel from `tmp_path/cwd` (outside the
  repository); its seconds."""
  nb = nbformat.read(COLABS / name, as_version=4)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = dict(os.environ, MOSAIC_NOTEBOOK_SMOKE="1",
             MOSAIC_NOTEBOOK_ROOT=str(tmp_path / "runs"),
             # This checkout's package, wherever the venv's is installed
             # from (the install cell then finds this checkout).
             PYTHONPATH=str(REPO))
  # One device, as a notebook user on a CPU has (the suite simulates 8).
  env.pop("XLA_FLAGS", None)
  # The kernel's own inline backend (Agg-rendered PNGs in the outputs).
  env.pop("MPLBACKEND", None)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(cwd)}})
  start = time.perf_counter()
  client.execute(env=env)
  seconds = time.perf_counter() - start
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
  assert f"project: {REPO}" in _code(nb)[0].outputs[0]["text"]
  return nb, seconds


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
  nb, seconds = _execute(name, tmp_path)
  if name == "01_agent_loop.ipynb":
    # The suite's budget for it (2 shared CPU cores).
    assert seconds < 120, seconds
  # Every notebook ends in a plot (the ablations also in a table).
  last = [o for c in nb.cells[-2:] if c.cell_type == "code"
          for o in c.outputs]
  assert any("image/png" in o.get("data", {}) for o in last), name


# ------------------------------------------------------------------ helpers --


def test_read_metrics_and_markdown_table(tmp_path):
  lines = [{"step": 1, "rl/kl": 0.5, "rl/loss": 2.0},
           {"step": 1, "time/rl/step_s": 3.0},
           {"step": 2, "rl/kl": 0.25}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(l) + "\n" for l in lines))
  metrics = common.read_metrics(tmp_path)
  np.testing.assert_array_equal(metrics["rl/kl"][0], [1, 2])
  np.testing.assert_array_equal(metrics["rl/kl"][1], [0.5, 0.25])
  np.testing.assert_array_equal(metrics["rl/loss"][1], [2.0])
  assert common.markdown_table({"a": {"x": 0.5, "y": None}}, ["x", "y"]) == (
      "| | x | y |\n|---|---|---|\n| a | 0.500 | – |")


def test_heldout_rows_add_a_warm_start_row_per_distinct_evaluation():
  def split(utility):
    # A training report's split entry (heldout.training_report): the
    # validation split is the one the tables read.
    return {"validation": {"groups": {"all": {"utility": {
        "value": utility, "low": 0.0, "high": 1.0, "n": 4}}}}}

  def report(before, after):
    return {"before": split(before), "after": split(after)}
  rows = common.heldout_rows({"a": report(0.5, 0.75), "b": report(0.5, 0.25),
                              "c": report(0.0, 1.0)})
  assert list(rows) == ["warm start", "a", "b", "warm start (c)", "c"]
  assert [r["utility"] for r in rows.values()] == [0.5, 0.75, 0.25, 0.0, 1.0]


def _entry(z, failure_z, round_index):
  from mosaic_jax.methods import fate  # pylint: disable=g-import-not-at-top
  return fate.BufferEntry(task_id=f"t{round_index}{z}", task_prompt="p",
                          repair_prompt="r", turns=("x",), observations=(),
                          z=z, r_pf=sum(z), failure_z=failure_z,
                          round=round_index)


def test_front_by_round_accumulates_kept_repairs():
  entries = [_entry((1, 0.5, 1, 1), (0, 0.5, 1, 1), 0),
             _entry((0, 1, 1, 1), (0, 0, 1, 0), 0),
             _entry((1, 1, 1, 1), (1, 0, 1, 1), 2)]
  rounds = common.front_by_round(entries, 3, (0, 1))
  assert [len(r["points"]) for r in rounds] == [2, 2, 3]
  # Round 1: neither of (1, .5) and (0, 1) dominates the other.
  np.testing.assert_array_equal(rounds[0]["front"], [[0, 1], [1, 0.5]])
  np.testing.assert_array_equal(rounds[0]["failures"], [[0, 0.5], [0, 0]])
  # Round 3: (1, 1) dominates both.
  np.testing.assert_array_equal(rounds[2]["front"], [[1, 1]])
  # Boxes [0, z] in 4-D: (1,.5,1,1) ∪ (0,1,1,1) = 0.5 (the second is flat).
  assert rounds[0]["hypervolume"] == pytest.approx(0.5)
  assert rounds[2]["hypervolume"] == pytest.approx(1.0)
  assert common.front_by_round([], 1, (0, 1))[0]["hypervolume"] == 0.0


def test_transcript_html_highlights_each_part():

  class Info:  # the fields of rollout.EpisodeInfo that are read
    end_reason = "terminal"
    texts = ("t1", "<tool_call>\nbroken", "t3")
    observations = ("result <1>", "error: invalid turn", "done")

    class record:  # pylint: disable=invalid-name
      policy = "expert"
      z = np.array([1.0, 0.5, 1.0, 0.0])
      turns = (ParsedTurn(ToolCall("send", {"to": "a&b"}), plan="p1",
                          safety_thoughts="risky?"),
               ParsedTurn(InvalidAction("unterminated <tool_call>")),
               ParsedTurn(Refusal("no")))

      class task:  # pylint: disable=invalid-name
        task_id = "drive/injection/x"
        prompt = "do <it>"

  text = common.transcript_html(Info)
  # One box per part, labelled by role (mosaic_jax.viz.transcripts).
  for part in ('plan &lt;think&gt;</div><pre>p1</pre>',
               'safety check &lt;safety_thoughts&gt;</div><pre>risky?</pre>',
               'class="msg call"><div class="role">action: call send</div>'
               '<pre>{\n &quot;to&quot;: &quot;a&amp;b&quot;\n}</pre>',
               'class="msg refusal"><div class="role">action: refuse</div>'
               '<pre>no</pre>',
               'invalid turn: unterminated &lt;tool_call&gt;</div><pre>'
               '&lt;tool_call&gt;\nbroken</pre>',
               "do &lt;it&gt;", "result &lt;1&gt;",
               "security 1", "utility 0.5", "no_over_refusal 1",
               "validity 0"):
    assert part in text, part
  # Nothing follows a terminal last turn.
  assert "done" not in text
  answer = common.transcript_html(type("I", (Info,), {
      "record": type("R", (Info.record,), {
          "turns": (ParsedTurn(Answer("all set")),)})}))
  assert "action: final answer</div><pre>all set</pre>" in answer


def test_run_reads_back_resumes_or_clears(tmp_path, monkeypatch):
  calls = []

  def job(config):
    workdir = pathlib.Path(config.workdir)
    calls.append(sorted(p.name for p in workdir.iterdir()))
    report = {"before": {}, "after": {}, "config": json.loads(
        config.to_json_best_effort())}
    if config.rl.steps != 3:  # 3 stands for a run that is interrupted
      (workdir / "report.json").write_text(json.dumps(report))
    return report

  monkeypatch.setattr(common.mosaic, "run", job)
  config = common.load_config("tiny", {"rl.steps": 1})
  workdir = tmp_path / "arm"
  common.run(config, workdir, before={"utility": 0.5})
  assert calls == [["eval_before.json", "run_config.json"]]
  assert json.loads((workdir / "eval_before.json").read_text()) == {
      "utility": 0.5}
  common.run(config, workdir)  # finished, same config: read back
  assert len(calls) == 1
  interrupted = common.variant(config, {"rl.steps": 3})
  common.run(interrupted, workdir)  # another config: cleared first
  assert calls[-1] == ["run_config.json"]
  (workdir / "checkpoints").mkdir()
  common.run(interrupted, workdir)  # same config, unfinished: resumed
  assert calls[-1] == ["checkpoints", "run_config.json"]


@pytest.mark.parametrize("platform,runtime,size", [
    ("tpu", "TPU", "accelerator"), ("gpu", "GPU", "accelerator"),
    ("cuda", "GPU", "accelerator"), ("cpu", "CPU", "cpu")])
def test_detect_runtime_picks_the_size(monkeypatch, platform, runtime, size):
  device = type("Device", (), {"platform": platform})()
  monkeypatch.setattr(common.jax, "devices", lambda: [device])
  monkeypatch.setattr(common, "SMOKE", False)
  assert common.detect_runtime() == runtime
  assert common.size_name(runtime) == size
  monkeypatch.setattr(common, "SMOKE", True)
  assert common.size_name(runtime) == "smoke"
  with pytest.raises(ValueError, match="unknown runtime 'cpu'; expected "
                                       "one of TPU, GPU, CPU"):
    common.size_name("cpu")


def test_accelerator_size_trains_the_fetched_pretrained_model(
    monkeypatch, tmp_path):
  from experiments import fetch  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("MOSAIC_JAX_CACHE", str(tmp_path))
  calls = []

  def fake_fetch(cmd, cwd, check):
    # What `python -m experiments.fetch NAME` leaves: a complete directory.
    calls.append(cmd[1:])
    dst = tmp_path / cmd[-1]
    dst.mkdir()
    (dst / fetch.INFO_FILE).write_text("{}")
  monkeypatch.setattr(common.subprocess, "run", fake_fetch)
  path = str(tmp_path / "smollm2-135m-instruct")
  assert common.warm_start("accelerator") == path
  assert calls == [["-m", "experiments.fetch", "smollm2-135m-instruct"]]
  assert common.warm_start("accelerator") == path  # fetched once
  assert len(calls) == 1
  assert common.warm_start("cpu") == common.default_warm_start()
  assert "tiny_base" in common.warm_start("cpu")
  # The accelerator sizes fit SmolLM2's 1,046-1,265-token prompts.
  sizes = common.SIZES["accelerator"]
  assert sizes["rollout.max_total_length"] >= 1265 + sizes[
      "rollout.max_tokens_per_turn"]


def _smollm2_dir():
  from experiments import fetch  # pylint: disable=g-import-not-at-top
  return os.environ.get("MOSAIC_JAX_SMOLLM2_DIR",
                        str(fetch.default_dst(common.PRETRAINED)))


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(_smollm2_dir(), "fetch_info.json")),
    reason="no fetched SmolLM2 (python -m experiments.fetch "
    "smollm2-135m-instruct)")
def test_accelerator_sizes_fit_smollm2():
  # What the run checks before any compute (train.run.Run), on the real
  # tokenizer: every held-out prompt plus a turn fits an episode, and the
  # SFT demonstrations fit sft.max_len.
  # pylint: disable=g-import-not-at-top
  from mosaic_jax.envs import tasks
  from mosaic_jax.models import ModelConfig
  from mosaic_jax.rollout import prompt_ids
  from mosaic_jax.train import validate
  path = _smollm2_dir()
  config = common.load_config("tiny", {**common.SIZES["accelerator"],
                                       "model.path": path})
  validate.check_values(config)
  tokenizer = common.run_lib.build_tokenizer(config)
  validate.check_tokenizer(tokenizer, ModelConfig.from_hf(path).vocab_size,
                           path)
  task_list = [t for split in ("validation", "test", "test_ood")
               for t in tasks.all_tasks(split)]
  _, sft = common.run_lib.measured_lengths(config, tokenizer, task_list)
  prompts = {t.task_id: len(prompt_ids(t, tokenizer)) for t in task_list}
  validate.check_lengths(config, prompts, sft)
  assert max(prompts.values()) + config.rollout.max_tokens_per_turn <= (
      config.rollout.max_total_length)
  assert max(sft.values()) <= config.sft.max_len
  fate_config = common.load_config("fate_tiny", {
      **common.SIZES["accelerator"], **common.FATE_SIZES["accelerator"],
      "model.path": path})
  validate.check_values(fate_config)
